r"""Normalisation layers from scratch, each a drop-in for its ``torch.nn`` namesake.

Every layer here standardises its input over some axes and then, optionally,
rescales it with a learned per-feature gain :math:`\gamma` (``weight``) and
shift :math:`\beta` (``bias``):

.. math::

    y = \gamma\,\frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta,
    \qquad \mu = \frac{1}{m}\sum_i x_i,\quad
    \sigma^2 = \frac{1}{m}\sum_i (x_i - \mu)^2 .

The layers differ only in which elements of an :math:`(N, C, H, W)` tensor
share one :math:`\mu, \sigma^2`:

==============  ====================================  ============================
layer           averages over                         one statistic per
==============  ====================================  ============================
BatchNorm       :math:`N, H, W`                       channel
LayerNorm       the trailing ``normalized_shape``     sample
InstanceNorm    :math:`H, W`                          sample and channel
GroupNorm       :math:`H, W` and a group's channels   sample and group of channels
==============  ====================================  ============================

Weight norm instead reparametrises a weight, :math:`w = g\,v/\lVert v\rVert`.

Class names, constructor arguments (in torch's order, with torch's defaults),
parameter and buffer names are torch's, so a ``state_dict`` loads from one into
the other. Everything is computed with explicit means and variances, and batch
norm's backward pass is written by hand (:class:`BatchNormFunction`).
Validation follows course_lib's rules (``course_lib._args``): a bad argument is
a ``ValueError`` naming it, where torch sometimes raises a ``RuntimeError``
(a wrong ``normalized_shape`` or channel count) or accepts it (``momentum=2``).
Errors torch raises as ``ValueError`` (wrong input dimension, one value per
channel when training) are raised with torch's message.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

from ._args import check_bool, check_int, check_int_sequence, check_real, require

__all__ = [
    "BatchNormFunction", "batch_norm", "BatchNorm1d", "BatchNorm2d",
    "layer_norm", "LayerNorm", "group_norm", "GroupNorm",
    "instance_norm", "InstanceNorm1d", "InstanceNorm2d", "weight_norm",
]  # fmt: skip


def _stats(x: torch.Tensor, dims: tuple[int, ...]):
    """Mean and biased variance of ``x`` over ``dims``, kept for broadcasting."""
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    return mean, var


def _not_channel(x: torch.Tensor) -> tuple[int, ...]:
    """Every dimension of ``x`` but the channel dimension 1: (0, 2, 3, ...)."""
    return (0, *range(2, x.dim()))


def _per_channel(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (C,) vector shaped (1, C, 1, ...) to broadcast against ``x``."""
    return t.reshape(1, -1, *([1] * (x.dim() - 2)))


def _affine(y, weight, bias):
    """``y * weight + bias`` per channel, each factor only if given."""
    if weight is not None:
        y = y * _per_channel(weight, y)
    return y if bias is None else y + _per_channel(bias, y)


def _standardise(x, mean, var, eps):
    return (x - mean) / torch.sqrt(var + eps)


def _check_channels(input: torch.Tensor, **per_channel) -> None:
    """Input at least 2-D, and each given per-channel tensor with C entries."""
    require(input.dim() >= 2, "input", "a tensor of shape (N, C, *)", input.shape)
    for name, t in per_channel.items():
        ok = t is None or t.numel() == input.shape[1]
        require(ok, name, f"a tensor of {input.shape[1]} entries (C)", t)


def _verify_batch_size(size) -> None:
    """torch's check: more than one value per channel, else its ValueError."""
    if math.prod([size[0], *size[2:]]) == 1:
        message = "Expected more than 1 value per channel when training"
        raise ValueError(f"{message}, got input size {size}")


