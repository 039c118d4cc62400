"""Lab 7: ensembles, an EMA of the weights, distillation, fine-tuning set-up.

The student writes ``ensemble_probabilities`` (the mean of the members'
softmax outputs, in eval mode), an ``EMA`` class (judged after every update,
parameters and floating-point buffers, against
``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``), the
distillation loss of Hinton et al. (2015) (value and gradient, against its
definition written with ``F.kl_div``) and ``fine_tuning_groups`` (which
parameters train and with which learning rate, read back from the
``torch.optim.SGD`` built on the returned groups). Everything runs in float64.

The expected outputs are computed outside the forbidden-use watch, from
PyTorch's own objects (``AveragedModel``, ``F.kl_div``) or, for the
fine-tuning set-up, which PyTorch has no function for, from an explicit
reference; the outputs of the classic mistakes are computed beside them, so
the feedback can name the mistake.
"""

from __future__ import annotations

import copy
import random

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .checks import Question, compare, declare, tensor_mismatch
from .harness import parameter_names, tiny_batches

_DOUBLE = torch.float64
_TIGHT = dict(rtol=1e-10, atol=1e-12)  # float64 round-off, with room for reordering
_BAD_DECAYS = (1.5, -0.1)


def _randn(seed: int, shape, offset: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(10_000 * seed + offset)
    return torch.randn(tuple(shape), generator=g, dtype=_DOUBLE) * scale


def _read(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _close(a, b) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.shape == b.shape and a.dtype == b.dtype
            and bool(torch.allclose(a, b, **_TIGHT)))  # fmt: skip


def bn_net(seed: int, sizes=(5, 8, 3)) -> nn.Module:
    """``Linear -> BatchNorm1d -> Tanh -> Linear`` in float64, seeded in a forked
    random state; the batch norm's affine parameters and running statistics are
    set away from their defaults, so eval and train mode differ."""
    d_in, hidden, classes = sizes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.Tanh(),
            nn.Linear(hidden, classes),
        ).double()  # fmt: skip
    bn = model[1]
    with torch.no_grad():
        bn.weight.copy_(1 + 0.3 * _randn(seed, (hidden,), 1))
        bn.bias.copy_(0.3 * _randn(seed, (hidden,), 2))
        bn.running_mean.copy_(0.5 * _randn(seed, (hidden,), 3))
        bn.running_var.copy_(0.5 + _randn(seed, (hidden,), 4).abs())
    return model


# --- q1: averaging the members' probabilities ----------------------------------------


def _members(inputs) -> list[nn.Module]:
    d, c, seed = inputs["d"], inputs["c"], inputs["seed"]
    return [bn_net(seed + 10 * i, (d, h, c)) for i, h in enumerate(inputs["hidden"])]


def _stats(models) -> torch.Tensor:
    return torch.cat([b.detach().flatten().double() for m in models
                      for b in m.buffers()])  # fmt: skip


def _run_ensemble(fn, inputs) -> dict:
    models = _members(inputs)  # handed over in training mode, as after training
    x = _randn(inputs["seed"], (inputs["n"], inputs["d"]), 5, inputs["scale"])
    before = _stats(models)
    out = fn(models, x.clone())
    kept = _close(_stats(models), before)
    return {"probabilities": _read(out), "statistics kept": kept}


def _ensemble_reference(models, x):
    for model in models:
        model.eval()
    with torch.no_grad():
        return torch.stack([model(x).softmax(dim=1) for model in models]).mean(dim=0)


def _expected_ensemble(inputs) -> dict:
    x = _randn(inputs["seed"], (inputs["n"], inputs["d"]), 5, inputs["scale"])

    def logits(train=False):
        out = []
        for model in _members(inputs):
            model.train(train)
            with torch.no_grad():
                out.append(model(x))
        return torch.stack(out)  # (M, N, C)

    z = logits()
    right = {"probabilities": z.softmax(dim=2).mean(dim=0), "statistics kept": True}
    mistakes = {
        "mean logits": z.mean(dim=0).softmax(dim=1),
        "mean log-probabilities": z.log_softmax(dim=2).mean(dim=0),
        "geometric mean": z.log_softmax(dim=2).mean(dim=0).exp(),
        "sum": z.softmax(dim=2).sum(dim=0),
    }
    if inputs["n"] > 1:
        mistakes["train mode"] = logits(train=True).softmax(dim=2).mean(dim=0)
    return {"right": right, "mistakes": mistakes}


