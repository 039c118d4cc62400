"""Lab 5: inverted dropout, label smoothing, mixup, penalties equal to weight decay.

The student writes a ``Dropout`` module (its masks compared, bit for bit,
with ``torch.nn.functional.dropout``'s from the same random state), the
label-smoothed cross-entropy of ``F.cross_entropy(label_smoothing=)`` (value
and gradient), a mixup batch and its soft-target loss, and the L2 and L1
penalties (judged on the parameters that plain SGD reaches with them, against
``SGD(weight_decay=)`` for L2). Everything runs in float64. The expected
outputs are computed outside the forbidden-use watch, from PyTorch's own
functions, together with what the classic mistakes would give, so that the
feedback can name the mistake (no rescaling, scaling at test time, the other
smoothing convention, an L2 penalty without its 1/2).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..regularize import Dropout, l1_penalty, l2_penalty, label_smoothing_cross_entropy
from .checks import Question, compare, declare, tensor_mismatch
from .harness import (
    first_mismatch,
    flat_parameters,
    parameter_names,
    tiny_batches,
    tiny_net,
)

_DOUBLE = torch.float64
_TIGHT = dict(rtol=1e-10, atol=1e-12)  # float64 round-off, with room for reordering
_GLOBAL_SHIFT = 7919  # the global RNG is seeded apart from the layer's generator
_BAD_P = (1.5, -0.1)  # probabilities Dropout must refuse


def _randn(seed: int, shape, offset: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(10_000 * seed + offset)
    return torch.randn(tuple(shape), generator=g, dtype=_DOUBLE) * scale


def _close(a, b) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, **_TIGHT))


def _tensor_like(value, shape, what: str) -> torch.Tensor:
    """``value`` if it is a float64 tensor of ``shape``; else a TypeError saying so."""
    want = f"{what} must be a float64 tensor of shape {tuple(shape)}"
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{want}, got a {type(value).__name__}")
    if value.shape != tuple(shape) or value.dtype != _DOUBLE:
        raise TypeError(f"{want}, got shape {tuple(value.shape)}, dtype {value.dtype}")
    return value


# --- q1: inverted dropout as a module -------------------------------------------------


def _refuses(cls, p) -> bool:
    try:
        cls(p, generator=torch.Generator())
    except ValueError:
        return True
    return False


def _run_dropout(cls, inputs) -> dict:
    """Outputs and input gradients of ``calls`` training passes, then eval."""
    p, seed, shape = inputs["p"], inputs["seed"], tuple(inputs["shape"])
    x = _randn(seed, shape)
    layer = cls(p, generator=torch.Generator().manual_seed(seed))
    if not isinstance(layer, nn.Module):
        kind = type(layer).__name__
        raise TypeError(f"Dropout(p) must make a torch.nn.Module, got a {kind}")
    train, grads = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_GLOBAL_SHIFT + seed)  # unrelated to the layer's generator
        layer.train()
        for _ in range(inputs["calls"]):
            xk = x.clone().requires_grad_()
            y = _tensor_like(layer(xk), shape, "the output of forward(x)")
            if y.requires_grad:
                y.backward(torch.ones_like(y))
            train.append(y.detach().clone())
            grads.append(torch.zeros_like(x) if xk.grad is None else xk.grad.clone())
        layer.eval()
        with torch.no_grad():
            y_eval = _tensor_like(layer(x.clone()), shape, "the output in eval mode")
    refused = [_refuses(cls, bad) for bad in _BAD_P]
    return {"train": train, "grad": grads, "eval": y_eval.clone(), "refuses": refused}


def _masks(seed, x, prob, calls, global_state: bool) -> list[torch.Tensor]:
    """The masks ``calls`` draws of ``bernoulli_(prob)`` give from the layer's
    generator or (``global_state``) from the global RNG as the harness sets it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_GLOBAL_SHIFT + seed)
        g = None if global_state else torch.Generator().manual_seed(seed)
        return [torch.empty_like(x).bernoulli_(prob, generator=g) for _ in range(calls)]


