"""Lab 8: global magnitude pruning, training under a mask, rewinding.

The student writes ``global_magnitude_masks`` (judged mask for mask against
``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` at the
same sparsity), ``pruned_step`` (one training step after which the pruned
weights are zero; the parameters after every step are compared with the run
that ``prune.custom_from_mask``'s reparametrisation gives, with optimizers
that already hold momentum) and ``rewind`` (the lottery-ticket reset
``θ ← m ⊙ θ₀`` of Frankle and Carbin 2019, in place). Everything runs in
float64.

The expected outputs come from ``torch.nn.utils.prune`` itself, run outside
the forbidden-use watch; the outputs of the classic mistakes are computed
beside them, so the feedback can name the mistake.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from .checks import Question, compare, declare, tensor_mismatch
from .harness import flat_parameters, parameter_names, tiny_batches

_DOUBLE = torch.float64
_TIGHT = dict(rtol=1e-10, atol=1e-12)  # float64 round-off, with room for reordering
_BAD_SPARSITY = (1.5, -0.1)


def _close(a, b) -> bool:
    tensors = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return tensors and a.shape == b.shape and bool(torch.allclose(a, b, **_TIGHT))


def _magnitude_masks(weights, sparsity, score=torch.abs, count=round, one=False):
    """Masks that prune the ``count(sparsity * total)`` lowest ``score``s of all
    ``weights`` together (``one``: each tensor on its own). Ties do not occur in
    the cases (continuous random weights)."""
    if one:
        return [_magnitude_masks([w], sparsity, score, count)[0] for w in weights]
    flat = torch.cat([score(w).flatten() for w in weights])
    k = min(int(count(sparsity * flat.numel())), flat.numel())
    mask = torch.ones_like(flat)
    if k > 0:
        mask[torch.topk(flat, k, largest=False).indices] = 0
    pieces = mask.split([w.numel() for w in weights])
    return [m.reshape(w.shape) for m, w in zip(pieces, weights, strict=True)]


# --- q1: a global magnitude mask ------------------------------------------------------


def _weights(inputs) -> list[torch.Tensor]:
    """One tensor per shape, each with the scale 1/sqrt(fan in) of its own."""
    g = torch.Generator().manual_seed(inputs["seed"])
    out = []
    for shape in inputs["shapes"]:
        fan_in = math.prod(shape[1:])
        out.append(torch.randn(shape, generator=g, dtype=_DOUBLE) / math.sqrt(fan_in))
    return out


def _refuses(fn, sparsity) -> bool:
    try:
        fn([torch.ones(3, 2, dtype=_DOUBLE)], sparsity)
    except ValueError:
        return True
    return False


def _as_masks(out, weights) -> list:
    if not isinstance(out, (list, tuple)):
        raise TypeError(f"return a list of masks, one per weight; got a "
                        f"{type(out).__name__}")  # fmt: skip
    masks = []
    for m in out:  # a boolean mask is accepted: 1 keeps, 0 prunes
        masks.append(m.to(_DOUBLE) if isinstance(m, torch.Tensor)
                     and m.dtype == torch.bool else m)  # fmt: skip
    return masks


def _run_masks(fn, inputs) -> dict:
    weights = _weights(inputs)
    out = fn([w.clone() for w in weights], inputs["sparsity"])
    masks = _as_masks(out, weights)
    refuses = [_refuses(fn, bad) for bad in _BAD_SPARSITY]
    return {"masks": [m.detach().clone() if isinstance(m, torch.Tensor) else m
                      for m in masks], "refuses": refuses}  # fmt: skip


def _torch_masks(weights, sparsity) -> list[torch.Tensor]:
    """``prune.global_unstructured`` with ``L1Unstructured`` on the weights."""
    holders = []
    for w in weights:
        holder = nn.Module()
        holder.weight = nn.Parameter(w.clone())
        holders.append(holder)
    prune.global_unstructured([(h, "weight") for h in holders],
                              pruning_method=prune.L1Unstructured, amount=sparsity)
    return [h.weight_mask.detach().clone() for h in holders]


def _masks_reference(weights, sparsity):
    if not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return _magnitude_masks(weights, sparsity)


def _expected_masks(inputs) -> dict:
    weights, s = _weights(inputs), inputs["sparsity"]
    return {
        "right": {"masks": _torch_masks(weights, s), "refuses": [True, True]},
        "total": sum(w.numel() for w in weights),
        "mistakes": {
            "signed": _magnitude_masks(weights, s, score=lambda w: w),
            "layer-wise": _magnitude_masks(weights, s, one=True),
            "floor": _magnitude_masks(weights, s, count=math.floor),
            "inverted": [1 - m for m in _magnitude_masks(weights, s)],
            "one more": _magnitude_masks(weights, s, count=lambda x: round(x) + 1),
        },
    }


_MASK_MISTAKES = {
    "signed": "you rank the weights by their signed value, so the most negative "
    "weights are pruned and the small positive ones kept; rank them by magnitude, "
    "|w|",
    "layer-wise": "you prune each tensor at the sparsity on its own (layer-wise); a "
    "global mask ranks all the weights together, so layers with small weights lose "
    "more of them",
    "floor": "you round the number of weights to prune down (int()); torch prunes "
    "round(sparsity * total) weights",
    "inverted": "your masks are inverted: 1 keeps a weight, 0 prunes it, and the "
    "smallest weights are the pruned ones",
    "one more": "you prune one weight too many (a threshold compared with <=, or "
    "k + 1 instead of k)",
}


def _explain_masks(expected, actual, *, rtol, atol) -> str | None:
    if not isinstance(actual, dict):
        return f"expected the harness's dict, got {type(actual).__name__}"
    right = expected["right"]
    problem = compare(right["masks"], actual["masks"], rtol=0, atol=0, path="masks")
    if problem:
        got = actual["masks"]
        if any(tensor_mismatch(e, a) for e, a in zip(right["masks"], got, strict=True)):
            return f"{problem} (one mask per weight, its shape and dtype)"
        for key, value in expected["mistakes"].items():
            if all(torch.equal(v, a) for v, a in zip(value, got, strict=True)):
                return _MASK_MISTAKES[key]
        pruned = int(sum((m == 0).sum() for m in got))
        want = int(sum((m == 0).sum() for m in right["masks"]))
        if pruned != want:
            return (f"{problem}; you prune {pruned} of {expected['total']} weights, "
                    f"torch prunes round(sparsity * total) = {want}")  # fmt: skip
        return f"{problem}; the right number of weights, but not the smallest |w|"
    for bad, refused in zip(_BAD_SPARSITY, actual["refuses"], strict=True):
        if not refused:
            return f"sparsity={bad} must raise ValueError (sparsity is in [0, 1])"
    return None


def _masks_case(shapes, sparsity, seed=0):
    label = f"weights {[tuple(s) for s in shapes]}, sparsity {sparsity}, seed {seed}"
    return label, dict(shapes=[list(s) for s in shapes], sparsity=sparsity, seed=seed)


def _clean_sparsity(rng, low, high, total) -> float:
    """A sparsity whose number of pruned weights is not a tie of round()."""
    while True:
        s = round(rng.uniform(low, high), 3)
        if abs((s * total) % 1 - 0.5) > 0.01:
            return s


def _masks_hidden(seed):
    rng = random.Random(f"lab08-q1-{seed}")
    layers = rng.randint(2, 4)
    shapes = [(rng.randint(4, 30), rng.randint(4, 30)) for _ in range(layers)]
    conv = [(rng.randint(2, 8), rng.randint(1, 4), 3, 3), (10, rng.randint(8, 40))]
    total = sum(math.prod(s) for s in shapes)
    conv_total = sum(math.prod(s) for s in conv)
    return [
        _masks_case(shapes, _clean_sparsity(rng, 0.5, 0.97, total), seed),
        _masks_case(conv, _clean_sparsity(rng, 0.1, 0.5, conv_total), seed + 1),
        _masks_case([(3, 2), (2, 3)], 0.0, seed + 2),
        _masks_case([(3, 2), (2, 3)], 1.0, seed + 3),
        _masks_case([(50, 1), (1, 50), (7, 7)], 0.9, seed + 4),
    ]


# --- q2: a training step that keeps the pruned weights at zero ------------------------

_SIZES = (5, 8, 3)
_NAMES = parameter_names(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)))
_PRUNED = ("0.weight", "2.weight")


def _net(seed: int) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(_SIZES[0], _SIZES[1]), nn.Tanh(),
                             nn.Linear(_SIZES[1], _SIZES[2])).double()  # fmt: skip


def _optimizer(kind: str, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.2)
    if kind == "momentum":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    if kind == "momentum + weight decay":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.05)
    if kind == "nesterov":
        return torch.optim.SGD(params, lr=0.1, momentum=0.8, nesterov=True)
    return torch.optim.Adam(params, lr=0.05)


def _step(model, optimizer, X, y):
    optimizer.zero_grad()
    F.cross_entropy(model(X), y).backward()
    optimizer.step()


def _pruned_setup(inputs):
    """The network after ``warm`` ordinary steps (its optimizer holds momentum),
    its masks at ``sparsity``, the pruned weights set to zero, and the batches
    of the steps that follow."""
    model = _net(inputs["seed"])
    optimizer = _optimizer(inputs["optimizer"], model.parameters())
    X, y = tiny_batches(inputs["seed"], (inputs["warm"] + inputs["steps"], 8),
                        _SIZES[0], _SIZES[2])  # fmt: skip
    for t in range(inputs["warm"]):
        _step(model, optimizer, X[t], y[t])
    params = dict(model.named_parameters())
    weights = [params[n].detach() for n in _PRUNED]
    pruning = _magnitude_masks(weights, inputs["sparsity"])
    masks = dict(zip(_PRUNED, pruning, strict=True))
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    batches = list(zip(X[inputs["warm"]:], y[inputs["warm"]:], strict=True))
    return model, optimizer, masks, batches


def _run_pruned(fn, inputs) -> dict:
    model, optimizer, masks, batches = _pruned_setup(inputs)
    rows = []
    for X_b, y_b in batches:
        fn(model, {n: m.clone() for n, m in masks.items()}, optimizer, X_b.clone(),
           y_b.clone())  # fmt: skip
        rows.append(flat_parameters(model))
    return {"trajectory": torch.stack(rows)}


def pruned_step_reference(model, masks, optimizer, X, y):
    """One step, then the pruned weights set to zero again."""
    _step(model, optimizer, X, y)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def _flawed_step(flaw):
    def step(model, masks, optimizer, X, y):
        params = dict(model.named_parameters())
        optimizer.zero_grad()
        if flaw == "before the step":
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
        F.cross_entropy(model(X), y).backward()
        if flaw == "gradients only":
            for name, mask in masks.items():
                params[name].grad.mul_(mask)
        optimizer.step()

    return step


def _torch_pruned_run(inputs) -> torch.Tensor:
    """The same steps with ``prune.custom_from_mask``'s reparametrisation: the
    optimizer keeps stepping ``weight_orig``; the network computes with
    ``weight_orig * weight_mask``, recorded after each step."""
    model, optimizer, masks, batches = _pruned_setup(inputs)
    for name, mask in masks.items():
        prune.custom_from_mask(model.get_submodule(name.split(".")[0]), "weight", mask)
    rows = []
    for X_b, y_b in batches:
        _step(model, optimizer, X_b, y_b)
        row = []
        for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
            layer, attr = model.get_submodule(name.split(".")[0]), name.split(".")[1]
            if name in masks:
                row.append((layer.weight_orig * layer.weight_mask).detach().flatten())
            else:
                row.append(getattr(layer, attr).detach().flatten())
        rows.append(torch.cat(row))
    return torch.stack(rows)


def _expected_pruned(inputs) -> dict:
    model, _, masks, _ = _pruned_setup(inputs)
    keep = torch.cat([masks[n].flatten() if n in masks else torch.ones(p.numel(),
                      dtype=_DOUBLE) for n, p in model.named_parameters()])  # fmt: skip
    return {
        "right": {"trajectory": _torch_pruned_run(inputs)},
        "keep": keep,
        "mistakes": {k: _run_pruned(_flawed_step(k), inputs)["trajectory"]
                     for k in _STEP_MISTAKES},
    }  # fmt: skip


_STEP_MISTAKES = {
    "gradients only": "masking the gradients is not enough: the optimizer's state "
    "from the steps before pruning (momentum, Adam's averages) still moves the "
    "pruned weights; set them to zero after optimizer.step()",
    "before the step": "you zero the weights before optimizer.step(), which moves "
    "them again: apply the mask after the step",
    "no mask": "your step never applies the mask: set the pruned weights to zero "
    "after optimizer.step()",
}


def _explain_pruned(expected, actual, *, rtol, atol) -> str | None:
    if not isinstance(actual, dict):
        return f"expected the harness's dict, got {type(actual).__name__}"
    right, got = expected["right"]["trajectory"], actual["trajectory"]
    problem = tensor_mismatch(right, got)
    if problem:
        return f"the parameters after each step: {problem}"
    keep = expected["keep"].bool()
    alive = (got[:, ~keep] != 0).nonzero()
    if len(alive):
        step, j = (int(i) for i in alive[0])
        index = int(torch.nonzero(~keep)[j])
        why = next((m for k, m in _STEP_MISTAKES.items() if k != "no mask"
                    and _close(expected["mistakes"][k], got)), None)  # fmt: skip
        why = why or _STEP_MISTAKES["no mask"]
        return (f"after step {step + 1}, the pruned weight {_NAMES[index]} is "
                f"{got[step, index].item():.6g}, not 0 ({why})")
    close = torch.isclose(got, right, rtol=rtol, atol=atol)
    if bool(close.all()):
        return None
    step, index = (int(i) for i in torch.nonzero(~close)[0])
    return (f"after step {step + 1}, the kept parameter {_NAMES[index]} differs from "
            f"torch.nn.utils.prune's masked run: expected "
            f"{right[step, index].item():.10g}, got {got[step, index].item():.10g} "
            "(one optimizer step on the cross-entropy of the batch, then the mask)")


def _pruned_case(optimizer, sparsity, warm=3, steps=4, seed=0):
    label = (f"{optimizer}, sparsity {sparsity}, pruned after {warm} steps, then "
             f"{steps} steps, seed {seed}")  # fmt: skip
    return label, dict(optimizer=optimizer, sparsity=sparsity, warm=warm,
                       steps=steps, seed=seed)  # fmt: skip


def _pruned_hidden(seed):
    rng = random.Random(f"lab08-q2-{seed}")
    return [
        _pruned_case("adam", round(rng.uniform(0.3, 0.9), 2), 5, 10, seed),
        _pruned_case("momentum + weight decay", round(rng.uniform(0.5, 0.95), 2), 4,
                     12, seed + 1),
        _pruned_case("nesterov", 0.8, 2, 6, seed + 2),
        _pruned_case("momentum", 0.98, 6, 5, seed + 3),
        _pruned_case("adam", 0.5, 0, 5, seed + 4),
    ]  # fmt: skip


# --- q3: rewinding to the initial weights ---------------------------------------------


def _bn_net(seed: int) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(),
                             nn.Linear(8, 3)).double()  # fmt: skip


def _rewind_setup(inputs):
    """A network, its initial state, ``steps`` of training, masks on its Linear
    weights at ``sparsity`` (from the trained magnitudes)."""
    model = (_bn_net if inputs["batch_norm"] else _net)(inputs["seed"])
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    X, y = tiny_batches(inputs["seed"], (inputs["steps"], 8), 5, 3)
    for X_b, y_b in zip(X, y, strict=True):
        _step(model, optimizer, X_b, y_b)
    params = dict(model.named_parameters())
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = [f"{n}.weight" for n in names]
    weights = [params[n].detach() for n in names]
    masks = dict(zip(names, _magnitude_masks(weights, inputs["sparsity"]), strict=True))
    return model, initial, masks


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run_rewind(fn, inputs) -> dict:
    model, initial, masks = _rewind_setup(inputs)
    before = [id(p) for p in model.parameters()]
    fn(model, {k: v.clone() for k, v in initial.items()},
       {n: m.clone() for n, m in masks.items()})  # fmt: skip
    same = [id(p) for p in model.parameters()] == before
    return {"state": _state(model), "same parameters": same}


def rewind_reference(model, initial_state, masks):
    """θ ← m ⊙ θ₀ for the masked weights, θ ← θ₀ for everything else, in place."""
    with torch.no_grad():
        for name, value in model.state_dict().items():
            value.copy_(initial_state[name])
            if name in masks:
                value.mul_(masks[name])


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _expected_rewind(inputs) -> dict:
    model, initial, masks = _rewind_setup(inputs)
    trained = _state(model)
    rewind_reference(model, initial, masks)
    return {"right": {"state": _state(model), "same parameters": True},
            "trained": trained, "initial": initial, "masks": masks}  # fmt: skip


def _same(a, b) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype \
        and bool(torch.allclose(a, b, **_TIGHT))  # fmt: skip


def _tensor_mistake(expected, key, got) -> str | None:
    """What the wrong value ``got`` of ``key`` after the rewind is, if it is a
    classic mistake."""
    v, v0, m = expected["trained"][key], expected["initial"][key], \
        expected["masks"].get(key)  # fmt: skip
    if m is not None:
        if _same(got, v0):
            return (f"{key}: you rewind the weights but do not apply the mask: the "
                    "pruned weights must be zero, θ ← m ⊙ θ₀")
        if _same(got, v * m):
            return (f"{key}: you prune the trained weights instead of rewinding them: "
                    "the lottery ticket is the mask applied to the initial weights, "
                    "m ⊙ θ₀")
        if _same(got, v):
            return f"{key} keeps its trained values: set it to m ⊙ θ₀"
        return None
    if _same(got, v) and key.endswith(_BUFFERS):
        return (f"the batch-norm buffer {key} keeps its trained value: restore every "
                "entry of initial_state, buffers included")
    if _same(got, v):
        return (f"{key} keeps its trained value: every entry of initial_state, not "
                "only the masked weights, goes back to its initial value")
    if _same(got, torch.zeros_like(v)):
        return f"you zero {key}; it is not pruned: rewind it to its initial value"
    return None


def _explain_rewind(expected, actual, *, rtol, atol) -> str | None:
    if not isinstance(actual, dict):
        return f"expected the harness's dict, got {type(actual).__name__}"
    right = expected["right"]
    problem = compare(right["state"], actual["state"], rtol=rtol, atol=atol,
                      path="the state after rewind")  # fmt: skip
    if problem:
        for key, want in right["state"].items():
            got = actual["state"].get(key)
            if not _same(got, want):
                return _tensor_mistake(expected, key, got) or problem
        return problem
    if not actual["same parameters"]:
        return ("the values are right, but the model's parameters are new objects: an "
                "optimizer built on the old ones would no longer train the model; copy "
                "the values in place (p.copy_(...) under torch.no_grad(), or "
                "model.load_state_dict)")  # fmt: skip
    return None


def _rewind_case(sparsity, steps=5, batch_norm=False, seed=0):
    bn = ", with batch norm" if batch_norm else ""
    label = f"sparsity {sparsity}, {steps} training steps{bn}, seed {seed}"
    return label, dict(sparsity=sparsity, steps=steps, batch_norm=batch_norm,
                       seed=seed)  # fmt: skip


def _rewind_hidden(seed):
    rng = random.Random(f"lab08-q3-{seed}")
    return [
        _rewind_case(round(rng.uniform(0.5, 0.95), 2), 10, True, seed),
        _rewind_case(round(rng.uniform(0.2, 0.6), 2), 8, False, seed + 1),
        _rewind_case(0.0, 3, True, seed + 2),
        _rewind_case(1.0, 3, False, seed + 3),
    ]


# --- what each answer may not use -----------------------------------------------------

_PRUNE = tuple(
    f"torch.nn.utils.prune.{name}"
    for name in ("global_unstructured", "l1_unstructured", "random_unstructured",
                 "ln_structured", "random_structured", "identity", "custom_from_mask",
                 "remove", "is_pruned", "L1Unstructured", "RandomUnstructured",
                 "LnStructured", "RandomStructured", "Identity", "CustomFromMask",
                 "PruningContainer", "BasePruningMethod", "_compute_nparams_toprune",
                 "_validate_pruning_amount", "_validate_pruning_amount_init")
)  # fmt: skip
_COURSE_PRUNING = tuple(
    f"course_lib.pruning.{name}"
    for name in ("global_magnitude_masks", "layerwise_magnitude_masks",
                 "random_masks_like", "current_masks", "apply_masks", "remove_masks",
                 "effective_weight", "snapshot", "rewind_",
                 "iterative_magnitude_pruning")
)  # fmt: skip
_FORBIDDEN = _PRUNE + _COURSE_PRUNING

QUESTIONS = declare(__name__, [
    Question(
        "q1", "global_magnitude_masks", "a global magnitude mask",
        run=_run_masks, reference=_masks_reference, expected=_expected_masks,
        explain=_explain_masks,
        public_cases=lambda: [
            _masks_case([(8, 5), (3, 8)], 0.5),
            _masks_case([(6, 4), (10, 6), (2, 10)], 0.8, seed=1),
            _masks_case([(4, 3, 3, 3), (12, 9)], 0.3, seed=2),
        ],
        hidden_cases=_masks_hidden, points=3, rtol=0, atol=0,
        forbidden=_FORBIDDEN,
    ),
    Question(
        "q2", "pruned_step", "a training step that keeps pruned weights at zero",
        run=_run_pruned, reference=pruned_step_reference, expected=_expected_pruned,
        explain=_explain_pruned,
        public_cases=lambda: [
            _pruned_case("sgd", 0.5),
            _pruned_case("momentum", 0.7, seed=1),
        ],
        hidden_cases=_pruned_hidden, points=3, **_TIGHT,
        forbidden=_FORBIDDEN,
    ),
    Question(
        "q3", "rewind", "rewinding to the initial weights",
        run=_run_rewind, reference=rewind_reference, expected=_expected_rewind,
        explain=_explain_rewind,
        public_cases=lambda: [
            _rewind_case(0.8),
            _rewind_case(0.5, 4, batch_norm=True, seed=1),
        ],
        hidden_cases=_rewind_hidden, points=2, **_TIGHT,
        forbidden=_FORBIDDEN,
    ),
])  # fmt: skip
