"""Lab 2: optimizers as ``torch.optim.Optimizer`` subclasses.

The student writes SGD with momentum (and Nesterov), RMSProp and Adam. Each
check trains a small float64 network with the student's class and with
``torch.optim``'s (``foreach=False``), side by side on the same batches, and
reports the first step and the first parameter at which they part ways
(:func:`course_lib.labs.harness.first_mismatch`).
Hidden cases use other hyperparameters and two parameter groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import Question, declare
from .harness import (
    first_mismatch,
    flat_parameters,
    parameter_names,
    tiny_batches,
    tiny_net,
)

_SIZES = (4, 6, 3)  # the network every case trains: 4 -> 6 -> 3, float64
_NAMES = parameter_names(tiny_net(0, _SIZES))


def _run(optimizer_cls, inputs) -> torch.Tensor:
    """Parameters after every step, flattened: ``(num_steps, num_params)``."""
    model = tiny_net(inputs["seed"], _SIZES)
    first, second = model[0].parameters(), model[2].parameters()
    if inputs["groups"]:  # two groups: the second one overrides some settings
        params = [{"params": list(first)}, {"params": list(second), **inputs["groups"]}]
    else:
        params = list(model.parameters())
    optimizer = optimizer_cls(params, **inputs["kwargs"])
    X, y = tiny_batches(inputs["seed"], (inputs["num_steps"], 8), d_in=_SIZES[0])
    rows = []
    for X_b, y_b in zip(X, y, strict=True):
        optimizer.zero_grad()
        F.cross_entropy(model(X_b), y_b).backward()
        optimizer.step()
        rows.append(flat_parameters(model))
    return torch.stack(rows)


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


def _against(name: str) -> dict:
    """Judged step by step against torch.optim's ``name``, to float64 round-off."""
    explain = first_mismatch(_NAMES, f"torch.optim.{name}")
    return dict(explain=explain, rtol=1e-9, atol=1e-12)


QUESTIONS = declare(__name__, [
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
        points=2, **_against("SGD"),
        forbidden=("torch.optim.SGD", "course_lib.optim.SGD"),
    ),
    Question(
        "q2", "RMSProp", "RMSProp", run=_run, reference=_rmsprop,
        public_cases=lambda: [_case(lr=0.01), _case(lr=0.001, alpha=0.9, seed=1)],
        hidden_cases=lambda s: [
            _case(25, s, lr=0.003, alpha=0.5, eps=1e-6),
            _case(10, s + 1, groups={"lr": 0.05, "alpha": 0.95}, lr=0.01),
        ],
        points=2, **_against("RMSprop"),
        forbidden=("torch.optim.RMSprop", "course_lib.optim.RMSprop"),
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
        points=3, **_against("Adam"),
        forbidden=(
            "torch.optim.Adam", "torch.optim.AdamW", "course_lib.optim.Adam",
            "course_lib.optim.AdamW",
        ),
    ),
])  # fmt: skip