_ENSEMBLE_MISTAKES = {
    "mean logits": "you average the logits and take one softmax; average the members' "
    "probabilities: the mean over models of softmax(model(x), dim=1)",
    "mean log-probabilities": "you average log-probabilities; average the "
    "probabilities themselves (softmax, not log_softmax)",
    "geometric mean": "you take the geometric mean of the probabilities (exp of the "
    "mean log-probability), whose rows do not sum to 1; take the arithmetic mean",
    "sum": "you sum the members' probabilities; divide by the number of models",
    "train mode": "the members ran in training mode: batch norm normalised with the "
    "batch's statistics (and updated its running ones); call model.eval() first",
}


def _explain_ensemble(expected, actual, *, rtol, atol) -> str | None:
    right = expected["right"]
    if not isinstance(actual, dict):
        return f"expected the harness's dict, got {type(actual).__name__}"
    probs = actual["probabilities"]
    problem = compare(right["probabilities"], probs, rtol=rtol, atol=atol,
                      path="the probabilities")  # fmt: skip
    if problem is None:
        if actual["statistics kept"]:
            return None
        return ("the probabilities are right, but the members' batch-norm running "
                "statistics changed: a forward pass in training mode updates them; "
                "run the members in eval mode only")  # fmt: skip
    if tensor_mismatch(right["probabilities"], probs):
        return f"{problem} (return one (N, C) tensor of probabilities)"
    for key, value in expected["mistakes"].items():
        if _close(value, probs):
            return _ENSEMBLE_MISTAKES[key]
    if not actual["statistics kept"]:
        return f"{problem}; {_ENSEMBLE_MISTAKES['train mode']}"
    return problem


def _ensemble_case(n, d, c, hidden, seed=0, scale=1.0):
    label = (f"{len(hidden)} members (hidden widths {list(hidden)}), x ({n}, {d}), "
             f"{c} classes, inputs of scale {scale}, seed {seed}")  # fmt: skip
    return label, dict(n=n, d=d, c=c, hidden=list(hidden), seed=seed, scale=scale)


def _ensemble_hidden(seed):
    rng = random.Random(f"lab07-q1-{seed}")
    widths = [rng.randint(3, 12) for _ in range(rng.randint(4, 7))]
    return [
        _ensemble_case(rng.randint(10, 40), 6, rng.randint(2, 10), widths, seed),
        _ensemble_case(1, 4, 3, [5, 6, 7], seed + 1),
        _ensemble_case(7, 3, 4, [8], seed + 2),
        _ensemble_case(9, 5, 5, [6, 6], seed + 3, scale=30.0),
    ]


# --- q2: an exponential moving average of the weights ---------------------------------

_EMA_SIZES = (4, 6, 3)


