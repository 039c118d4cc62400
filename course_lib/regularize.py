r"""Regularisers: dropout, label smoothing, penalties, noise, stochastic depth.

Each function follows its PyTorch counterpart, where there is one, and takes
an explicit ``generator=``. With ``generator=None`` it draws from the global
RNG with the call torch makes, so after the same ``torch.manual_seed`` the
results are bit-equal (on the CPU; on CUDA ``F.dropout`` has its own kernel).

=====================================  =========================================
here                                   equal to
=====================================  =========================================
:func:`dropout`, :class:`Dropout`      ``F.dropout``, ``nn.Dropout`` (bit-equal)
:func:`label_smoothing_cross_entropy`  ``F.cross_entropy(label_smoothing=)``
:func:`stochastic_depth`               ``torchvision.ops.stochastic_depth``
=====================================  =========================================

:func:`vanilla_dropout`, the lectures' smoothing (``spread="others"``), the
penalties and the two kinds of noise have no PyTorch counterpart (SGD's
``weight_decay`` is the gradient of :func:`l2_penalty`).

Probabilities are **drop** probabilities ``p``, as in torch. Srivastava et al.
(2014) and Huang et al. (2016) write :math:`p` for the probability of
*keeping* a unit or a block; their :math:`p` is ``1 - p`` here.

Penalties and weight noise take ``include``: ``"weights"`` (the default)
means parameters with two or more dimensions (weight matrices, kernels,
embeddings), leaving out biases and normalisation scales and shifts, which
set offsets and scales rather than how much an input counts (nanoGPT's rule
for what to decay); ``"all"`` means every one, as ``SGD(weight_decay=)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ._args import (
    check_bool,
    check_choice,
    check_generator,
    check_int,
    check_real,
    require,
)

__all__ = [
    "dropout", "vanilla_dropout", "Dropout", "VanillaDropout",
    "smoothed_targets", "label_smoothing_cross_entropy", "LabelSmoothingCrossEntropy",
    "penalized_parameters", "l1_penalty", "l2_penalty", "elastic_net_penalty",
    "gaussian_noise", "GaussianNoise", "weight_noise",
    "stochastic_depth", "StochasticDepth", "stochastic_depth_rates",
]  # fmt: skip

_SPREADS = ("all", "others")
_REDUCTIONS = ("mean", "none", "sum")
_INCLUDES = ("weights", "all")
_MODES = ("batch", "row")


def _scaled(x: torch.Tensor, factor, inplace: bool) -> torch.Tensor:
    """``x * factor``, written into ``x`` itself when ``inplace``."""
    return x.mul_(factor) if inplace else x * factor


def _drop(x, p, training, inplace, generator, *, inverted: bool) -> torch.Tensor:
    """Dropout in either form, after checking its arguments."""
    p, training = check_real("p", p, "[0, 1]"), check_bool("training", training)
    inplace, generator = check_bool("inplace", inplace), check_generator(generator)
    if p == 0 or x.numel() == 0 or (inverted and not training):
        return x
    if not training:
        return _scaled(x, 1 - p, inplace)
    if p == 1:
        return _scaled(x, torch.zeros((), dtype=x.dtype, device=x.device), inplace)
    # the call F.dropout makes on the CPU, so the same RNG state gives the same mask
    keep = torch.empty_like(x).bernoulli_(1 - p, generator=generator)  # like x
    return _scaled(x, keep.div_(1 - p) if inverted else keep, inplace)


def dropout(x, p=0.5, training=True, inplace=False, *, generator=None):
    r"""Inverted dropout (Srivastava et al. 2014), as ``F.dropout``.

    In training each entry is kept with probability :math:`1 - p`, and the
    kept ones are divided by :math:`1 - p`:

    .. math::
        y = \frac{m \odot x}{1 - p}, \quad m_i \sim \mathrm{Bernoulli}(1 - p),
        \qquad \mathbb{E}_m[y] = x,

    so the expected activation is the input itself and at test time
    (``training=False``) the layer is the identity: nothing to rescale when
    the model is deployed. ``p = 1`` gives zeros. Like torch, ``x`` itself is
    returned when nothing is dropped (eval, ``p = 0``, an empty tensor).
    """
    return _drop(x, p, training, inplace, generator, inverted=True)


def vanilla_dropout(x, p=0.5, training=True, inplace=False, *, generator=None):
    r"""Dropout as first published (Srivastava et al. 2014): scaled at test time.

    .. math::
        \text{training: } y = m \odot x, \quad m_i \sim \mathrm{Bernoulli}(1 - p);
        \qquad \text{test: } y = (1 - p)\, x = \mathbb{E}_m[m \odot x].

    Both forms make the test-time output the expectation of the training
    output; inverted dropout (:func:`dropout`) moves the factor into
    training. Scaling a layer's outputs by :math:`1 - p` is scaling the
    weights that read them, the paper's "weight scaling" rule; it equals the
    average over all masks only for a linear map (for a network it is an
    approximation). For one RNG state the mask is the one :func:`dropout` draws.
    """
    return _drop(x, p, training, inplace, generator, inverted=False)


class Dropout(nn.Module):
    """Inverted dropout as a layer, a drop-in for ``nn.Dropout(p=0.5, inplace=False)``.

    Follows ``model.train()`` / ``model.eval()``; ``generator``, if given,
    supplies every mask. See :func:`dropout`.
    """

    def __init__(self, p=0.5, inplace=False, *, generator=None) -> None:
        super().__init__()
        self.p = check_real("p", p, "[0, 1]")
        self.inplace = check_bool("inplace", inplace)
        self.generator = check_generator(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, training, generator = self.p, self.training, self.generator
        return dropout(x, p, training, self.inplace, generator=generator)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class VanillaDropout(Dropout):
    """Vanilla dropout as a layer: masks in training, ``(1 - p) x`` in eval.

    See :func:`vanilla_dropout`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, training, generator = self.p, self.training, self.generator
        return vanilla_dropout(x, p, training, self.inplace, generator=generator)