def _expected_dropout(inputs) -> dict:
    """F.dropout's outputs from the same random state, and the masks of two
    mistakes (keeping with probability p, drawing from the global RNG)."""
    p, seed, calls = inputs["p"], inputs["seed"], inputs["calls"]
    x = _randn(seed, tuple(inputs["shape"]))
    train, grads = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the state the layer's generator starts in
        for _ in range(calls):
            xk = x.clone().requires_grad_()
            y = F.dropout(xk, p, training=True)
            y.backward(torch.ones_like(y))
            train.append(y.detach().clone())
            grads.append(xk.grad.clone())
    right = {"train": train, "grad": grads, "eval": x.clone(), "refuses": [True, True]}
    return {
        "right": right, "x": x, "p": p,
        "keep_p_masks": _masks(seed, x, p, calls, global_state=False),
        "global_masks": _masks(seed, x, 1 - p, calls, global_state=True),
    }  # fmt: skip


def _eval_problem(x, y, p) -> str | None:
    if _close(y, x):
        return None
    if _close(y, (1 - p) * x):
        return (
            "in eval mode your layer multiplies by 1 - p, vanilla dropout's test-time "
            "rule; training already divided by 1 - p, so inverted dropout must be the "
            "identity at test time"
        )
    if p < 1 and _close(y, x / (1 - p)):
        return "in eval mode your layer divides by 1 - p; at test time it must return x"
    if bool(((y == 0) & (x != 0)).any()):
        return (
            "in eval mode your layer still drops units: read self.training (set by "
            ".train() and .eval()) and return x unchanged when it is False"
        )
    return f"in eval mode: {compare(x, y, **_TIGHT)}"


def _scale_problem(x, y, kept, p) -> str | None:
    if _close(y, x * kept):
        return (
            f"dropout does not rescale: the kept units must be divided by 1 - p = "
            f"{1 - p:g}, so that E[y] = x; unscaled, E[y] = (1 - p) x"
        )
    if p > 0 and _close(y, x * kept / p):
        return "you divide the kept units by p; divide them by the keep probability"
    return None


def _train_problem(expected, k, y) -> str | None:
    """What is wrong with training pass ``k``'s output ``y``, or None."""
    x, p = expected["x"], expected["p"]
    want = expected["right"]["train"][k]
    if _close(y, want):
        return None
    if not bool(torch.isfinite(y).all()):
        why = " (dividing by 1 - p = 0?); with p = 1 return zeros" if p == 1 else ""
        return f"the output has NaN or inf{why}"
    kept = (y != 0).to(_DOUBLE)
    if torch.equal(kept, (want != 0).to(_DOUBLE)):
        return _scale_problem(x, y, kept, p) or compare(want, y, **_TIGHT)
    if torch.equal(kept, expected["keep_p_masks"][k]):
        return (
            f"you keep each unit with probability p = {p:g}, but p is the "
            "probability of dropping it (as in nn.Dropout): keep it with 1 - p"
        )
    if torch.equal(kept, expected["global_masks"][k]):
        return (
            "your mask comes from the global random state, not from the generator "
            "the layer was given: pass generator=self.generator"
        )
    return (
        "the units you drop are not those F.dropout drops from the same random state:"
        " draw the mask with one call per pass, torch.empty_like(x).bernoulli_(1 - p,"
        " generator=self.generator)"
    )


def _train_problems(expected, outputs) -> list[str]:
    """One message if every training pass is wrong the same way, else one per
    wrong pass, saying which."""
    found = [_train_problem(expected, k, y) for k, y in enumerate(outputs)]
    wrong = [(k, m) for k, m in enumerate(found) if m]
    if not wrong:
        return []
    kept = sum(float((y != 0).double().mean()) for y in outputs) / len(outputs)
    share = f" (you keep {kept:.1%} of the units, 1 - p = {1 - expected['p']:.1%})"
    share = share if "not those F.dropout" in str(found) else ""
    if len(wrong) == len(found) and len(set(found)) == 1:
        return [f"in training, {found[0]}{share}"]
    return [f"in training pass {k + 1}, {m}{share}" for k, m in wrong]


def _explain_dropout(expected, actual, *, rtol, atol) -> str | None:
    """Names the mistake: no rescaling, scaling at test time, keep/drop swapped,
    another random stream, eval not the identity, p outside [0, 1] accepted."""
    right = expected["right"]
    if compare(right, actual, rtol=rtol, atol=atol) is None:
        return None
    x, p = expected["x"], expected["p"]
    problems = [_eval_problem(x, actual["eval"], p)]
    train = _train_problems(expected, actual["train"])
    problems += train
    for k, (want, got) in enumerate(zip(right["grad"], actual["grad"], strict=True)):
        if not train and not _close(got, want):
            problems.append(
                f"the gradient with respect to x (pass {k + 1}) is not mask / (1 - p): "
                f"{compare(want, got, rtol=rtol, atol=atol)}; keep y = x * mask / "
                "(1 - p) in autograd's graph (no detach, no in-place change of x)"
            )
    for bad, refused in zip(_BAD_P, actual["refuses"], strict=True):
        if not refused:
            problems.append(f"Dropout({bad}) must raise ValueError (p is in [0, 1])")
    problems = list(dict.fromkeys(m for m in problems if m))  # unique, in order
    return "; ".join(problems) or compare(right, actual, rtol=rtol, atol=atol)