class BatchNormFunction(torch.autograd.Function):
    r"""Training-mode batch norm with its backward pass written by hand.

    ``BatchNormFunction.apply(x, weight, bias, eps)``; ``weight`` and ``bias``
    are (C,) tensors or None. Statistics are taken over every dimension but 1,
    so each channel :math:`c` has :math:`m = N \cdot H \cdot W` values
    (:math:`m = N` for an (N, C) input). Forward (Ioffe & Szegedy 2015):

    .. math::

        \mu = \tfrac1m \textstyle\sum_i x_i, \quad
        \sigma^2 = \tfrac1m \textstyle\sum_i (x_i - \mu)^2, \quad
        s = (\sigma^2 + \epsilon)^{-1/2}, \quad
        \hat x_i = (x_i - \mu)\,s, \quad
        y_i = \gamma \hat x_i + \beta .

    Backward, given :math:`\partial L/\partial y_i`: the parameters are easy,
    :math:`\partial L/\partial\gamma = \sum_i \partial L/\partial y_i\,\hat x_i`
    and :math:`\partial L/\partial\beta = \sum_i \partial L/\partial y_i`.
    With :math:`d\hat x_i = \gamma\,\partial L/\partial y_i`, each :math:`x_i`
    reaches the loss along three paths, directly through :math:`\hat x_i`,
    through :math:`\mu` and through :math:`\sigma^2`:

    .. math::

        \frac{\partial L}{\partial x_i} = d\hat x_i\, s
        + \frac{\partial L}{\partial \sigma^2}\,\frac{2 (x_i - \mu)}{m}
        + \frac{\partial L}{\partial \mu}\,\frac1m,

    .. math::

        \frac{\partial L}{\partial \sigma^2}
        = -\tfrac12 s^3 \textstyle\sum_j d\hat x_j (x_j - \mu), \qquad
        \frac{\partial L}{\partial \mu} = -s \textstyle\sum_j d\hat x_j

    (the variance's own dependence on :math:`\mu` contributes
    :math:`\frac{\partial L}{\partial \sigma^2}\cdot\frac{-2}{m}\sum_j (x_j-\mu)
    = 0`). Writing :math:`x_j - \mu = \hat x_j / s`, the three terms collect into

    .. math::

        \frac{\partial L}{\partial x_i} = \frac{s}{m}\Big(m\, d\hat x_i
        - \textstyle\sum_j d\hat x_j - \hat x_i \sum_j d\hat x_j\, \hat x_j\Big):

    the gradient with its mean and its component along :math:`\hat x` removed,
    the two directions in which moving :math:`x` leaves :math:`\hat x` as it is
    (a shift exactly; a scaling about the mean, up to :math:`\epsilon`).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mean, var = _stats(x, _not_channel(x))  # (1, C, 1, ...) each
        inv_std = 1.0 / torch.sqrt(var + eps)
        xhat = (x - mean) * inv_std  # like x
        ctx.save_for_backward(xhat, inv_std, weight)
        return _affine(xhat, weight, bias)

    @staticmethod
    @once_differentiable  # its saved xhat is cut from x: no second derivative
    def backward(ctx, grad_y):
        xhat, inv_std, weight = ctx.saved_tensors
        dims = _not_channel(grad_y)
        m = grad_y.numel() // grad_y.shape[1]
        dxhat = grad_y if weight is None else grad_y * _per_channel(weight, grad_y)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            sum_dxhat = dxhat.sum(dim=dims, keepdim=True)  # (1, C, 1, ...)
            sum_dxhat_xhat = (dxhat * xhat).sum(dim=dims, keepdim=True)
            grad_x = inv_std / m * (m * dxhat - sum_dxhat - xhat * sum_dxhat_xhat)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = (grad_y * xhat).sum(dim=dims)  # (C,)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(dim=dims)  # (C,)
        return grad_x, grad_weight, grad_bias, None


@torch.no_grad()
def _update_running_stats(x, running_mean, running_var, momentum) -> None:
    """Exponential averages of the batch mean and UNBIASED batch variance."""
    if x.numel() == 0:  # as torch: an empty batch leaves the statistics alone
        return
    dims = _not_channel(x)
    m = x.numel() // x.shape[1]
    mean = x.mean(dim=dims, keepdim=True)
    if running_mean is not None:
        new = momentum * mean.flatten() + (1 - momentum) * running_mean
        running_mean.copy_(new)
    if running_var is not None:
        unbiased = ((x - mean) ** 2).sum(dim=dims) / (m - 1)  # (C,)
        running_var.copy_(momentum * unbiased + (1 - momentum) * running_var)


def batch_norm(
    input, running_mean, running_var, weight=None, bias=None,
    training=False, momentum=0.1, eps=1e-5,
):  # fmt: skip
    r"""Batch norm of an (N, C) or (N, C, \*) tensor, as ``F.batch_norm``.

    Training: normalise with the batch mean and *biased* variance (through
    :class:`BatchNormFunction`) and, for each running buffer given (not
    None), update it in place,
    :math:`r \leftarrow (1 - \text{momentum})\,r + \text{momentum}\cdot b`,
    with the batch mean and the *unbiased* variance
    :math:`\frac{1}{m-1}\sum_i (x_i-\mu)^2`. Evaluation: normalise with the
    running buffers, which are left unchanged.
    """
    training = check_bool("training", training)
    momentum = check_real("momentum", momentum, "[0, 1]")
    eps = check_real("eps", eps, "(0, inf)" if training else "[0, inf)")
    _check_channels(
        input, running_mean=running_mean, running_var=running_var,
        weight=weight, bias=bias,
    )  # fmt: skip
    if training:
        _verify_batch_size(input.size())
        _update_running_stats(input, running_mean, running_var, momentum)
        return BatchNormFunction.apply(input, weight, bias, eps)
    for name, buffer in (("running_mean", running_mean), ("running_var", running_var)):
        require(buffer is not None, name, "a tensor when training=False", buffer)
    mean, var = _per_channel(running_mean, input), _per_channel(running_var, input)
    return _affine(_standardise(input, mean, var, eps), weight, bias)


def _register_affine(module, shape, weight, bias, device, dtype) -> None:
    """Parameters ``weight`` (ones) and ``bias`` (zeros), or None if not wanted."""
    for name, wanted in (("weight", weight), ("bias", weight and bias)):
        p = torch.empty(shape, device=device, dtype=dtype) if wanted else None
        module.register_parameter(name, None if p is None else nn.Parameter(p))
    _reset_affine(module)


@torch.no_grad()
def _reset_affine(module) -> None:
    if module.weight is not None:
        module.weight.fill_(1.0)
    if module.bias is not None:
        module.bias.zero_()


class _NormBase(nn.Module):
    """Arguments, parameters and buffers shared by batch and instance norm."""

    _version = 2  # torch's: the version that added num_batches_tracked
    # Constructor: torch's arguments and (batch norm's) defaults, all checked

    def __init__(
        self, num_features, eps=1e-5, momentum=0.1, affine=True,
        track_running_stats=True, device=None, dtype=None, *, bias=True,
    ):  # fmt: skip
        super().__init__()
        self.num_features = check_int("num_features", num_features, low=1)
        self.eps = check_real("eps", eps, "[0, inf)")
        if momentum is not None:
            momentum = check_real("momentum", momentum, "[0, 1]")
        self.momentum = momentum
        self.affine = check_bool("affine", affine)
        track = check_bool("track_running_stats", track_running_stats)
        self.track_running_stats = track
        shape, bias = (self.num_features,), check_bool("bias", bias)
        _register_affine(self, shape, self.affine, bias, device, dtype)
        like = {"device": device, "dtype": dtype}
        for name, make in (("running_mean", torch.zeros), ("running_var", torch.ones)):
            self.register_buffer(name, make(shape, **like) if track else None)
        count = torch.tensor(0, dtype=torch.long, device=device) if track else None
        self.register_buffer("num_batches_tracked", count)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches counted."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, and weight to 1 and bias to 0."""
        self.reset_running_stats()
        _reset_affine(self)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _check_input_dim(self, input) -> None:
        dims = self._input_dims
        if input.dim() not in dims:
            wanted = " or ".join(f"{d}D" for d in dims)
            raise ValueError(f"expected {wanted} input (got {input.dim()}D input)")