def _check_target(target, num_classes: int, shape: tuple | None = None) -> None:
    if not isinstance(target, torch.Tensor) or target.dtype != torch.int64:
        accepted = "a tensor of class indices (int64)"
        raise TypeError(f"target must be {accepted}, got {target!r}")
    if shape is not None:
        want, got = tuple(shape), tuple(target.shape)
        require(want == got, "target", f"a tensor of shape {want}", got)
    ok = target.numel() == 0 or (target.min() >= 0 and target.max() < num_classes)
    require(bool(ok), "target", f"class indices in [0, {num_classes - 1}]", target)


def _distribution(target, num_classes, smoothing, spread, dtype) -> torch.Tensor:
    one_hot = F.one_hot(target, num_classes).movedim(-1, 1).to(dtype)  # (N, C, *)
    if spread == "all":
        return (1 - smoothing) * one_hot + smoothing / num_classes
    return (1 - smoothing) * one_hot + smoothing / (num_classes - 1) * (1 - one_hot)


def smoothed_targets(target, num_classes, smoothing=0.1, spread="all", *, dtype=None):
    r"""The smoothed target distribution :math:`q`, shape ``(N, C, *)``.

    With one-hot targets :math:`e_y` over :math:`C` classes and smoothing
    :math:`\varepsilon \in [0, 1)`:

    .. math::
        \text{spread="all"}: \; q = (1 - \varepsilon)\, e_y + \frac{\varepsilon}{C}
        \qquad
        \text{spread="others"}: \; q = (1 - \varepsilon)\, e_y +
        \frac{\varepsilon}{C - 1} (1 - e_y)

    ``"all"`` is Szegedy et al. (2016) and PyTorch's ``label_smoothing=``: the
    true class keeps :math:`1 - \varepsilon + \varepsilon / C`. ``"others"``
    (the lectures' form) spreads :math:`\varepsilon` over the :math:`C - 1`
    wrong classes only, so the true class keeps exactly :math:`1 - \varepsilon`.
    ``target`` holds class indices (int64), shape ``(N, *)``.
    """
    smoothing = check_real("smoothing", smoothing, "[0, 1)")
    spread = check_choice("spread", spread, _SPREADS)
    num_classes = check_int("num_classes", num_classes, low=2)
    _check_target(target, num_classes)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return _distribution(target, num_classes, smoothing, spread, dtype)