def _dropout_case(p, shape, seed=0, calls=2):
    label = f"p={p}, x of shape {tuple(shape)}, {calls} passes, seed {seed}"
    return label, dict(p=p, shape=list(shape), seed=seed, calls=calls)


def _dropout_hidden(seed):
    rng = random.Random(f"lab05-q1-{seed}")
    p_low, p_high = rng.uniform(0.05, 0.35), rng.uniform(0.65, 0.95)
    return [
        _dropout_case(round(p_low, 3), (rng.randint(20, 60), 37), seed, calls=3),
        _dropout_case(round(p_high, 3), (5, 4, 6, 7), seed + 1),
        _dropout_case(0.0, (13, 11), seed + 2),
        _dropout_case(1.0, (9, 10), seed + 3),
        _dropout_case(0.5, (1,), seed + 4, calls=4),
    ]


# --- q2: label smoothing, PyTorch's convention ----------------------------------------


def _logits_and_target(inputs):
    n, c, seed = inputs["n"], inputs["c"], inputs["seed"]
    logits = _randn(seed, (n, c), scale=inputs["scale"]).requires_grad_()
    g = torch.Generator().manual_seed(seed + 1)
    return logits, torch.randint(0, c, (n,), generator=g)


def _loss_and_grad(loss_of_logits, logits) -> dict:
    loss = loss_of_logits(logits)
    if not isinstance(loss, torch.Tensor) or loss.shape != ():
        got = loss.shape if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TypeError(f"the loss must be a 0-dim tensor (the batch mean), got {got}")
    if loss.requires_grad:
        loss.backward()
    grad = torch.zeros_like(logits) if logits.grad is None else logits.grad.clone()
    return {"loss": loss.detach().clone(), "grad": grad}


def _run_smoothing(fn, inputs) -> dict:
    logits, target = _logits_and_target(inputs)
    return _loss_and_grad(lambda z: fn(z, target, inputs["eps"]), logits)


def _smoothing_reference(logits, target, eps):
    return label_smoothing_cross_entropy(logits, target, eps)


def _expected_smoothing(inputs) -> dict:
    """F.cross_entropy(label_smoothing=eps), and what three mistakes give."""
    eps = inputs["eps"]

    def with_(loss):
        logits, target = _logits_and_target(inputs)
        return _loss_and_grad(lambda z: loss(z, target), logits)

    return {
        "right": with_(lambda z, t: F.cross_entropy(z, t, label_smoothing=eps)),
        "mistakes": {
            "others": with_(lambda z, t: label_smoothing_cross_entropy(
                z, t, eps, spread="others")),
            "sum": with_(lambda z, t: F.cross_entropy(
                z, t, label_smoothing=eps, reduction="sum")),
            "no smoothing": with_(F.cross_entropy),
        },
    }  # fmt: skip


_SMOOTHING_MISTAKES = {
    "others": (
        "you use the other convention, ε/(C - 1) on each wrong class (the true class "
        "keeps 1 - ε); PyTorch's label_smoothing spreads ε over all C classes: "
        "q = (1 - ε) one_hot(y) + ε / C, so the true class keeps 1 - ε + ε/C"
    ),
    "sum": "you sum the losses over the batch; average them (reduction='mean')",
    "no smoothing": "your loss ignores eps: it is the plain cross-entropy",
}


def _explain_soft_loss(mistakes: dict) -> Callable:
    """An ``explain`` for {"loss", "grad"} outputs that names the first mistake
    (in ``mistakes``, key -> message) the answer reproduces."""

    def explain(expected, actual, *, rtol, atol) -> str | None:
        problem = compare(expected["right"], actual, rtol=rtol, atol=atol)
        if problem is None:
            return None
        for key, message in mistakes.items():
            if compare(expected["mistakes"][key], actual, rtol=rtol, atol=atol) is None:
                return message
        if not bool(torch.isfinite(actual["loss"])):
            return (
                "the loss is not finite: log(softmax(z)) overflows for large logits; "
                "use F.log_softmax (it subtracts the largest logit first)"
            )
        return problem

    return explain


