"""Lab 4: Kaiming initialisation, batch norm forward and backward, layer norm.

The student writes ``kaiming_normal_`` (judged bit for bit against
``torch.nn.init.kaiming_normal_`` with the same generator state), a
``BatchNorm1d`` module (trained for a few steps, then evaluated, beside
``torch.nn.BatchNorm1d``; nothing is copied between the two), batch norm's
backward pass by hand, and ``layer_norm`` (its output and the gradients
autograd takes through it). Everything runs in float64, so a right answer
matches PyTorch to round-off and every classic mistake shows; the feedback
names the quantity (output, which gradient, which running statistic), the step
and the index where the answer first departs from PyTorch.

The references are PyTorch's own objects (the backward pass: autograd through
``torch.nn.functional.batch_norm``), always run outside the forbidden-use
watch.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .checks import Question, compare, declare, tensor_mismatch

_DOUBLE = torch.float64
_TIGHT = dict(rtol=1e-9, atol=1e-12)  # float64 round-off, with room for reordering

# What already computes a normalisation: every question on one forbids them all
# (layer norm of a transposed batch is batch norm, group norm with one group per
# channel is instance norm, ...). BatchNormFunction is named by its two methods:
# the class would bring torch.autograd.Function's own methods with it
# (ctx.save_for_backward), which any custom Function may use.
_NORM_FUNCTIONS = tuple(
    f"torch.nn.functional.{name}"
    for name in ("batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm")
)
_COURSE_NORM = tuple(
    f"course_lib.norm.{name}"
    for name in ("BatchNormFunction.forward", "BatchNormFunction.backward",
                 "batch_norm", "BatchNorm1d", "BatchNorm2d", "layer_norm", "LayerNorm",
                 "group_norm", "GroupNorm", "instance_norm", "InstanceNorm1d",
                 "InstanceNorm2d")
)  # fmt: skip
_TORCH_NORM_MODULES = tuple(
    f"torch.nn.{name}"
    for name in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm",
                 "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "RMSNorm")
)  # fmt: skip
_NORM_FUNCTIONS += tuple(
    f"torch.{name}"
    for name in ("batch_norm", "native_batch_norm", "_native_batch_norm_legit",
                 "instance_norm", "group_norm", "native_group_norm", "layer_norm",
                 "native_layer_norm", "rms_norm")
)  # fmt: skip
_AUTOGRAD = ("torch.autograd.grad", "torch.autograd.backward", "torch.Tensor.backward")


def _channel_data(seed: int, shape: tuple, offset: int = 0) -> torch.Tensor:
    """``randn(shape)`` with a mean and scale of its own per channel (dim 1)."""
    g = torch.Generator().manual_seed(10_000 * seed + offset)
    view = (1, shape[1]) + (1,) * (len(shape) - 2)
    scale = torch.empty(shape[1], dtype=_DOUBLE).uniform_(0.5, 3.0, generator=g)
    shift = torch.empty(shape[1], dtype=_DOUBLE).uniform_(-2.0, 2.0, generator=g)
    x = torch.randn(shape, generator=g, dtype=_DOUBLE)
    return x * scale.reshape(view) + shift.reshape(view)


# --- q1: Kaiming normal initialisation -------------------------------------------


def _run_init(fn, inputs) -> dict:
    tensor = torch.empty(inputs["shape"], dtype=_DOUBLE)
    if inputs["parameter"]:  # a layer's weight: filling it needs torch.no_grad()
        tensor = nn.Parameter(tensor)
    g = torch.Generator().manual_seed(inputs["seed"])
    returned = fn(tensor, **inputs["kwargs"], generator=g)
    return {"weight": tensor.detach().clone(), "returns the tensor": returned is tensor}


def _init_case(shape, seed=0, parameter=False, **kwargs):
    kind = "Linear" if len(shape) == 2 else f"Conv{len(shape) - 2}d"
    settings = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "defaults"
    label = f"{kind} weight {tuple(shape)}, {settings}, seed {seed}"
    inputs = dict(shape=tuple(shape), seed=seed, parameter=parameter, kwargs=kwargs)
    return label, inputs


def _std_ratio_names(shape: tuple, ratio: float) -> list[str]:
    """The usual mistakes whose std is ``ratio`` times the right one, for a
    Linear ``(out, in)`` or ConvNd ``(out, in, *kernel)`` weight."""
    receptive = math.prod(shape[2:])
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    suspects = [
        (math.sqrt(fan_in / fan_out), "fan_out used where fan_in was asked"),
        (math.sqrt(fan_out / fan_in), "fan_in used where fan_out was asked"),
        (1 / math.sqrt(2), "the factor 2 of the rectifier's gain is missing"),
        (math.sqrt(2), "a factor sqrt(2) too many in the gain"),
    ]
    return [name for value, name in suspects if abs(ratio / value - 1) < 1e-9]


def explain_init(expected, actual, *, rtol: float, atol: float) -> str | None:
    """:func:`~course_lib.labs.checks.compare`, plus what the std of the draws says.

    Given the same generator state, a right answer draws the very same normal
    numbers as torch, so a wrong one is usually torch's draws times a constant:
    the ratio of the two stds, which often names the mistake.
    """
    if not isinstance(actual, dict):
        return f"expected the harness's dict, got {type(actual).__name__}"
    e, a = expected["weight"], actual.get("weight")
    problem = compare(e, a, rtol=rtol, atol=atol, path="the weight")
    if problem is None:
        returned = actual.get("returns the tensor")
        return None if returned is True else (
            "the weight is right, but return the tensor you filled (as torch does)"
        )  # fmt: skip
    if tensor_mismatch(e, a) or not bool(torch.isfinite(a).all()):
        return problem
    ratio = float((a * e).sum() / (e * e).sum())
    residual = float((a - ratio * e).norm() / e.norm())
    if residual > 1e-9:
        return (f"{problem}; these are not torch's draws: fill the whole tensor "
                "with one tensor.normal_(0, std, generator=generator), with no "
                "other draw from the generator")  # fmt: skip
    if abs(ratio - 1) < 1e-12:
        return (f"{problem}; the same draws with a std off by round-off: "
                "compute std = gain / math.sqrt(fan) in Python floats, as torch "
                "does")  # fmt: skip
    names = _std_ratio_names(tuple(e.shape), ratio)
    why = f" ({' or '.join(names)})" if names else ""
    return f"{problem}; your std is {ratio:.6g} times torch's{why}"


# --- q2: a BatchNorm1d module, trained then evaluated ----------------------------

_QUANTITY_TIPS = {
    "output": "training mode normalises with the batch's mean and biased variance "
    "(divide by n) per channel, over N (and L); eval mode uses the running ones",
    "running_mean": "running <- (1 - momentum) * running + momentum * batch value",
    "running_var": "running_var is updated with the unbiased batch variance "
    "(divide by n - 1), the normalisation uses the biased one",
    "num_batches_tracked": "a long integer buffer, +1 per training-mode batch",
}
_EVAL_TIP = "in eval mode, normalise with the running statistics and leave them be"
_GRAD_TIP = (
    "the output is right but not this gradient: is part of the computation "
    "detached (.data, .detach(), .item()) or done in place?"
)


def _first_difference(expected: dict, actual, tip, *, rtol, atol, step="") -> str:
    """The first quantity of ``expected`` that ``actual`` gets wrong, named as in
    ``"values differ at train step 2 / running_var: ..."``, with ``tip(name)``;
    an empty string if none."""
    actual = actual if isinstance(actual, dict) else {}
    for name, value in expected.items():
        where = f"{step} / {name}" if step else name
        problem = compare(value, actual.get(name), rtol=rtol, atol=atol, path=where)
        if problem:
            return f"{problem} ({tip(name)})"
    return ""


def _module_names(module) -> dict:
    return {
        "parameters": sorted(n for n, _ in module.named_parameters()),
        "buffers": sorted(n for n, _ in module.named_buffers()),
    }


def _read(tensor):
    return tensor.detach().clone() if isinstance(tensor, torch.Tensor) else tensor


def _bn_step(module, x, upstream, lr: float) -> dict:
    """One forward and backward pass; the quantities judged; an SGD step on γ, β."""
    x = x.clone().requires_grad_(True)
    y = module(x)
    if isinstance(y, torch.Tensor) and y.shape == x.shape and y.requires_grad:
        (y * upstream).sum().backward()  # else no gradient: the output is off
    record = {"output": _read(y), "grad of input": _read(x.grad)}
    params = [(n, getattr(module, n, None)) for n in ("weight", "bias")]
    params = [(n, p) for n, p in params if isinstance(p, nn.Parameter)]
    for name, p in params:
        record[f"grad of {name}"] = _read(p.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        record[name] = _read(getattr(module, name, None))
    with torch.no_grad():  # move gamma and beta, so later steps use other values
        for _, p in params:
            if p.grad is not None:
                p -= lr * p.grad
                p.grad = None
    return record


def _run_batch_norm(cls, inputs) -> dict:
    shape, num_features = inputs["shape"], inputs["shape"][1]
    module = cls(num_features, **inputs["kwargs"]).double()
    outputs = {"module": _module_names(module)}
    g = torch.Generator().manual_seed(inputs["seed"] + 500)
    steps = [("train", i) for i in range(inputs["train_steps"])]
    steps += [("eval", i) for i in range(inputs["eval_steps"])]
    for number, (mode, i) in enumerate(steps):
        module.train(mode == "train")
        x = _channel_data(inputs["seed"], shape, offset=number)
        upstream = torch.randn(shape, generator=g, dtype=_DOUBLE)
        outputs[f"{mode} step {i + 1}"] = _bn_step(module, x, upstream, lr=0.1)
    return outputs


def _bn_case(shape, train_steps=3, eval_steps=2, seed=0, **kwargs):
    settings = ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"
    label = (f"input {tuple(shape)}, {settings}, {train_steps} training then "
             f"{eval_steps} eval steps, seed {seed}")  # fmt: skip
    return label, dict(shape=tuple(shape), train_steps=train_steps,
                       eval_steps=eval_steps, seed=seed, kwargs=kwargs)  # fmt: skip


def _tip(step: str, quantity: str) -> str:
    """What to look at when ``quantity`` is the first to be off (the quantities
    before it, the output first, are right at this step)."""
    if quantity.startswith("grad"):
        return _GRAD_TIP
    if step.startswith("eval") and quantity != "output":
        return _EVAL_TIP
    return _QUANTITY_TIPS[quantity]


def explain_batch_norm(expected, actual, *, rtol: float, atol: float) -> str | None:
    """The first quantity, at the first step, where the module leaves torch's.

    ``"values differ at train step 3 / running_var: 1 of 4 elements are off;
    ... (tip)"``; the module's parameter and buffer names are checked first.
    """
    if not isinstance(actual, dict):
        return f"expected the harness's dict of steps, got {type(actual).__name__}"
    names = actual.get("module", {})
    for kind, how in (("parameters", "nn.Parameter"), ("buffers", "register_buffer")):
        want, got = expected["module"][kind], names.get(kind)
        if got != want:
            return (f"the module's {kind} are {got}, torch's are {want}: create "
                    f"them with {how}, under torch's names")  # fmt: skip
    for step, record in expected.items():
        if step == "module":
            continue
        tip = functools.partial(_tip, step)
        problem = _first_difference(record, actual.get(step), tip, rtol=rtol,
                                    atol=atol, step=step)  # fmt: skip
        if problem:
            return problem
    return None


# --- q3: batch norm's backward pass by hand --------------------------------------

_GRADS = ("grad_input", "grad_weight", "grad_bias")


def bn_backward_reference(grad_output, x, weight, eps):
    """Autograd through ``F.batch_norm`` in training mode (run outside the watch)."""
    x = x.detach().requires_grad_(True)
    weight = weight.detach().requires_grad_(True)
    bias = torch.zeros_like(weight, requires_grad=True)
    y = F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
    return torch.autograd.grad(y, (x, weight, bias), grad_output)


def _run_backward(fn, inputs) -> dict | object:
    n, c = inputs["shape"]
    x = _channel_data(inputs["seed"], (n, c))
    g = torch.Generator().manual_seed(inputs["seed"] + 700)
    weight = torch.randn(c, generator=g, dtype=_DOUBLE)
    grad_output = torch.randn(n, c, generator=g, dtype=_DOUBLE)
    out = fn(grad_output, x, weight, inputs["eps"])
    if isinstance(out, (tuple, list)) and len(out) == 3:
        return dict(zip(_GRADS, (_read(t) for t in out), strict=True))
    return {"your answer": f"a {type(out).__name__}, not 3 tensors"}


def _backward_case(n, c, eps=1e-5, seed=0):
    return (f"x ({n}, {c}), eps={eps}, seed {seed}",
            dict(shape=(n, c), eps=eps, seed=seed))  # fmt: skip


_BACKWARD_TIPS = {
    "grad_input": "x reaches the loss three ways: directly, through the batch mean "
    "and through the batch variance; each path gives one term",
    "grad_weight": "the sum over the batch of grad_output times the normalised input",
    "grad_bias": "the sum over the batch of grad_output",
}


def explain_backward(expected, actual, *, rtol: float, atol: float) -> str | None:
    """Names the gradient that is off (grad_input, grad_weight or grad_bias)."""
    if not isinstance(actual, dict) or set(actual) != set(_GRADS):
        got = actual.get("your answer") if isinstance(actual, dict) else actual
        return f"expected (grad_input, grad_weight, grad_bias), got {got}"
    tips = _BACKWARD_TIPS.get
    return _first_difference(expected, actual, tips, rtol=rtol, atol=atol) or None


# --- q4: layer norm ----------------------------------------------------------------


def _run_layer_norm(fn, inputs) -> dict:
    g = torch.Generator().manual_seed(inputs["seed"] + 900)
    x = (torch.randn(inputs["shape"], generator=g, dtype=_DOUBLE) * 2 + 1)
    x.requires_grad_(True)
    normalized = inputs["normalized_shape"]
    kwargs = {} if inputs["eps"] is None else {"eps": inputs["eps"]}
    leaves = {"x": x}
    if inputs["affine"]:
        shape = (normalized,) if isinstance(normalized, int) else normalized
        for name in ("weight", "bias"):
            leaves[name] = torch.randn(shape, generator=g, dtype=_DOUBLE)
            kwargs[name] = leaves[name].requires_grad_(True)
    y = fn(x, normalized, **kwargs)
    upstream = torch.randn(inputs["shape"], generator=g, dtype=_DOUBLE)
    record = {"output": _read(y)}
    if isinstance(y, torch.Tensor) and y.shape == upstream.shape and y.requires_grad:
        grads = torch.autograd.grad((y * upstream).sum(), list(leaves.values()),
                                    allow_unused=True)  # fmt: skip
    else:  # nothing to differentiate: the output is wrong already
        grads = [None] * len(leaves)
    record |= {f"grad of {n}": _read(t) for n, t in zip(leaves, grads, strict=True)}
    return record


def _ln_case(shape, normalized_shape, affine=True, eps=None, seed=0):
    eps_text = f", eps={eps}" if eps is not None else ""
    label = (f"x {tuple(shape)}, normalized_shape={normalized_shape!r}, "
             f"{'with' if affine else 'no'} weight and bias{eps_text}, "
             f"seed {seed}")  # fmt: skip
    return label, dict(shape=tuple(shape), normalized_shape=normalized_shape,
                       affine=affine, eps=eps, seed=seed)  # fmt: skip


_LN_TIP = ("each sample is normalised over its last len(normalized_shape) "
           "dimensions, with the biased variance")  # fmt: skip


def _ln_reference(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    return F.layer_norm(x, tuple(normalized_shape), weight, bias, eps)


def explain_layer_norm(expected, actual, *, rtol: float, atol: float) -> str | None:
    """Names the quantity that is off: the output or the gradient of x, weight, bias."""
    def tip(name):
        return _LN_TIP if name == "output" else _GRAD_TIP

    return _first_difference(expected, actual, tip, rtol=rtol, atol=atol) or None


# --- the questions -------------------------------------------------------------------

QUESTIONS = declare(__name__, [
    Question(
        "q1", "kaiming_normal_", "Kaiming normal initialisation",
        run=_run_init, reference=torch.nn.init.kaiming_normal_,
        public_cases=lambda: [
            _init_case((48, 30), nonlinearity="relu"),
            _init_case((48, 30), 1, True, mode="fan_out", nonlinearity="relu"),
            _init_case((12, 5, 3, 3), 2, a=0.2, nonlinearity="leaky_relu"),
            _init_case((12, 5, 3, 3), 3, mode="fan_out", nonlinearity="tanh"),
            _init_case((20, 36), 4, nonlinearity="linear"),
            _init_case((30, 20), 5),
        ],
        hidden_cases=lambda s: [
            _init_case((100, 37), s, True, nonlinearity="relu"),
            _init_case((37, 100), s + 1, mode="fan_out", nonlinearity="relu"),
            _init_case((8, 3, 5, 5), s + 2, mode="fan_out", a=0.1),
            _init_case((16, 4, 7), s + 3, nonlinearity="tanh"),
            _init_case((6, 10, 1, 3), s + 4, mode="fan_out", nonlinearity="linear"),
            _init_case((3, 2, 2, 2, 2), s + 5, a=1.5, nonlinearity="leaky_relu"),
        ],
        points=2, rtol=0, atol=0, explain=explain_init,
        hints={"RuntimeError": "fill the tensor inside `with torch.no_grad():` "
               "(a layer's weight requires grad)",
               "TypeError": "the signature is (tensor, a=0.0, mode='fan_in', "
               "nonlinearity='leaky_relu', generator=None)"},
        forbidden=(
            "torch.nn.init.kaiming_normal_", "torch.nn.init.kaiming_uniform_",
            "torch.nn.init.calculate_gain", "torch.nn.init._calculate_correct_fan",
            "torch.nn.init._calculate_fan_in_and_fan_out",
            "course_lib.init.kaiming_normal_", "course_lib.init.kaiming_uniform_",
            "course_lib.init.calculate_gain", "course_lib.init.fan_in_and_fan_out",
        ),
    ),
    Question(
        "q2", "BatchNorm1d", "a BatchNorm1d module, train and eval",
        run=_run_batch_norm, reference=torch.nn.BatchNorm1d,
        public_cases=lambda: [
            _bn_case((8, 3)),
            _bn_case((6, 4, 5), 4, 2, seed=1, momentum=0.3, eps=1e-3),
            _bn_case((5, 2), 2, 2, seed=2, affine=False),
        ],
        hidden_cases=lambda s: [
            _bn_case((16, 5), 30, 3, s, momentum=0.05),
            _bn_case((2, 3, 4), 3, 2, s + 1, momentum=0.9, eps=0.1),
            _bn_case((2, 1), 4, 1, s + 2, eps=0.5),
            _bn_case((7, 6, 3), 5, 3, s + 3, affine=False, momentum=0.2),
            _bn_case((32, 4), 12, 4, s + 4, momentum=0.01, eps=1e-8),
        ],
        points=3, explain=explain_batch_norm, **_TIGHT,
        hints={"TypeError": "the signature is (num_features, eps=1e-5, momentum=0.1, "
               "affine=True)"},
        forbidden=(*_TORCH_NORM_MODULES, *_NORM_FUNCTIONS, *_COURSE_NORM),
    ),
    Question(
        "q3", "batch_norm_backward", "batch norm's backward pass by hand",
        run=_run_backward, reference=bn_backward_reference,
        public_cases=lambda: [
            _backward_case(8, 3),
            _backward_case(5, 4, eps=0.1, seed=1),
            _backward_case(2, 2, seed=2),
        ],
        hidden_cases=lambda s: [
            _backward_case(64, 10, seed=s),
            _backward_case(3, 1, eps=1.0, seed=s + 1),
            _backward_case(16, 7, eps=1e-8, seed=s + 2),
        ],
        points=3, explain=explain_backward, **_TIGHT,
        forbidden=(
            *_AUTOGRAD, "torch.autograd.functional.vjp",
            "torch.autograd.functional.jacobian", *_NORM_FUNCTIONS,
            *_TORCH_NORM_MODULES, *_COURSE_NORM,
        ),
    ),
    Question(
        "q4", "layer_norm", "layer norm and its gradients",
        run=_run_layer_norm, reference=_ln_reference,
        public_cases=lambda: [
            _ln_case((4, 6), (6,)),
            _ln_case((2, 3, 5), (3, 5), seed=1),
            _ln_case((3, 4, 5), 5, affine=False, eps=1e-3, seed=2),
        ],
        hidden_cases=lambda s: [
            _ln_case((8, 16), (16,), eps=0.1, seed=s),
            _ln_case((2, 3, 4, 5), (4, 5), seed=s + 1),
            _ln_case((2, 3, 4), (2, 3, 4), affine=False, seed=s + 2),
            _ln_case((5, 1, 7), 7, seed=s + 3),
        ],
        points=2, explain=explain_layer_norm, **_TIGHT,
        hints={"TypeError": "the signature is (x, normalized_shape, weight=None, "
               "bias=None, eps=1e-5); normalized_shape may be an int"},
        forbidden=(*_NORM_FUNCTIONS, *_TORCH_NORM_MODULES, *_COURSE_NORM),
    ),
])  # fmt: skip
