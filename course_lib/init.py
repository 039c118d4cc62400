r"""Weight initialisation from scratch, a drop-in for ``torch.nn.init``.

``from course_lib.init import kaiming_normal_`` in place of ``from torch.nn.init
import kaiming_normal_`` fills a weight with exactly the same numbers: the same
names, arguments and defaults, the same single random call (``uniform_`` or
``normal_``, from ``generator`` or the global generator) with bounds computed
in the same floating-point order, so the tensors agree bit for bit
(``tests/test_init.py`` checks every mode and nonlinearity on Linear and
Conv1d/2d/3d weights).

All four initialisers draw zero-mean weights with a variance chosen so that
the scale of the signal is kept from layer to layer. For ``y = W x`` with
independent zero-mean weights and inputs, each output sums ``n`` products
(``n`` = fan-in), so

.. math::
    \operatorname{Var}(y_i) = n \operatorname{Var}(w) \operatorname{Var}(x),

and the variance is kept when :math:`\operatorname{Var}(w) = 1/n`. The
backward pass sums over the fan-out instead, which asks for :math:`1/n_{out}`;
Glorot and Bengio (2010) compromise with :math:`2/(n_{in} + n_{out})`. A ReLU
zeroes half of a symmetric input, so :math:`E[\mathrm{relu}(z)^2] =
\operatorname{Var}(z)/2`, and He et al. (2015) double the variance to
:math:`2/n`. The nonlinearity's factor is :func:`calculate_gain`, the fans
are :func:`fan_in_and_fan_out`.

Where this module is stricter than torch (course_lib's rules,
``course_lib._args``): ``mode`` must be ``"fan_in"`` or ``"fan_out"`` exactly
(torch lower-cases it first); ``a``, ``param`` and ``gain`` must be finite real
numbers (``a`` and ``param`` may be None, the leaky ReLU's default slope 0.01),
checked even where torch ignores them (``a`` with ``"relu"``), and ``gain``
must be >= 0; a weight with zero fan-in and zero fan-out is refused where
torch divides by zero. NumPy scalars are accepted.

:func:`activation_statistics` measures what an initialisation does to a whole
network: per layer, the mean, spread and saturation of the activations and of
the back-propagated gradients (chapter 4).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._args import check_callable, check_choice, check_real, require

__all__ = [
    "NONLINEARITIES",
    "MODES",
    "SATURATION_LEVEL",
    "calculate_gain",
    "fan_in_and_fan_out",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "LayerStatistics",
    "activation_statistics",
]

#: The ``nonlinearity`` names torch accepts (``torch.nn.functional`` names).
NONLINEARITIES = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
)
#: The ``mode`` values, the fan that the Kaiming variance divides by.
MODES = ("fan_in", "fan_out")
_LINEAR = NONLINEARITIES[:8]  # gain 1: the identity, convolutions, sigmoid
_DEFAULT_NEGATIVE_SLOPE = 0.01  # nn.LeakyReLU's default


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    r"""The factor by which to scale a weight's standard deviation after it.

    =======================  =================================================
    nonlinearity             gain
    =======================  =================================================
    linear, conv*, sigmoid   :math:`1`
    tanh                     :math:`5/3`
    relu                     :math:`\sqrt{2}`
    leaky_relu               :math:`\sqrt{2 / (1 + \alpha^2)}`, slope
                             :math:`\alpha` = ``param`` (default 0.01)
    selu                     :math:`3/4`
    =======================  =================================================

    The ReLU gain follows from :math:`E[\mathrm{relu}(z)^2] =
    \operatorname{Var}(z)/2` for a symmetric zero-mean :math:`z`; a leaky ReLU
    keeps :math:`(1 + \alpha^2)/2` of it. Tanh's 5/3 and SELU's 3/4 are
    torch's empirical choices (for SELU's self-normalising fixed point use
    ``"linear"``, Klambauer et al., 2017). ``param`` is only read for
    ``"leaky_relu"``.
    """
    check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    if nonlinearity in _LINEAR:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "selu":
        return 3.0 / 4
    # leaky_relu
    slope = _DEFAULT_NEGATIVE_SLOPE if param is None else check_real("param", param)
    return math.sqrt(2.0 / (1 + slope**2))


def fan_in_and_fan_out(tensor: torch.Tensor) -> tuple[int, int]:
    r"""``(fan_in, fan_out)`` of a Linear or ConvNd weight.

    A Linear weight is ``(out_features, in_features)``; a ConvNd weight is
    ``(out_channels, in_channels / groups, k_1, ..., k_N)``. Each output sums
    over one input channel's whole kernel, so with the receptive field
    :math:`r = k_1 \cdots k_N` (1 for Linear):

    .. math::
        \text{fan\_in} = \text{size}(1) \cdot r, \qquad
        \text{fan\_out} = \text{size}(0) \cdot r.

    (For a transposed convolution, whose weight is ``(in, out, k...)``, the
    two are swapped, as in torch.) Fewer than two dimensions: ``ValueError``.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() < 2:
        raise ValueError(
            "tensor must have at least 2 dimensions to compute fan in and fan out,"
            f" got shape {tuple(tensor.shape)}"
        )
    receptive_field = math.prod(tensor.shape[2:])  # 1 for a Linear weight
    return tensor.size(1) * receptive_field, tensor.size(0) * receptive_field