def _smoothing_case(n, c, eps, seed=0, scale=1.0):
    label = (
        f"{n} examples, {c} classes, eps={eps}, logits of scale {scale}, seed {seed}"
    )
    return label, dict(n=n, c=c, eps=eps, seed=seed, scale=scale)


def _smoothing_hidden(seed):
    rng = random.Random(f"lab05-q2-{seed}")
    return [
        _smoothing_case(rng.randint(5, 40), rng.randint(3, 12),
                        round(rng.uniform(0.05, 0.5), 3), seed),
        _smoothing_case(7, 2, 0.3, seed + 1),
        _smoothing_case(10, 6, 0.1, seed + 2, scale=500.0),
        _smoothing_case(1, 4, 0.9, seed + 3),
        _smoothing_case(12, 5, 0.0, seed + 4),
    ]  # fmt: skip


# --- q3: a mixup batch ----------------------------------------------------------------


def _mixup_data(inputs):
    X = _randn(inputs["seed"], tuple(inputs["shape"]))
    g = torch.Generator().manual_seed(inputs["seed"] + 2)
    return X, torch.randint(0, inputs["c"], X.shape[:1], generator=g)


def _run_mixup(fn, inputs) -> dict:
    X, y = _mixup_data(inputs)
    g = torch.Generator().manual_seed(inputs["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_GLOBAL_SHIFT + inputs["seed"])
        out = fn(X.clone(), y.clone(), inputs["lam"], inputs["c"], g)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError("mixup_batch must return two tensors: (mixed inputs, targets)")
    return {"inputs": out[0], "targets": out[1]}


def _mix(X, y, lam, c, perm) -> dict:
    one_hot = F.one_hot(y, c).to(X.dtype)  # (N, C)
    mixed = lam * X + (1 - lam) * X[perm]
    return {"inputs": mixed, "targets": lam * one_hot + (1 - lam) * one_hot[perm]}


def _mixup_reference(X, y, lam, num_classes, generator):
    out = _mix(X, y, lam, num_classes, torch.randperm(len(X), generator=generator))
    return out["inputs"], out["targets"]


def _expected_mixup(inputs) -> dict:
    X, y = _mixup_data(inputs)
    lam, c = inputs["lam"], inputs["c"]
    g = torch.Generator().manual_seed(inputs["seed"])
    perm = torch.randperm(len(X), generator=g)
    right = _mix(X, y, lam, c, perm)
    rolled = _mix(X, y, lam, c, torch.arange(len(X)).roll(1))
    return {
        "right": right,
        "swapped": _mix(X, y, 1 - lam, c, perm),
        "rolled": rolled["inputs"],
        "hard": F.one_hot(y, c).to(X.dtype),
    }


def _explain_mixup(expected, actual, *, rtol, atol) -> str | None:
    right = expected["right"]
    problem = compare(right, actual, rtol=rtol, atol=atol)
    if problem is None:
        return None
    inputs, targets = actual["inputs"], actual["targets"]
    if tensor_mismatch(right["inputs"], inputs):
        return problem
    if tensor_mismatch(right["targets"], targets):
        return f"{problem} (the targets are soft: float, (N, num_classes), X's dtype)"
    if compare(expected["swapped"], actual, rtol=rtol, atol=atol) is None:
        return (
            "λ and 1 - λ are swapped: the batch as given gets λ, the shuffled batch "
            "(X[perm]) gets 1 - λ, in the inputs and in the targets"
        )
    if _close(inputs, expected["rolled"]):
        return (
            "you pair each example with its neighbour (a roll by one, as torchvision's "
            "MixUp does); pair it with X[perm], perm = torch.randperm(N, generator="
            "generator)"
        )
    if _close(inputs, right["inputs"]):
        if _close(targets, expected["hard"]):
            return (
                "the targets are not mixed: they must be λ one_hot(y) + (1 - λ) "
                "one_hot(y[perm]), with the inputs' λ and perm"
            )
        return f"the inputs are right, the targets are not: {problem}"
    return problem


def _mixup_case(shape, c, lam, seed=0):
    label = f"X of shape {tuple(shape)}, {c} classes, λ={lam}, seed {seed}"
    return label, dict(shape=list(shape), c=c, lam=lam, seed=seed)


def _mixup_hidden(seed):
    rng = random.Random(f"lab05-q3-{seed}")
    return [
        _mixup_case((rng.randint(10, 50), 7), 10, round(rng.uniform(0.05, 0.45), 3),
                    seed),
        _mixup_case((5, 3, 4, 4), 4, round(rng.uniform(0.55, 0.95), 3), seed + 1),
        _mixup_case((6, 2), 3, 1.0, seed + 2),
        _mixup_case((6, 2), 3, 0.0, seed + 3),
        _mixup_case((1, 5), 2, 0.8, seed + 4),
    ]  # fmt: skip


# --- q4: the loss of a mixup batch: cross-entropy against soft targets ----------------


def _soft_targets(inputs) -> torch.Tensor:
    n, c, seed = inputs["n"], inputs["c"], inputs["seed"]
    g = torch.Generator().manual_seed(seed + 3)
    if inputs["kind"] == "one-hot":
        return F.one_hot(torch.randint(0, c, (n,), generator=g), c).to(_DOUBLE)
    if inputs["kind"] == "mixup":
        a, b = torch.randint(0, c, (2, n), generator=g)
        lam = float(torch.rand((), generator=g, dtype=_DOUBLE))
        e_a, e_b = F.one_hot(a, c).to(_DOUBLE), F.one_hot(b, c).to(_DOUBLE)
        return lam * e_a + (1 - lam) * e_b
    weights = torch.rand(n, c, generator=g, dtype=_DOUBLE)  # any distribution
    return weights / weights.sum(dim=1, keepdim=True)


def _run_soft_loss(fn, inputs) -> dict:
    logits = _randn(inputs["seed"], (inputs["n"], inputs["c"]), scale=inputs["scale"])
    targets = _soft_targets(inputs)
    return _loss_and_grad(lambda z: fn(z, targets.clone()), logits.requires_grad_())


def _soft_loss_reference(logits, soft_targets):
    return -(soft_targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _expected_soft_loss(inputs) -> dict:
    def with_(loss):
        return _run_soft_loss(loss, inputs)

    return {
        "right": with_(F.cross_entropy),
        "mistakes": {
            "sum": with_(lambda z, q: F.cross_entropy(z, q, reduction="sum")),
            "sign": with_(lambda z, q: -F.cross_entropy(z, q)),
        },
    }


_SOFT_LOSS_MISTAKES = {
    "sum": "you sum the losses over the batch; average them",
    "sign": "the sign is flipped: the loss is -Σ_c q_c log p_c, a positive number",
}


def _soft_loss_case(n, c, kind, seed=0, scale=1.0):
    label = (
        f"{n} examples, {c} classes, {kind} targets, logits of scale {scale}, "
        f"seed {seed}"
    )
    return label, dict(n=n, c=c, kind=kind, seed=seed, scale=scale)


def _soft_loss_hidden(seed):
    rng = random.Random(f"lab05-q4-{seed}")
    return [
        _soft_loss_case(rng.randint(5, 40), rng.randint(2, 10), "mixup", seed),
        _soft_loss_case(9, 4, "any", seed + 1, scale=400.0),
        _soft_loss_case(1, 3, "any", seed + 2),
        _soft_loss_case(11, 7, "one-hot", seed + 3),
    ]


# --- q5, q6: penalties, judged on the parameters plain SGD reaches with them ----------

_SIZES = (4, 6, 3)  # the network every penalty case trains: 4 -> 6 -> 3, float64
_NAMES = parameter_names(tiny_net(0, _SIZES))


def _train(inputs, penalty=None, decay=None) -> dict:
    """``steps`` of SGD on cross-entropy + ``lam * penalty(model)``; ``decay``
    (a number for every parameter, or a pair: weights, biases) goes to
    ``weight_decay``. Returns the penalty before training and the parameters
    after each step."""
    model = tiny_net(inputs["seed"], _SIZES)
    lam, lr, momentum = inputs["lam"], inputs["lr"], inputs["momentum"]
    start = penalty(model) if penalty is not None else torch.zeros((), dtype=_DOUBLE)
    start = _tensor_like(start, (), "the penalty")
    weights = [p for p in model.parameters() if p.ndim >= 2]
    biases = [p for p in model.parameters() if p.ndim < 2]
    w_decay, b_decay = decay if isinstance(decay, tuple) else (decay or 0.0,) * 2
    groups = [{"params": weights, "weight_decay": w_decay},
              {"params": biases, "weight_decay": b_decay}]  # fmt: skip
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, foreach=False)
    X, y = tiny_batches(inputs["seed"], (inputs["steps"], 8), d_in=_SIZES[0])
    rows = []
    for X_b, y_b in zip(X, y, strict=True):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X_b), y_b)
        if penalty is not None:
            loss = loss + lam * penalty(model)
        loss.backward()
        optimizer.step()
        rows.append(flat_parameters(model))
    return {"penalty": start.detach().clone(), "trajectory": torch.stack(rows)}


