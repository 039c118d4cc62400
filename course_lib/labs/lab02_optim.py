"""Lab 2: optimizers as ``torch.optim.Optimizer`` subclasses.

The student writes SGD with momentum (and Nesterov), RMSProp and Adam. Each
check trains a small float64 network with the student's class and with
``torch.optim``'s (``foreach=False``), side by side on the same batches, and
reports the first step and the first parameter at which they part ways.
Hidden cases use other hyperparameters and two parameter groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import Question, check_function, parameter_names

_LAYOUT_SEED = 0


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()


def _param_names() -> list[str]:
    return parameter_names(_model(_LAYOUT_SEED))


def _run(optimizer_cls, inputs) -> torch.Tensor:
    """Parameters after every step, flattened: ``(num_steps, num_params)``."""
    model = _model(inputs["seed"])
    first, second = model[0].parameters(), model[2].parameters()
    if inputs["groups"]:  # two groups: the second one overrides some settings
        params = [{"params": list(first)}, {"params": list(second), **inputs["groups"]}]
    else:
        params = list(model.parameters())
    optimizer = optimizer_cls(params, **inputs["kwargs"])
    g = torch.Generator().manual_seed(inputs["seed"] + 1)
    rows = []
    for _ in range(inputs["num_steps"]):
        X = torch.randn(8, 4, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (8,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
        rows.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return torch.stack(rows)


def first_divergence(expected, actual, *, rtol: float, atol: float) -> str | None:
    """Where a run with the student's optimizer first leaves the reference run."""
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        got = tuple(actual.shape) if isinstance(actual, torch.Tensor) else type(actual)
        return f"expected parameters of shape {tuple(expected.shape)}, got {got}"
    close = torch.isclose(actual, expected, rtol=rtol, atol=atol)
    if close.all():
        return None
    step, k = (int(i) for i in torch.nonzero(~close)[0])
    return (
        f"the weights first differ after step {step + 1}, at parameter "
        f"{_param_names()[k]}: expected {expected[step, k].item():.10g}, "
        f"got {actual[step, k].item():.10g}"
    )


def _case(num_steps=10, seed=0, groups=None, **kwargs):
    parts = [f"{k}={v}" for k, v in kwargs.items()]
    if groups:
        parts.append(f"second group {groups}")
    label = f"{', '.join(parts) or 'defaults'}, {num_steps} steps, seed {seed}"
    inputs = dict(num_steps=num_steps, seed=seed, groups=groups or {}, kwargs=kwargs)
    return label, inputs


def _sgd(params, **kwargs):
    return torch.optim.SGD(params, foreach=False, **kwargs)


def _rmsprop(params, **kwargs):
    return torch.optim.RMSprop(params, foreach=False, **kwargs)


def _adam(params, **kwargs):
    return torch.optim.Adam(params, foreach=False, **kwargs)


_TOLERANCE = dict(rtol=1e-9, atol=1e-12)
_QUESTION_LIST = [
    Question(
        "q1", "MomentumSGD", "SGD with momentum and Nesterov", run=_run, reference=_sgd,
        public_cases=lambda: [
            _case(lr=0.1, momentum=0.9),
            _case(lr=0.05, momentum=0.5, seed=1),
            _case(lr=0.1, momentum=0.9, nesterov=True),
        ],
        hidden_cases=lambda s: [
            _case(20, s, lr=0.3, momentum=0.99),
            _case(15, s + 1, lr=0.1, momentum=0.8, nesterov=True),
            _case(10, s + 2, groups={"lr": 0.01}, lr=0.2, momentum=0.9),
            _case(10, s + 3, groups={"momentum": 0.5}, lr=0.1, momentum=0.9,
                  nesterov=True),
        ],
        points=2, explain=first_divergence, **_TOLERANCE,
    ),
    Question(
        "q2", "RMSProp", "RMSProp", run=_run, reference=_rmsprop,
        public_cases=lambda: [_case(lr=0.01), _case(lr=0.001, alpha=0.9, seed=1)],
        hidden_cases=lambda s: [
            _case(25, s, lr=0.003, alpha=0.5, eps=1e-6),
            _case(10, s + 1, groups={"lr": 0.05, "alpha": 0.95}, lr=0.01),
        ],
        points=2, explain=first_divergence, **_TOLERANCE,
    ),
    Question(
        "q3", "Adam", "Adam with bias correction", run=_run, reference=_adam,
        public_cases=lambda: [
            _case(lr=0.01),
            _case(lr=0.001, betas=(0.8, 0.99), seed=1),
            _case(30, lr=0.05, eps=1e-6, seed=2),
        ],
        hidden_cases=lambda s: [
            _case(40, s, lr=0.002, betas=(0.5, 0.9)),
            _case(10, s + 1, groups={"lr": 0.1, "betas": (0.95, 0.9999)}, lr=0.01),
            _case(5, s + 2, lr=0.3, eps=1e-3),
        ],
        points=3, explain=first_divergence, **_TOLERANCE,
    ),
]  # fmt: skip
QUESTIONS = {q.key: q for q in _QUESTION_LIST}


check_q1 = check_function(QUESTIONS["q1"])
check_q2 = check_function(QUESTIONS["q2"])
check_q3 = check_function(QUESTIONS["q3"])