class _BatchNorm(_NormBase):
    def _average_factor(self) -> float:
        """Counts a training batch; the momentum, or 1/count if it is None."""
        if not (self.training and self.track_running_stats):
            return 0.0 if self.momentum is None else self.momentum
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative average of all batches so far
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        factor = self._average_factor()  # counts even a batch that then fails
        no_buffers = self.running_mean is None and self.running_var is None
        use_batch_stats = self.training or no_buffers
        pass_buffers = not self.training or self.track_running_stats
        return batch_norm(
            input,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight, self.bias, use_batch_stats, factor, self.eps,
        )  # fmt: skip


class BatchNorm1d(_BatchNorm):
    r"""Batch norm over an (N, C) or (N, C, L) input (Ioffe & Szegedy 2015).

    Training: normalise each channel with the batch's mean and biased
    variance; with ``track_running_stats`` also count the batch in
    ``num_batches_tracked`` and update ``running_mean`` and ``running_var``
    (with the unbiased variance) by
    :math:`r \leftarrow (1-\text{momentum})\,r + \text{momentum}\cdot b`,
    or, with ``momentum=None``, by the cumulative average
    (momentum :math:`1/t` at the :math:`t`-th batch). Evaluation: normalise
    with the running statistics, or with the batch's if there are none.
    """

    _input_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    r"""Batch norm over an (N, C, H, W) input: see :class:`BatchNorm1d`."""

    _input_dims = (4,)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    r"""Layer norm over the trailing ``normalized_shape`` dims, as ``F.layer_norm``.

    Each sample is standardised with the mean and biased variance of its own
    :math:`H = \prod` ``normalized_shape`` values (Ba et al. 2016), so the
    result does not depend on the batch and training equals evaluation.
    ``weight`` and ``bias`` are elementwise, of shape ``normalized_shape``.
    """
    shape = _shape(normalized_shape)
    eps = check_real("eps", eps, "[0, inf)")
    ok = tuple(input.shape[max(input.dim() - len(shape), 0) :]) == shape
    require(ok, "input", f"a tensor of shape (*, {', '.join(map(str, shape))})",
            tuple(input.shape))  # fmt: skip
    mean, var = _stats(input, tuple(range(-len(shape), 0)))  # (*, 1, ..., 1)
    y = _standardise(input, mean, var, eps)
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def _shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (normalized_shape,)
    return check_int_sequence(
        "normalized_shape", normalized_shape, low=1, nonempty=True
    )