def _run_penalty(fn, inputs) -> dict:
    return _train(inputs, penalty=fn)


def _l2_reference(model):
    return l2_penalty(model, include="all")


def _l1_reference(model):
    return l1_penalty(model, include="all")


def _expected_l2(inputs) -> dict:
    lam = inputs["lam"]
    right = _train(inputs, decay=lam)
    right["penalty"] = _l2_reference(tiny_net(inputs["seed"], _SIZES)).detach()
    return {
        "right": right,
        "no half": _train(inputs, decay=2 * lam)["trajectory"],
        "weights only": _train(inputs, decay=(lam, 0.0))["trajectory"],
    }


def _expected_l1(inputs) -> dict:
    def weights_only(model):
        return l1_penalty(model, include="weights")

    right = _train(inputs, penalty=_l1_reference)
    return {"right": right, "weights only": _train(inputs, weights_only)["trajectory"]}


def _explain_penalty(reference: str, value: str) -> Callable:
    steps = first_mismatch(_NAMES, reference)

    def explain(expected, actual, *, rtol, atol) -> str | None:
        right = expected["right"]
        path = steps(right["trajectory"], actual["trajectory"], rtol=rtol, atol=atol)
        if path is not None and "no half" in expected and _close(
            actual["trajectory"], expected["no half"]
        ):
            return (
                "your penalty's gradient is 2·lam·θ, twice what SGD's weight_decay "
                "adds (lam·θ, the gradient of lam · ½ Σ θ²): put the ½ in the penalty"
            )
        if path is not None and _close(actual["trajectory"], expected["weights only"]):
            return (
                "your penalty leaves out the biases; SGD(weight_decay=) decays every "
                "parameter it is given, so sum over all of model.parameters()"
            )
        if path is not None:
            return path
        problem = compare(right["penalty"], actual["penalty"], rtol=rtol, atol=atol)
        return f"the value of the penalty, {value}: {problem}" if problem else None

    return explain