def _fan(tensor: torch.Tensor, mode: str) -> int:
    fan_in, fan_out = fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def _gain(gain) -> float:
    return check_real("gain", gain, "[0, inf)")


def xavier_uniform_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Fill ``tensor`` in place from :math:`\mathcal{U}(-a, a)`, Glorot and
    Bengio (2010)'s "normalised initialisation":

    .. math::
        a = \text{gain} \cdot \sqrt{3} \cdot
        \sqrt{\frac{2}{\text{fan\_in} + \text{fan\_out}}}.

    A uniform variable on :math:`[-a, a]` has variance :math:`a^2/3`, so the
    weights have variance :math:`\text{gain}^2 \cdot 2/(n_{in} + n_{out})`,
    the average of what the forward (:math:`1/n_{in}`) and backward
    (:math:`1/n_{out}`) passes ask for. Returns ``tensor``.
    """
    gain = _gain(gain)
    fan_in, fan_out = _nonzero_fans(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    a = math.sqrt(3.0) * std
    with torch.no_grad():
        return tensor.uniform_(-a, a, generator=generator)


def xavier_normal_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Fill ``tensor`` in place from :math:`\mathcal{N}(0, \sigma^2)`, Glorot
    and Bengio (2010)'s variance with a normal distribution:

    .. math::
        \sigma = \text{gain} \cdot \sqrt{\frac{2}{\text{fan\_in} + \text{fan\_out}}}.

    Returns ``tensor``.
    """
    gain = _gain(gain)
    fan_in, fan_out = _nonzero_fans(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)


def _nonzero_fans(tensor: torch.Tensor) -> tuple[int, int]:
    fan_in, fan_out = fan_in_and_fan_out(tensor)
    if fan_in + fan_out == 0:
        raise ValueError(
            f"tensor must have fan_in + fan_out > 0, got shape {tuple(tensor.shape)}"
        )
    return fan_in, fan_out


def _kaiming_std(tensor, a, mode, nonlinearity) -> float | None:
    """He et al.'s standard deviation, or None for an empty tensor (a no-op)."""
    a = None if a is None else check_real("a", a)  # None: leaky_relu's 0.01, as torch
    check_choice("mode", mode, MODES)
    gain = calculate_gain(nonlinearity, a)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.numel() == 0:  # torch's rule: warn and leave it
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=3)
        return None
    return gain / math.sqrt(_fan(tensor, mode))