def _floating_state(module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter and floating-point buffer, in order."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return [(n, t) for n, t in named if t.is_floating_point()]


def _state_names() -> list[str]:
    """Names of every element of :func:`_floating_state`, flattened."""
    model = bn_net(0, _EMA_SIZES)
    names = parameter_names(model)
    for name, b in model.named_buffers():
        if b.is_floating_point():
            names += [f"{name}[{i}]" for i in range(b.numel())]
    return names


_STATE_NAMES = _state_names()


def _state_vector(module) -> torch.Tensor:
    return torch.cat([t.detach().flatten().clone() for _, t in _floating_state(module)])


def _refuses_decay(cls, decay) -> bool:
    try:
        cls(bn_net(0, _EMA_SIZES), decay)
    except ValueError:
        return True
    return False


def _run_ema(cls, inputs) -> dict:
    """``steps`` of SGD with momentum on a batch-norm network; after each step
    ``ema.update(model)``; the average (parameters and floating-point buffers)
    and the model after each update, then the average's output in eval mode."""
    seed, decay = inputs["seed"], inputs["decay"]
    model = bn_net(seed, _EMA_SIZES)
    ema = cls(model, decay)
    optimizer = torch.optim.SGD(model.parameters(), lr=inputs["lr"], momentum=0.9)
    X, y = tiny_batches(seed, (inputs["steps"], 8), *_EMA_SIZES[::2])
    average, trained = [], []
    for X_b, y_b in zip(X, y, strict=True):
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(X_b), y_b).backward()
        optimizer.step()
        ema.update(model)
        if not isinstance(getattr(ema, "module", None), nn.Module):
            raise TypeError("keep the averaged copy of the model in self.module, "
                            "as AveragedModel does")  # fmt: skip
        average.append(_state_vector(ema.module))
        trained.append(_state_vector(model))
    ema.module.eval()
    with torch.no_grad():
        out = ema.module(_randn(seed, (5, _EMA_SIZES[0]), 6))
    return {"average": torch.stack(average), "model": torch.stack(trained),
            "eval output": _read(out),
            "refuses": [_refuses_decay(cls, bad) for bad in _BAD_DECAYS]}  # fmt: skip


class EMAReference:
    """``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
    use_buffers=True)`` behind the interface the question asks for."""

    def __init__(self, model, decay):
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                      use_buffers=True)  # fmt: skip
        self.module = self.averaged.module

    def update(self, model):
        self.averaged.update_parameters(model)


class _FlawedEMA:
    """The EMA written out, with one classic mistake (for the feedback)."""

    def __init__(self, model, decay, flaw):
        self.module, self.decay, self.flaw, self.count = copy.deepcopy(model), decay, \
            flaw, 0  # fmt: skip

    @torch.no_grad()
    def update(self, model):
        pairs = zip(_floating_state(self.module), _floating_state(model), strict=True)
        first = self.count == 0 and self.flaw != "no first copy"
        d = 1 - self.decay if self.flaw == "swapped" else self.decay
        for (name, avg), (_, now) in pairs:
            is_buffer = name.endswith(("running_mean", "running_var"))
            if is_buffer and self.flaw == "buffers copied":
                avg.copy_(now)
            elif is_buffer and self.flaw == "buffers kept":
                pass
            elif first:
                avg.copy_(now)
            else:
                avg.mul_(d).add_(now, alpha=1 - d)
        self.count += 1


def _expected_ema(inputs) -> dict:
    right = _run_ema(EMAReference, inputs)
    right["refuses"] = [True, True]
    mistakes = {}
    for flaw in _EMA_MISTAKES:
        def make(model, decay, flaw=flaw):
            if not 0 <= decay <= 1:
                raise ValueError("decay")
            return _FlawedEMA(model, decay, flaw)

        mistakes[flaw] = _run_ema(make, inputs)["average"]
    return {"right": right, "mistakes": mistakes}


_EMA_MISTAKES = {
    "swapped": "decay and 1 - decay are swapped: the average keeps decay of itself "
    "and takes 1 - decay of the model, ema <- decay * ema + (1 - decay) * w",
    "no first copy": "the first update must copy the model's weights into the "
    "average (AveragedModel does, while n_averaged == 0); you averaged them with "
    "the weights the copy was made from",
    "buffers copied": "you copy the model's buffers (running_mean, running_var) "
    "instead of averaging them: with use_buffers=True AveragedModel averages the "
    "floating-point buffers like the parameters",
    "buffers kept": "the buffers (running_mean, running_var) are never updated: "
    "average the floating-point buffers too (module.buffers()), as "
    "AveragedModel(use_buffers=True) does",
}