def _class_weights(weight, logits) -> torch.Tensor | None:
    """``weight`` shaped to broadcast along the class dimension, ``(1, C, 1, ...)``."""
    if weight is None:
        return None
    num_classes = logits.shape[1]
    ok = isinstance(weight, torch.Tensor) and weight.shape == (num_classes,)
    require(ok, "weight", f"None or a tensor of shape ({num_classes},)", weight)
    return weight.view((1, num_classes) + (1,) * (logits.ndim - 2))


def label_smoothing_cross_entropy(
    logits, target, smoothing=0.1, *, spread="all", weight=None, reduction="mean"
):
    r"""Cross-entropy against smoothed targets (Szegedy et al. 2016).

    With :math:`q` from :func:`smoothed_targets`, class weights :math:`w`
    (all 1 by default) and :math:`\log p = \operatorname{log\_softmax}(z)`:

    .. math::
        \ell_i = -\sum_{c=1}^{C} w_c\, q_{ic} \log p_{ic}, \qquad
        \text{mean} = \frac{\sum_i \ell_i}{\sum_i w_{y_i}}

    ``"sum"`` and ``"none"`` give :math:`\sum_i \ell_i` and the
    :math:`\ell_i`. With ``spread="all"`` it equals ``F.cross_entropy(...,
    label_smoothing=smoothing)`` with the same ``weight`` and ``reduction``.
    With :math:`\varepsilon > 0` (and no weights) the minimum is at finite
    logit gaps, :math:`\log(q_y / q_{c \ne y})`, not ever larger ones. Shapes: logits
    ``(N, C, *)``, target ``(N, *)`` (int64); no ``ignore_index``.
    """
    smoothing = check_real("smoothing", smoothing, "[0, 1)")
    spread = check_choice("spread", spread, _SPREADS)
    reduction = check_choice("reduction", reduction, _REDUCTIONS)
    require(logits.ndim >= 2, "logits", "a tensor of shape (N, C, *)", logits.shape)
    num_classes = check_int("logits.shape[1]", logits.shape[1], low=2)
    _check_target(target, num_classes, logits.shape[:1] + logits.shape[2:])
    q = _distribution(target, num_classes, smoothing, spread, logits.dtype)  # (N, C, *)
    w = _class_weights(weight, logits)
    log_probs = F.log_softmax(logits, dim=1)  # (N, C, *)
    per_class = -q * log_probs if w is None else -q * w * log_probs
    losses = per_class.sum(dim=1)  # (N, *)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    total_weight = losses.numel() if weight is None else weight[target].sum()
    return losses.sum() / total_weight


class LabelSmoothingCrossEntropy(nn.Module):
    """:func:`label_smoothing_cross_entropy` as a loss, called ``(logits, target)``.

    With ``spread="all"`` it computes ``nn.CrossEntropyLoss(weight=weight,
    reduction=reduction, label_smoothing=smoothing)``; ``weight`` is a buffer.
    """

    def __init__(self, smoothing=0.1, *, spread="all", weight=None, reduction="mean"):
        super().__init__()
        self.smoothing = check_real("smoothing", smoothing, "[0, 1)")
        self.spread = check_choice("spread", spread, _SPREADS)
        self.reduction = check_choice("reduction", reduction, _REDUCTIONS)
        ok = weight is None or isinstance(weight, torch.Tensor) and weight.ndim == 1
        require(ok, "weight", "None or a 1-D tensor of class weights", weight)
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return label_smoothing_cross_entropy(
            logits, target, self.smoothing, spread=self.spread,
            weight=self.weight, reduction=self.reduction,
        )  # fmt: skip