def kaiming_uniform_(
    tensor: torch.Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Fill ``tensor`` in place from :math:`\mathcal{U}(-b, b)`, He et al.
    (2015):

    .. math::
        b = \sqrt{3} \cdot \frac{\text{gain}}{\sqrt{\text{fan\_mode}}},

    so that :math:`\operatorname{Var}(w) = b^2/3 = \text{gain}^2/\text{fan\_mode}`,
    i.e. :math:`2/n` for ReLU. ``mode="fan_in"`` keeps the variance of the
    activations in the forward pass, ``"fan_out"`` that of the gradients in
    the backward pass. ``a`` is the negative slope, used by
    ``nonlinearity="leaky_relu"`` only (the default, whose slope 0 makes it a
    ReLU). ``nn.Linear`` and ``nn.ConvNd`` call this with ``a=math.sqrt(5)``,
    which gives :math:`b = 1/\sqrt{\text{fan\_in}}`. An empty tensor is left
    as it is, with torch's warning. Returns ``tensor``.
    """
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    if std is None:
        return tensor
    bound = math.sqrt(3.0) * std
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def kaiming_normal_(
    tensor: torch.Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Fill ``tensor`` in place from :math:`\mathcal{N}(0, \sigma^2)`, He et al.
    (2015):

    .. math::
        \sigma = \frac{\text{gain}}{\sqrt{\text{fan\_mode}}},

    :math:`\sqrt{2/n}` for ReLU with the defaults. Arguments as in
    :func:`kaiming_uniform_`. Returns ``tensor``.
    """
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    if std is None:
        return tensor
    with torch.no_grad():
        return tensor.normal_(0, std, generator=generator)


# ---------------------------------------------------------------------------
# Activation and gradient statistics

#: A tanh output counts as saturated beyond this level (``|tanh| > 0.99``).
SATURATION_LEVEL = 0.99


def _saturated(module: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the entries of ``h`` (a module's output) that saturate."""
    if isinstance(module, nn.Tanh):
        return h.abs() > SATURATION_LEVEL
    if isinstance(module, nn.Sigmoid):  # 2 sigmoid(z) - 1 = tanh(z / 2)
        return (2 * h - 1).abs() > SATURATION_LEVEL
    return h == 0  # ReLU: the unit is off for this input


_WATCHED = (nn.Tanh, nn.Sigmoid, nn.ReLU)


@dataclass(eq=False)
class LayerStatistics:
    r"""What :func:`activation_statistics` measured at one nonlinearity.

    ``activations`` is the module's output :math:`h` and ``gradients`` the
    gradient of the loss with respect to its input :math:`z` (the
    back-propagated gradient :math:`\partial L / \partial z` of Glorot and
    Bengio, 2010), both detached copies of shape ``(N, ...)``; ``gradients``
    and the ``grad_*`` numbers are None when no targets were given. Means and
    standard deviations are over all entries (samples and units; population
    std, as ``np.std``). The fractions are defined in
    :func:`activation_statistics`.
    """

    name: str
    kind: str
    activations: torch.Tensor
    mean: float
    std: float
    saturated: float
    dead: float
    gradients: torch.Tensor | None = None
    grad_mean: float | None = None
    grad_std: float | None = None
    grad_zero: float | None = None

    def summary(self) -> dict:
        """The numbers, without the tensors (one row of a table)."""
        keys = ("name", "kind", "mean", "std", "saturated", "dead")
        keys += ("grad_mean", "grad_std", "grad_zero")
        return {key: getattr(self, key) for key in keys}


def _record(name: str, module: nn.Module, h, g) -> LayerStatistics:
    mask = _saturated(module, h)  # (N, ...)
    stats = LayerStatistics(
        name=name,
        kind=type(module).__name__,
        activations=h,
        mean=h.mean().item(),
        std=h.std(correction=0).item(),
        saturated=mask.double().mean().item(),
        dead=mask.flatten(1).all(dim=0).double().mean().item(),
    )
    if g is not None:
        stats.gradients = g
        stats.grad_mean = g.mean().item()
        stats.grad_std = g.std(correction=0).item()
        stats.grad_zero = (g == 0).double().mean().item()
    return stats


def _watched_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, _WATCHED)]
    require(bool(found), "model", "a model with nn.Tanh, nn.Sigmoid or nn.ReLU", model)
    for name, module in found:
        inplace = getattr(module, "inplace", False)
        require(not inplace, f"module {name!r}", "not in-place", module)
    return found


def activation_statistics(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor | None = None,
    loss_fn=F.cross_entropy,
) -> list[LayerStatistics]:
    r"""Per-layer statistics of activations and gradients for one batch.

    Every ``nn.Tanh``, ``nn.Sigmoid`` and ``nn.ReLU`` in ``model`` (in the
    order of ``model.named_modules()``) gets a forward hook that keeps its
    input :math:`z` and output :math:`h`; ``model(X)`` runs once, and the
    hooks are removed before returning, even after an error. With targets
    ``y``, the gradients :math:`\partial L/\partial z` of ``L = loss_fn(model(X),
    y)`` are computed with ``torch.autograd.grad``, so no ``.grad`` of the
    model is touched: the model, its mode (train/eval), parameters and
    gradients are exactly as before.

    Definitions (:math:`s` = ``SATURATION_LEVEL`` = 0.99):

    - ``saturated``: fraction of entries of :math:`h` on a flat part of the
      nonlinearity: :math:`|h| > s` for tanh (where its slope :math:`1 - h^2`
      is below 0.02), :math:`|2h - 1| > s` for sigmoid (the same rule, as
      :math:`2\sigma(z) - 1 = \tanh(z/2)`), :math:`h = 0` for ReLU (slope 0).
    - ``dead``: fraction of units (entries of one sample's output) that are
      saturated for every sample of ``X``; for ReLU these are dead units,
      which pass no gradient for any of these inputs.
    - ``grad_zero``: fraction of entries of :math:`\partial L/\partial z` that
      are exactly 0, gradient that never reaches the weights below. ReLU
      zeroes it wherever :math:`h = 0`; a tanh does so only where its output
      rounds to :math:`\pm 1` in the tensor's dtype (:math:`|z| > 9` or so in
      float32), so ``grad_zero`` depends on the precision.

    Returns one :class:`LayerStatistics` per nonlinearity that ran, first
    layer first; ``gradients`` is None where :math:`z` is not part of the
    loss's graph. A model without these modules, with one that works in place
    (``inplace=True``) or one called twice in a forward pass is a
    ``ValueError``.
    """
    watched = _watched_modules(model)
    if y is not None:
        check_callable("loss_fn", loss_fn)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook_for(name):
        def hook(module, inputs, output):
            once = name not in seen
            require(once, f"module {name!r}", "called once per forward pass", module)
            seen[name] = (inputs[0], output)  # z, h: (N, ...)

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in watched]
    try:
        with torch.enable_grad():  # a graph even inside torch.no_grad()
            output = model(X)
    finally:
        for handle in handles:
            handle.remove()
    with torch.enable_grad():
        grads = _input_gradients(seen, output, y, loss_fn) if y is not None else {}
    return [
        _record(n, m, seen[n][1].detach().clone(), grads.get(n))
        for n, m in watched
        if n in seen
    ]


def _input_gradients(seen, output, y, loss_fn) -> dict[str, torch.Tensor]:
    """dL/dz for every recorded input z that is part of the graph."""
    names = [name for name, (z, _) in seen.items() if z.requires_grad]
    if not names:
        return {}
    loss = loss_fn(output, y)
    inputs = [seen[name][0] for name in names]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    found = zip(names, grads, strict=True)
    return {name: g.detach() for name, g in found if g is not None}