def _explain_ema(expected, actual, *, rtol, atol) -> str | None:
    right = expected["right"]
    if not isinstance(actual, dict):
        return f"expected the harness's dict, got {type(actual).__name__}"
    if _close(actual["average"], actual["model"]) and not _close(
        right["average"], right["model"]
    ):
        return ("your average is the model itself, after every update: make "
                "self.module a copy (copy.deepcopy(model)), not the model")
    moved = _first_state_mismatch(right["model"], actual["model"], rtol, atol,
                                  "the model trained without your updates")
    if moved:
        return (f"your update changed the model being trained ({moved}): read the "
                "model's weights, write only into the average")
    problem = _first_state_mismatch(right["average"], actual["average"], rtol, atol)
    if problem:
        for key, value in expected["mistakes"].items():
            if _close(value, actual["average"]):
                return f"{problem} ({_EMA_MISTAKES[key]})"
        return problem
    out = compare(right["eval output"], actual["eval output"], rtol=rtol, atol=atol,
                  path="the average's output in eval mode")  # fmt: skip
    if out:
        return out
    for bad, refused in zip(_BAD_DECAYS, actual["refuses"], strict=True):
        if not refused:
            return f"EMA(model, decay={bad}) must raise ValueError (decay is in [0, 1])"
    return None


def _first_state_mismatch(expected, actual, rtol, atol,
                          reference="AveragedModel's") -> str | None:
    """After which update, at which parameter or buffer, ``actual`` leaves
    ``AveragedModel``'s average."""
    problem = tensor_mismatch(expected, actual)
    if problem:
        return f"the state after each update: {problem}"
    close = torch.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return None
    step, index = (int(i) for i in torch.nonzero(~close)[0])
    return (f"after update {step + 1}, {_STATE_NAMES[index]} differs from "
            f"{reference}: expected {expected[step, index].item():.10g}, got "
            f"{actual[step, index].item():.10g}")  # fmt: skip


def _ema_case(decay, steps=6, lr=0.1, seed=0):
    return (f"decay={decay}, {steps} SGD steps (lr {lr}, momentum 0.9), seed {seed}",
            dict(decay=decay, steps=steps, lr=lr, seed=seed))  # fmt: skip


def _ema_hidden(seed):
    rng = random.Random(f"lab07-q2-{seed}")
    return [
        _ema_case(round(rng.uniform(0.9, 0.999), 4), 30, 0.2, seed),
        _ema_case(round(rng.uniform(0.2, 0.6), 3), 8, 0.3, seed + 1),
        _ema_case(0.0, 4, 0.1, seed + 2),
        _ema_case(1.0, 4, 0.1, seed + 3),
        _ema_case(0.5, 1, 0.1, seed + 4),
    ]


# --- q3: the distillation loss --------------------------------------------------------


def _distill_inputs(inputs):
    n, c, seed = inputs["n"], inputs["c"], inputs["seed"]
    student = _randn(seed, (n, c), 7, inputs["scale"]).requires_grad_()
    teacher = _randn(seed, (n, c), 8, inputs["scale"] * 1.5)
    g = torch.Generator().manual_seed(seed + 9)
    return student, teacher, torch.randint(0, c, (n,), generator=g)


def _loss_and_grad(loss_of, inputs) -> dict:
    student, teacher, target = _distill_inputs(inputs)
    loss = loss_of(student, teacher.clone(), target.clone())
    if not isinstance(loss, torch.Tensor) or loss.shape != ():
        got = loss.shape if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TypeError(f"the loss must be a 0-dim tensor (the batch mean), got {got}")
    if loss.requires_grad:
        loss.backward()
    grad = torch.zeros_like(student) if student.grad is None else student.grad.clone()
    return {"loss": loss.detach().clone(), "grad": grad}


def _run_distill(fn, inputs) -> dict:
    T, alpha = inputs["T"], inputs["alpha"]
    return _loss_and_grad(lambda s, t, y: fn(s, t, y, T, alpha), inputs)


def distillation_reference(student_logits, teacher_logits, target, T, alpha):
    """Hinton et al.'s loss by its definition, with ``F.kl_div``."""
    log_p = F.log_softmax(student_logits / T, dim=1)
    log_q = F.log_softmax(teacher_logits / T, dim=1)
    soft = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    return alpha * T**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, target)