class LayerNorm(nn.Module):
    """Layer norm (Ba et al. 2016): see :func:`layer_norm`.

    ``normalized_shape`` is an int or a sequence of ints; with
    ``elementwise_affine``, ``weight`` (ones) and, with ``bias``, ``bias``
    (zeros) have that shape.
    """

    def __init__(
        self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
        device=None, dtype=None,
    ):  # fmt: skip
        super().__init__()
        self.normalized_shape = _shape(normalized_shape)
        self.eps = check_real("eps", eps, "[0, inf)")
        self.elementwise_affine = check_bool("elementwise_affine", elementwise_affine)
        bias = check_bool("bias", bias)
        affine, shape = self.elementwise_affine, self.normalized_shape
        _register_affine(self, shape, affine, bias, device, dtype)

    def reset_parameters(self) -> None:
        """Weight to 1 and bias to 0."""
        _reset_affine(self)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        shape, eps = self.normalized_shape, self.eps
        return layer_norm(input, shape, self.weight, self.bias, eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, "
            f"bias={self.bias is not None}"
        )


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    r"""Group norm of an (N, C, \*) tensor, as ``F.group_norm`` (Wu & He 2018).

    The C channels are split into ``num_groups`` consecutive groups of
    :math:`C/G`; each sample's group is standardised with the mean and biased
    variance of its :math:`(C/G) \cdot H \cdot W` values, then scaled and
    shifted per channel. :math:`G = 1` is layer norm over (C, H, W) with
    per-channel affine; :math:`G = C` is instance norm. No batch statistics,
    so training equals evaluation and any batch size works.
    """
    num_groups = check_int("num_groups", num_groups, low=1)
    eps = check_real("eps", eps, "[0, inf)")
    _check_channels(input, weight=weight, bias=bias)
    n, c = input.shape[:2]
    require(c % num_groups == 0, "num_groups", f"a divisor of C = {c}", num_groups)
    # torch's check, as torch writes it: (N * C / G) * H * W values must not be 1
    _verify_batch_size([n * c // num_groups, num_groups, *input.shape[2:]])
    per_group = c // num_groups * math.prod(input.shape[2:])
    grouped = input.reshape(n, num_groups, per_group)  # (N, G, C/G * H * W)
    mean, var = _stats(grouped, (2,))  # (N, G, 1) each
    y = _standardise(grouped, mean, var, eps).reshape(input.shape)
    return _affine(y, weight, bias)


class GroupNorm(nn.Module):
    """Group norm (Wu & He 2018): see :func:`group_norm`.

    ``num_channels`` must be divisible by ``num_groups``; with ``affine``,
    ``weight`` (ones) and ``bias`` (zeros) have one entry per channel.
    """

    def __init__(
        self, num_groups, num_channels, eps=1e-5, affine=True, device=None,
        dtype=None, *, bias=True,
    ):  # fmt: skip
        super().__init__()
        self.num_groups = check_int("num_groups", num_groups, low=1)
        self.num_channels = check_int("num_channels", num_channels, low=1)
        ok = self.num_channels % self.num_groups == 0
        accepted = f"divisible by num_groups={num_groups}"
        require(ok, "num_channels", accepted, num_channels)
        self.eps = check_real("eps", eps, "[0, inf)")
        self.affine = check_bool("affine", affine)
        bias = check_bool("bias", bias)
        _register_affine(self, (num_channels,), self.affine, bias, device, dtype)

    def reset_parameters(self) -> None:
        """Weight to 1 and bias to 0."""
        _reset_affine(self)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, "
            f"affine={self.affine}, bias={self.bias is not None}"
        )


@torch.no_grad()
def _update_instance_stats(x, running_mean, running_var, momentum) -> None:
    """torch's rule: each (n, c) updates a copy of r; the N copies are averaged.

    So an empty batch (N = 0) makes them NaN, in torch as here.
    """
    dims, m = tuple(range(2, x.dim())), math.prod(x.shape[2:])
    mean = x.mean(dim=dims, keepdim=True)  # (N, C, 1, ...)
    if running_mean is not None:
        copies = momentum * mean.flatten(1) + (1 - momentum) * running_mean  # (N, C)
        running_mean.copy_(copies.mean(dim=0))
    if running_var is not None:
        unbiased = ((x - mean) ** 2).sum(dim=dims) / (m - 1)  # (N, C)
        running_var.copy_((momentum * unbiased + (1 - momentum) * running_var).mean(0))


def instance_norm(
    input, running_mean=None, running_var=None, weight=None, bias=None,
    use_input_stats=True, momentum=0.1, eps=1e-5,
):  # fmt: skip
    r"""Instance norm of an (N, C, \*) tensor, as ``F.instance_norm``.

    With ``use_input_stats``, each sample's channel is standardised with the
    mean and biased variance of its own :math:`H \cdot W` values (Ulyanov et
    al. 2016), and the running buffers given are updated with the average
    over the batch of the per-instance mean and unbiased variance. Without,
    it is normalised with the running buffers.
    """
    use_input_stats = check_bool("use_input_stats", use_input_stats)
    momentum = check_real("momentum", momentum, "[0, 1]")
    eps = check_real("eps", eps, "[0, inf)")
    _check_channels(
        input, running_mean=running_mean, running_var=running_var,
        weight=weight, bias=bias,
    )  # fmt: skip
    if not use_input_stats:
        return batch_norm(input, running_mean, running_var, weight, bias, False, 0, eps)
    if math.prod(input.shape[2:]) == 1:  # torch's check and message
        message = "Expected more than 1 spatial element when training"
        raise ValueError(f"{message}, got input size {input.size()}")
    _update_instance_stats(input, running_mean, running_var, momentum)
    mean, var = _stats(input, tuple(range(2, input.dim())))  # (N, C, 1, ...)
    return _affine(_standardise(input, mean, var, eps), weight, bias)


class _InstanceNorm(_NormBase):
    def __init__(
        self, num_features, eps=1e-5, momentum=0.1, affine=False,
        track_running_stats=False, device=None, dtype=None, *, bias=True,
    ):  # fmt: skip
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats,
            device, dtype, bias=bias,
        )  # fmt: skip

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)  # (N, C, *) or unbatched (C, *)
        unbatched = input.dim() == self._input_dims[0]
        self._check_features(input, 0 if unbatched else 1)
        x = input.unsqueeze(0) if unbatched else input
        y = instance_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.training or not self.track_running_stats,
            0.0 if self.momentum is None else self.momentum, self.eps,
        )  # fmt: skip
        return y.squeeze(0) if unbatched else y

    def _check_features(self, input: torch.Tensor, dim: int) -> None:
        """As torch: a channel count other than num_features errs only if affine."""
        size = input.size(dim)
        if size == self.num_features:
            return
        if self.affine:
            raise ValueError(
                f"expected input's size at dim={dim} to match num_features"
                f" ({self.num_features}), but got: {size}."
            )
        warnings.warn(
            f"input's size at dim={dim} does not match num_features. "
            "You can silence this warning by not passing in num_features, "
            "which is not used because affine=False",
            stacklevel=3,
        )