def penalized_parameters(model, include="weights") -> list[torch.Tensor]:
    """The parameters a penalty sums over, from a module or an iterable of tensors.

    ``include="weights"`` keeps those with ``ndim >= 2`` (no biases, no
    normalisation scales and shifts); ``"all"`` keeps every one. Raises
    ``ValueError`` when nothing is left, since a penalty of 0 would be silent.
    """
    include = check_choice("include", include, _INCLUDES)
    params = list(model.parameters() if isinstance(model, nn.Module) else model)
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"model must be an nn.Module or tensors, got {p!r} in it")
    chosen = [p for p in params if include == "all" or p.ndim >= 2]
    if not chosen:
        kind = "a parameter" if include == "all" else "a parameter with ndim >= 2"
        raise ValueError(f"model must have {kind} for include={include!r}, got none")
    return chosen


def l1_penalty(model, include="weights") -> torch.Tensor:
    r"""The L1 norm :math:`\Omega_1(\theta) = \sum_j |\theta_j|`, differentiable.

    Add ``lam * l1_penalty(model)`` to the loss. Its gradient is
    :math:`\lambda\, \operatorname{sign}(\theta)` (0 at 0, torch's choice of
    subgradient): a pull of constant size towards 0 that, with a proximal or
    clipped step, ends at exact zeros (sparse weights); plain SGD only makes
    weights hover near zero.
    """
    return sum(p.abs().sum() for p in penalized_parameters(model, include))


def l2_penalty(model, include="weights") -> torch.Tensor:
    r"""Half the squared L2 norm, :math:`\Omega_2(\theta) = \tfrac12 \sum_j \theta_j^2`.

    The :math:`\tfrac12` makes the gradient :math:`\lambda \theta`, so
    ``loss + lam * l2_penalty(model, include="all")`` under plain SGD takes
    the same steps as ``SGD(weight_decay=lam)`` (Adam's do not coincide:
    that is AdamW's point). Weights shrink in proportion to their size, so
    they end small and spread out rather than zero.
    """
    return sum(p.square().sum() for p in penalized_parameters(model, include)) / 2


def elastic_net_penalty(model, l1_ratio=0.5, include="weights") -> torch.Tensor:
    r"""The elastic-net penalty (Zou & Hastie 2005), a mix of L1 and L2.

    .. math::
        \Omega(\theta) = r \sum_j |\theta_j| + \frac{1 - r}{2} \sum_j \theta_j^2,
        \qquad r = \text{l1\_ratio} \in [0, 1],

    scikit-learn's ``ElasticNet`` penalty divided by its ``alpha``; Zou and
    Hastie's :math:`\lambda_1 \|\theta\|_1 + \lambda_2 \|\theta\|_2^2` with
    :math:`\lambda_1 = \lambda r`, :math:`\lambda_2 = \lambda (1 - r) / 2`.
    The L1 part selects weights, the L2 part keeps correlated inputs
    together instead of picking one of them at random.
    """
    r = check_real("l1_ratio", l1_ratio, "[0, 1]")
    params = penalized_parameters(model, include)
    return r * l1_penalty(params, "all") + (1 - r) * l2_penalty(params, "all")