def _flawed_distill(flaw):
    def loss(s, t, y, T, alpha):
        T_s = 1.0 if flaw == "T on the teacher only" else T
        T_t = 1.0 if flaw == "T on the student only" else T
        log_p, log_q = F.log_softmax(s / T_s, dim=1), F.log_softmax(t / T_t, dim=1)
        kl = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
        if flaw == "reversed KL":
            kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
        if flaw == "mean over classes":
            kl = kl / s.shape[1]
        if flaw == "cross-entropy":
            kl = -(log_q.exp() * log_p).sum(dim=1).mean()
        scale = 1.0 if flaw == "no T squared" else T**2
        if flaw == "T not squared":
            scale = T
        a = 1 - alpha if flaw == "alpha swapped" else alpha
        hard = F.cross_entropy(s / T if flaw == "hard term at T" else s, y)
        return a * scale * kl + (1 - a) * hard

    return loss


_DISTILL_MISTAKES = {
    "no T squared": "the soft term lacks the factor T²: its gradient shrinks like "
    "1/T², and T² restores it (Hinton et al. 2015, section 2)",
    "T not squared": "the soft term is multiplied by T, not T²",
    "T on the student only": "only the student's logits are divided by T: soften "
    "the teacher's too, p = softmax(z_s / T), q = softmax(z_t / T)",
    "T on the teacher only": "only the teacher's logits are divided by T: the "
    "student's log-probabilities must be taken at the same temperature",
    "reversed KL": "the KL divergence is the wrong way round: KL(q || p) = "
    "Σ q log(q / p), the teacher's distribution q first",
    "mean over classes": "you average the KL terms over the classes too; sum over "
    "the classes, average over the batch (F.kl_div's reduction='batchmean')",
    "alpha swapped": "alpha weights the wrong term: alpha goes to the soft "
    "(distillation) term, 1 - alpha to the cross-entropy with the labels",
    "hard term at T": "the cross-entropy with the labels uses the student's logits "
    "divided by T; the hard term is taken at T = 1",
    "cross-entropy": "your gradient is right but the value is off by the teacher's "
    "entropy (times alpha T²): you computed the cross-entropy -Σ q log p, not the "
    "KL divergence Σ q (log q - log p)",
}


def _expected_distill(inputs) -> dict:
    T, alpha = inputs["T"], inputs["alpha"]

    def with_(fn):
        return _loss_and_grad(lambda s, t, y: fn(s, t, y, T, alpha), inputs)

    return {"right": with_(distillation_reference),
            "mistakes": {k: with_(_flawed_distill(k)) for k in _DISTILL_MISTAKES}}


def _explain_distill(expected, actual, *, rtol, atol) -> str | None:
    problem = compare(expected["right"], actual, rtol=rtol, atol=atol)
    if problem is None:
        return None
    for key, message in _DISTILL_MISTAKES.items():
        if compare(expected["mistakes"][key], actual, rtol=rtol, atol=atol) is None:
            return message
    if isinstance(actual, dict) and not bool(torch.isfinite(actual["loss"])):
        return ("the loss is not finite: take logarithms with F.log_softmax, not "
                "log(softmax(.)), which is log 0 for large logits")  # fmt: skip
    return problem


def _distill_case(n, c, T, alpha, seed=0, scale=1.0):
    label = (f"{n} examples, {c} classes, T={T}, alpha={alpha}, logits of scale "
             f"{scale}, seed {seed}")  # fmt: skip
    return label, dict(n=n, c=c, T=T, alpha=alpha, seed=seed, scale=scale)


def _distill_hidden(seed):
    rng = random.Random(f"lab07-q3-{seed}")
    return [
        _distill_case(rng.randint(5, 40), rng.randint(3, 12),
                      round(rng.uniform(1.5, 8.0), 2), round(rng.uniform(0.1, 0.9), 2),
                      seed),
        _distill_case(6, 2, 20.0, 0.7, seed + 1),
        _distill_case(1, 5, 3.0, 1.0, seed + 2),
        _distill_case(8, 4, 2.0, 0.3, seed + 3, scale=1000.0),
        _distill_case(10, 6, 0.5, 0.8, seed + 4),
    ]  # fmt: skip