def _penalty_case(lam, lr=0.1, steps=8, momentum=0.0, seed=0):
    label = f"lam={lam}, lr={lr}, momentum={momentum}, {steps} steps, seed {seed}"
    return label, dict(lam=lam, lr=lr, steps=steps, momentum=momentum, seed=seed)


def _penalty_hidden(seed):
    rng = random.Random(f"lab05-penalty-{seed}")
    return [
        _penalty_case(round(rng.uniform(0.01, 0.3), 4), 0.2, 15, seed=seed),
        _penalty_case(0.05, 0.1, 10, momentum=0.9, seed=seed + 1),
        _penalty_case(1.0, 0.05, 5, seed=seed + 2),
    ]


# --- what each answer may not use -----------------------------------------------------

_DROPOUT_FORBIDDEN = (
    *(f"torch.nn.{name}" for name in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                                       "AlphaDropout", "FeatureAlphaDropout")),
    *(f"torch.nn.functional.{name}" for name in ("dropout", "dropout1d", "dropout2d",
                                                  "dropout3d", "alpha_dropout",
                                                  "feature_alpha_dropout")),
    "torchvision.ops.stochastic_depth.stochastic_depth",
    "torchvision.ops.stochastic_depth.StochasticDepth",
    *(f"course_lib.regularize.{name}" for name in ("dropout", "vanilla_dropout",
                                                    "Dropout", "VanillaDropout",
                                                    "stochastic_depth",
                                                    "StochasticDepth")),
    # the C functions behind them, caught when the answer calls them
    *(f"torch.{name}" for name in ("dropout", "feature_dropout", "native_dropout",
                                    "alpha_dropout", "feature_alpha_dropout")),
)  # fmt: skip
_CROSS_ENTROPY_FORBIDDEN = (
    "torch.nn.functional.cross_entropy", "torch.nn.CrossEntropyLoss",
    "torch._C._nn.cross_entropy_loss",  # the C function behind F.cross_entropy
    "course_lib.regularize.smoothed_targets",
    "course_lib.regularize.label_smoothing_cross_entropy",
    "course_lib.regularize.LabelSmoothingCrossEntropy",
)  # fmt: skip
_MIXUP_FORBIDDEN = (
    "torchvision.transforms.v2.MixUp", "torchvision.transforms.v2.CutMix",
    "course_lib.augment.mixup", "course_lib.augment.MixedBatch.targets",
)  # fmt: skip
_PENALTY_FORBIDDEN = tuple(
    f"course_lib.regularize.{name}"
    for name in ("l1_penalty", "l2_penalty", "elastic_net_penalty",
                 "penalized_parameters")
)  # fmt: skip