def _normal_like(x: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def gaussian_noise(x, std, training=True, *, generator=None):
    r"""Add Gaussian noise in training: :math:`\tilde x = x + \sigma \epsilon`,
    :math:`\epsilon \sim \mathcal N(0, I)`; the identity when not training.

    Bishop (1995): for a linear model :math:`\hat y = w^\top x + b` under
    squared error the noise averages out into a ridge penalty, exactly,

    .. math::
        \mathbb{E}_\epsilon\bigl[(y - w^\top (x + \sigma\epsilon) - b)^2\bigr]
        = (y - w^\top x - b)^2 + \sigma^2 \|w\|^2,

    and for a smooth network to first order in :math:`\sigma^2`.
    """
    std = check_real("std", std, "[0, inf)")
    training, generator = check_bool("training", training), check_generator(generator)
    if not training or std == 0:
        return x
    return x + std * _normal_like(x, generator)


class GaussianNoise(nn.Module):
    """:func:`gaussian_noise` as a layer: noise in ``train()``, none in ``eval()``."""

    def __init__(self, std=0.1, *, generator=None) -> None:
        super().__init__()
        self.std = check_real("std", std, "[0, inf)")
        self.generator = check_generator(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_noise(x, self.std, self.training, generator=self.generator)

    def extra_repr(self) -> str:
        return f"std={self.std}"


@contextlib.contextmanager
def weight_noise(model, std, *, include="weights", generator=None) -> Iterator[None]:
    r"""Perturb the weights, :math:`\theta \leftarrow \theta + \sigma \epsilon`,
    inside a ``with`` block and restore them, bit for bit, when it ends.

    ::

        with weight_noise(model, 0.01, generator=g):
            loss_fn(model(X), y).backward()  # gradient at the noisy weights
        optimizer.step()                     # applied to the clean weights

    Run forward *and* backward inside the block: autograd refuses a backward
    pass through weights changed in place after the forward pass. The weights
    come back from a saved copy (subtracting the noise would round), even if
    the block raises.
    """
    std = check_real("std", std, "[0, inf)")
    generator = check_generator(generator)
    params = penalized_parameters(model, include)
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                p.add_(_normal_like(p, generator), alpha=std)
        yield
    finally:
        with torch.no_grad():
            for p, clean in zip(params, saved, strict=True):
                p.copy_(clean)


def stochastic_depth(x, p, mode, training=True, *, generator=None):
    r"""Stochastic depth (Huang et al. 2016), as ``torchvision.ops.stochastic_depth``.

    Applied to a residual branch, ``x + stochastic_depth(f(x), p, mode)``,
    it removes the branch with probability :math:`p`, for each sample
    (``"row"``, as in torchvision's models) or for the whole batch
    (``"batch"``, as in the paper), and rescales survivors as inverted
    dropout does:

    .. math::
        y = \frac{b}{1 - p}\, x, \quad b \sim \mathrm{Bernoulli}(1 - p),
        \qquad \mathbb{E}_b[y] = x.

    The paper trains with :math:`b\,x` and scales by :math:`1 - p` at test
    time, as vanilla dropout does. Bit-equal to torchvision for one RNG state.
    """
    p, training = check_real("p", p, "[0, 1]"), check_bool("training", training)
    mode, generator = check_choice("mode", mode, _MODES), check_generator(generator)
    if not training or p == 0:
        return x
    require(x.ndim >= 1, "x", "a tensor with a batch dimension", x.shape)
    size = (x.shape[0],) + (1,) * (x.ndim - 1) if mode == "row" else (1,) * x.ndim
    keep = torch.empty(size, dtype=x.dtype, device=x.device)  # (N, 1, ...) or (1, ...)
    keep.bernoulli_(1 - p, generator=generator)
    if p < 1:
        keep.div_(1 - p)
    return x * keep


class StochasticDepth(nn.Module):
    """:func:`stochastic_depth` as a layer, like ``torchvision.ops.StochasticDepth``."""

    def __init__(self, p, mode, *, generator=None) -> None:
        super().__init__()
        self.p = check_real("p", p, "[0, 1]")
        self.mode = check_choice("mode", mode, _MODES)
        self.generator = check_generator(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, mode, generator = self.p, self.mode, self.generator
        return stochastic_depth(x, p, mode, self.training, generator=generator)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


def stochastic_depth_rates(num_blocks, final_p=0.5) -> tuple[float, ...]:
    r"""Huang et al.'s linear decay: block :math:`l` of :math:`L` is dropped with
    probability :math:`p_l = \tfrac{l}{L}\, p_L`, so early blocks, whose
    features every later block reads, are nearly always kept. The paper's
    :math:`p_L` (as a drop probability) is 0.5.
    """
    num_blocks = check_int("num_blocks", num_blocks, low=1)
    final_p = check_real("final_p", final_p, "[0, 1]")
    return tuple(final_p * block / num_blocks for block in range(1, num_blocks + 1))