# --- q4: freezing and parameter groups for fine-tuning --------------------------------

_SENTINEL_LR = 0.0123  # the optimizer's default lr: a group without "lr" gets it


def _build(kind: str) -> nn.Sequential:
    """The networks the fine-tuning cases use, float64, seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(len(kind))
        layers = {
            "mlp": lambda: [nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                            nn.Linear(8, 4)],
            "bn": lambda: [nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(),
                           nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)],
            "blocks": lambda: [nn.Sequential(nn.Linear(6, 8), nn.ReLU()),
                               nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8),
                                             nn.ReLU()),
                               nn.Linear(8, 4)],
            "deep": lambda: [m for _ in range(4) for m in (nn.Linear(6, 6), nn.Tanh())]
            + [nn.Linear(6, 3)],
        }[kind]()
        return nn.Sequential(*layers).double()  # fmt: skip


def _layer_count(model) -> int:
    return sum(1 for child in model.children() if any(True for _ in child.parameters()))


def _refuses_k(fn, kind, k) -> bool:
    try:
        fn(_build(kind), k, 0.1, 0.01)
    except ValueError:
        return True
    return False


def _run_groups(fn, inputs) -> dict:
    model = _build(inputs["model"])
    if inputs["frozen"]:  # as after an earlier linear probe: everything frozen
        model.requires_grad_(False)
    groups = fn(model, inputs["k"], inputs["head_lr"], inputs["body_lr"])
    optimizer = torch.optim.SGD(groups, lr=_SENTINEL_LR)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    table = {name: [p.requires_grad, lr_of.get(id(p), "not in the optimizer")]
             for name, p in model.named_parameters()}  # fmt: skip
    plain = ["model" + "".join(f"[{i}]" for i in name.split(".") if i)
             for name, m in model.named_modules() if "requires_grad" in vars(m)]
    count = _layer_count(model)
    refuses = [_refuses_k(fn, inputs["model"], bad) for bad in (0, count + 1)]
    return {"parameters": table, "plain attribute": plain, "refuses": refuses}


def fine_tuning_reference(model, k, head_lr, body_lr):
    """Train the last ``k`` parameterised children of ``model``: the last one
    (the head) at ``head_lr``, the others at ``body_lr``; freeze the rest."""
    layers = [c for c in model.children() if any(True for _ in c.parameters())]
    if not (isinstance(k, int) and 1 <= k <= len(layers)):
        raise ValueError(f"k must be an integer in [1, {len(layers)}], got {k!r}")
    model.requires_grad_(False)
    for layer in layers[len(layers) - k:]:
        layer.requires_grad_(True)
    head = list(layers[-1].parameters())
    body = [p for layer in layers[len(layers) - k:-1] for p in layer.parameters()]
    groups = [{"params": head, "lr": head_lr}]
    return groups + ([{"params": body, "lr": body_lr}] if body else [])


def _groups_table(inputs, trained: set, head_lr, body_lr) -> dict:
    """The table of :func:`_run_groups` when the parameters named in ``trained``
    train, the last layer's at ``head_lr`` and the others at ``body_lr``."""
    model = _build(inputs["model"])
    owners = [n for n, c in model.named_children() if any(True for _ in c.parameters())]
    last = owners[-1]
    table = {}
    for name, _ in model.named_parameters():
        lr = head_lr if name.startswith(f"{last}.") else body_lr
        table[name] = [True, lr] if name in trained else [False, "not in the optimizer"]
    return table


def _expected_groups(inputs) -> dict:
    k, head_lr, body_lr = inputs["k"], inputs["head_lr"], inputs["body_lr"]
    model = _build(inputs["model"])
    names = [n for n, _ in model.named_parameters()]
    layers = [[f"{n}.{p}" for p, _ in c.named_parameters()]
              for n, c in model.named_children() if any(True for _ in c.parameters())]
    count = len(layers)

    def trains(chosen):
        return {n for layer in chosen for n in layer}

    right = _groups_table(inputs, trains(layers[count - k:]), head_lr, body_lr)
    mistakes = {
        "first k": _groups_table(inputs, trains(layers[:k]), head_lr, body_lr),
        "k parameters": _groups_table(inputs, set(names[len(names) - k:]), head_lr,
                                      body_lr),
        "lrs swapped": _groups_table(inputs, trains(layers[count - k:]), body_lr,
                                     head_lr),
        "one lr": _groups_table(inputs, trains(layers[count - k:]), head_lr, head_lr),
    }  # fmt: skip
    return {"right": {"parameters": right, "plain attribute": [],
                      "refuses": [True, True]},
            "mistakes": mistakes, "layers": count}  # fmt: skip