QUESTIONS = declare(__name__, [
    Question(
        "q1", "Dropout", "inverted dropout as a module", run=_run_dropout,
        reference=Dropout, expected=_expected_dropout, explain=_explain_dropout,
        public_cases=lambda: [
            _dropout_case(0.5, (40, 50)),
            _dropout_case(0.2, (8, 3, 5, 5), seed=1),
            _dropout_case(0.7, (30, 20), seed=2),
        ],
        hidden_cases=_dropout_hidden, points=3, **_TIGHT,
        hints={"AttributeError": "subclass nn.Module and call super().__init__()"},
        forbidden=_DROPOUT_FORBIDDEN,
    ),
    Question(
        "q2", "smooth_cross_entropy", "label-smoothing cross-entropy",
        run=_run_smoothing, reference=_smoothing_reference,
        expected=_expected_smoothing, explain=_explain_soft_loss(_SMOOTHING_MISTAKES),
        public_cases=lambda: [
            _smoothing_case(8, 5, 0.1),
            _smoothing_case(16, 10, 0.2, seed=1),
            _smoothing_case(6, 3, 0.0, seed=2),
        ],
        hidden_cases=_smoothing_hidden, points=2, **_TIGHT,
        forbidden=_CROSS_ENTROPY_FORBIDDEN,
    ),
    Question(
        "q3", "mixup_batch", "a mixup batch", run=_run_mixup,
        reference=_mixup_reference, expected=_expected_mixup, explain=_explain_mixup,
        public_cases=lambda: [
            _mixup_case((8, 5), 3, 0.7),
            _mixup_case((6, 1, 4, 4), 4, 0.25, seed=1),
        ],
        hidden_cases=_mixup_hidden, points=2, **_TIGHT, forbidden=_MIXUP_FORBIDDEN,
    ),
    Question(
        "q4", "mixup_loss", "cross-entropy against soft targets",
        run=_run_soft_loss, reference=_soft_loss_reference,
        expected=_expected_soft_loss, explain=_explain_soft_loss(_SOFT_LOSS_MISTAKES),
        public_cases=lambda: [
            _soft_loss_case(8, 5, "mixup"),
            _soft_loss_case(6, 3, "one-hot", seed=1),
            _soft_loss_case(5, 4, "any", seed=2),
        ],
        hidden_cases=_soft_loss_hidden, points=1, **_TIGHT,
        forbidden=(*_CROSS_ENTROPY_FORBIDDEN, "course_lib.augment.mixup_loss"),
    ),
    Question(
        "q5", "l2_penalty", "an L2 penalty equal to SGD's weight decay",
        run=_run_penalty, reference=_l2_reference, expected=_expected_l2,
        explain=_explain_penalty("torch.optim.SGD(weight_decay=lam)", "½ Σ θ²"),
        public_cases=lambda: [_penalty_case(0.1), _penalty_case(0.3, 0.05, seed=1)],
        hidden_cases=_penalty_hidden, points=2, **_TIGHT,
        forbidden=_PENALTY_FORBIDDEN,
    ),
    Question(
        "q6", "l1_penalty", "an L1 penalty", run=_run_penalty,
        reference=_l1_reference, expected=_expected_l1,
        explain=_explain_penalty("the reference L1 run", "Σ |θ|"),
        public_cases=lambda: [_penalty_case(0.01), _penalty_case(0.05, 0.2, seed=1)],
        hidden_cases=_penalty_hidden, points=1, **_TIGHT,
        forbidden=_PENALTY_FORBIDDEN,
    ),
])  # fmt: skip