class InstanceNorm1d(_InstanceNorm):
    r"""Instance norm of an (N, C, L) or unbatched (C, L) input (Ulyanov et al.
    2016).

    Each sample's channel is standardised over its own L values, in training
    and evaluation alike, unless ``track_running_stats``: then training also
    updates ``running_mean`` and ``running_var`` (the batch average of the
    instances' mean and unbiased variance) and evaluation normalises with
    them. As in torch, ``num_batches_tracked`` is never counted, and
    ``momentum=None`` means momentum 0: the running statistics never move.
    """

    _input_dims = (2, 3)


class InstanceNorm2d(_InstanceNorm):
    r"""Instance norm of an (N, C, H, W) or (C, H, W) input: see
    :class:`InstanceNorm1d`."""

    _input_dims = (3, 4)


class _WeightNorm(nn.Module):
    r"""The parametrization :math:`w = g\,v / \lVert v \rVert`."""

    def __init__(self, dim: int | None) -> None:
        super().__init__()
        self.dim = dim

    def _norm(self, v: torch.Tensor) -> torch.Tensor:
        if self.dim is None:  # one norm for the whole tensor, a 0-d g
            return torch.sqrt((v**2).sum())
        dims = tuple(d for d in range(v.dim()) if d != self.dim % v.dim())
        return torch.sqrt((v**2).sum(dim=dims, keepdim=True))  # 1 along dims

    def forward(self, weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
        return weight_g * (weight_v / self._norm(weight_v))

    def right_inverse(self, weight: torch.Tensor):
        """The (g, v) that give back ``weight``: its norms and itself."""
        return self._norm(weight), weight


def weight_norm(module: nn.Module, name: str = "weight", dim: int | None = 0):
    r"""Weight norm (Salimans & Kingma 2016) of ``module.<name>``, in place.

    The weight :math:`w` becomes two parameters, a magnitude :math:`g` and a
    direction :math:`v`, with :math:`w = g\,v/\lVert v\rVert`, the norm taken
    over every dimension but ``dim`` (one :math:`g` per output row for a
    Linear or Conv weight with ``dim=0``). Gradient descent on :math:`(g, v)`
    decouples the length of each weight vector from its direction. Registered
    as torch's is, with ``torch.nn.utils.parametrize``: ``g`` and ``v`` are
    ``module.parametrizations.<name>.original0`` and ``original1``,
    initialised to :math:`\lVert w\rVert` and :math:`w`, and the state_dict
    keys are torch's. As in torch, ``dim=None`` and also ``dim=-1`` mean one
    norm over the whole tensor (a scalar ``g``); other negative dims count
    from the end. Returns ``module``.
    """
    require(isinstance(module, nn.Module), "module", "a torch.nn.Module", module)
    require(isinstance(name, str), "name", "a string", name)
    weight = getattr(module, name, None)
    ok = isinstance(weight, torch.Tensor)
    require(ok, "name", f"the name of a tensor of {type(module).__name__}", name)
    if dim is not None:
        ndim = weight.dim()
        dim = check_int("dim", dim, low=-ndim, high=ndim - 1)
        dim = None if dim == -1 else dim
    parametrize.register_parametrization(module, name, _WeightNorm(dim))
    return module