_GROUP_MISTAKES = {
    "first k": "you train the first k layers; fine-tuning trains the last k (the "
    "head and the k - 1 layers below it) and freezes the rest",
    "k parameters": "you count k parameter tensors (weight, bias, ...); count layers: "
    "the model's children that own parameters",
    "lrs swapped": "the two learning rates are swapped: the head (the last layer) "
    "gets head_lr, the other trained layers body_lr",
    "one lr": "every trained parameter gets head_lr: the layers below the head "
    "train at body_lr, in a group of their own",
}


def _explain_groups(expected, actual, *, rtol, atol) -> str | None:
    if not isinstance(actual, dict):
        return f"expected the harness's dict, got {type(actual).__name__}"
    right = expected["right"]
    table = actual["parameters"]
    if table != right["parameters"]:
        if actual["plain attribute"]:
            return (f"`requires_grad` was set as a plain attribute on "
                    f"{', '.join(actual['plain attribute'])}, which freezes nothing: "
                    "use module.requires_grad_(False) (with the underscore) or set "
                    "p.requires_grad on each parameter")  # fmt: skip
        for key, value in expected["mistakes"].items():
            if _trains(table) == _trains(value) != _trains(right["parameters"]):
                return _GROUP_MISTAKES[key]  # the wrong layers train
            if table == value:
                return _GROUP_MISTAKES[key]
        return _first_parameter_problem(right["parameters"], table)
    refused = actual["refuses"]
    for bad, ok in zip((0, expected["layers"] + 1), refused, strict=True):
        if not ok:
            return (f"fine_tuning_groups(model, k={bad}, ...) must raise ValueError "
                    f"(k is in [1, {expected['layers']}] for this model)")  # fmt: skip
    return None


def _trains(table: dict) -> dict:
    return {name: row[0] for name, row in table.items()}


def _first_parameter_problem(right: dict, table: dict) -> str:
    for name, (trains, lr) in right.items():
        got_trains, got_lr = table.get(name, [None, None])
        if got_trains != trains:
            state = "trains" if got_trains else "is frozen"
            want = "train" if trains else "be frozen"
            return (f"parameter {name} {state} (requires_grad={got_trains}); it "
                    f"must {want}")
        if got_lr != lr:
            if lr == "not in the optimizer":
                return (f"the frozen parameter {name} is in a group: give the "
                        "optimizer only the parameters that train")  # fmt: skip
            if got_lr == "not in the optimizer":
                return f"parameter {name} trains but is in no group"
            if got_lr == _SENTINEL_LR:
                return (f"parameter {name}'s group has no 'lr' (it got the "
                        f"optimizer's default, {_SENTINEL_LR}): expected {lr}")
            return f"parameter {name} is trained at lr {got_lr}, expected {lr}"
    return "the parameters' settings differ from the expected ones"


def _groups_case(model, k, head_lr=0.1, body_lr=0.01, frozen=False):
    before = ", everything frozen before" if frozen else ""
    label = f"{model} network, k={k}, head_lr={head_lr}, body_lr={body_lr}{before}"
    return label, dict(model=model, k=k, head_lr=head_lr, body_lr=body_lr,
                       frozen=frozen)  # fmt: skip


def _groups_hidden(seed):
    rng = random.Random(f"lab07-q4-{seed}")
    lr = round(rng.uniform(0.01, 0.5), 3)
    return [
        _groups_case("blocks", 2, lr, lr / 10),
        _groups_case("blocks", 3, lr, lr / 100, frozen=True),
        _groups_case("deep", rng.randint(2, 4), lr, lr / 3),
        _groups_case("deep", 5, 0.05, 0.05),
        _groups_case("bn", 1, lr, 0.0, frozen=True),
        _groups_case("mlp", 3, 1e-3, 1e-4),
    ]


# --- what each answer may not use -----------------------------------------------------

_SWA = tuple(
    f"torch.optim.swa_utils.{name}"
    for name in ("AveragedModel", "get_ema_multi_avg_fn", "get_ema_avg_fn",
                 "get_swa_multi_avg_fn", "get_swa_avg_fn", "update_bn", "SWALR")
)  # fmt: skip
_KL = ("torch.nn.functional.kl_div", "torch.nn.KLDivLoss", "torch.kl_div")
# the course's own answers (course_lib.ensemble, .distill, .transfer)
_COURSE_ENSEMBLE = tuple(
    f"course_lib.ensemble.{name}"
    for name in ("average_probabilities", "member_probabilities", "ensemble_predict",
                 "tta_predict")
)  # fmt: skip
_COURSE_AVERAGES = tuple(
    f"course_lib.ensemble.{name}"
    for name in ("WeightAverage", "EMA", "SWA", "update_bn")
)
_COURSE_DISTILL = tuple(
    f"course_lib.distill.{name}"
    for name in ("distillation_loss", "soft_target_loss", "distill")
)
_COURSE_TRANSFER = tuple(
    f"course_lib.transfer.{name}"
    for name in ("train_last", "prepare", "param_groups", "freeze", "unfreeze",
                 "layer_names")
)  # fmt: skip

QUESTIONS = declare(__name__, [
    Question(
        "q1", "ensemble_probabilities", "an ensemble's averaged probabilities",
        run=_run_ensemble, reference=_ensemble_reference,
        expected=_expected_ensemble, explain=_explain_ensemble,
        public_cases=lambda: [
            _ensemble_case(8, 5, 3, [6, 7, 8]),
            _ensemble_case(5, 4, 6, [4, 9], seed=1),
        ],
        hidden_cases=_ensemble_hidden, points=2, **_TIGHT,
        hints={"ValueError": "a batch of one in training mode: call model.eval()"},
        forbidden=(*_COURSE_ENSEMBLE, *_SWA),
    ),
    Question(
        "q2", "EMA", "an exponential moving average of the weights",
        run=_run_ema, reference=EMAReference, expected=_expected_ema,
        explain=_explain_ema,
        public_cases=lambda: [_ema_case(0.9), _ema_case(0.7, 5, 0.3, seed=1)],
        hidden_cases=_ema_hidden, points=3, **_TIGHT,
        hints={"AttributeError": "EMA(model, decay) keeps a copy in self.module; "
               "update(model) changes it in place"},
        forbidden=(*_SWA, *_COURSE_AVERAGES),
    ),
    Question(
        "q3", "distillation_loss", "the distillation loss",
        run=_run_distill, reference=distillation_reference,
        expected=_expected_distill, explain=_explain_distill,
        public_cases=lambda: [
            _distill_case(8, 5, 4.0, 0.5),
            _distill_case(6, 3, 2.0, 0.9, seed=1),
            _distill_case(5, 4, 1.0, 0.25, seed=2),
        ],
        hidden_cases=_distill_hidden, points=3, **_TIGHT,
        forbidden=(*_KL, *_COURSE_DISTILL),
    ),
    Question(
        "q4", "fine_tuning_groups", "freezing and parameter groups for fine-tuning",
        run=_run_groups, reference=fine_tuning_reference,
        expected=_expected_groups, explain=_explain_groups,
        public_cases=lambda: [
            _groups_case("mlp", 1),
            _groups_case("mlp", 2),
            _groups_case("bn", 3, 0.2, 0.02),
        ],
        hidden_cases=_groups_hidden, points=2, rtol=0, atol=0,
        hints={"TypeError": "return a list of dicts, {'params': [...], 'lr': ...}"},
        forbidden=_COURSE_TRANSFER,
    ),
])  # fmt: skip
