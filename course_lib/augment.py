r"""Data augmentation: what torchvision offers for images, and from scratch what
teaches: random erasing, cutout, mixup, and augmentations of 1-D signals.

For images use ``torchvision.transforms.v2`` (flips, random resized crops,
rotations, affine maps, colour jitter, noise, RandAugment, MixUp, CutMix):
:func:`augmentation_gallery` names a pipeline for each one that acts on a
single image, to be shown on scikit-image's bundled photos from
:func:`sample_images` (MixUp and CutMix act on a batch: call them directly).
They draw from the global RNG: seed it with ``torch.manual_seed``.

Written here, each with an explicit ``generator=`` (``None``: the global RNG):

=====================================  =================================
here                                   torchvision
=====================================  =================================
:func:`random_erasing`                 ``v2.RandomErasing`` (bit-equal, same seed)
:func:`cutout`                         none (DeVries & Taylor 2017)
:func:`mixup`, ``pairing="roll"``      ``v2.MixUp`` (bit-equal, same seed)
:class:`SignalAugment` and its steps   none: 1-D signals such as MNIST-1D
=====================================  =================================

"Bit-equal, same seed": ``torch.manual_seed(s)`` then torchvision's transform
gives exactly the output of ours with ``generator=torch.Generator().manual_seed(s)``
(or with ``generator=None`` after the same ``torch.manual_seed``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._args import (
    check_choice,
    check_generator,
    check_int,
    check_real,
    check_real_sequence,
    require,
    set_fields,
)

__all__ = [
    "SAMPLE_IMAGES", "sample_images", "augmentation_gallery",
    "erasing_box", "random_erasing", "cutout",
    "MixedBatch", "mixup", "mixup_loss",
    "random_shift", "random_scale", "add_noise", "time_stretch", "SignalAugment",
]  # fmt: skip

#: The names of the scikit-image sample photos :func:`sample_images` loads.
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee")
_PAIRINGS = ("shuffle", "roll")
_SHIFT_MODES = ("circular", "zeros")


def _rng_device(generator, x: Tensor) -> torch.device:
    """Draws are made where the generator lives (a CPU one for a GPU ``x`` too)."""
    return x.device if generator is None else generator.device


# ---------------------------------------------------------------- images


def sample_images(names=SAMPLE_IMAGES) -> dict[str, Tensor]:
    """scikit-image's bundled photos (no network) as ``uint8`` ``(3, H, W)``
    tensors, the layout ``torchvision.transforms.v2`` works on."""
    import skimage.data  # slow import, needed only here

    out = {}
    for name in names:
        check_choice("names", name, SAMPLE_IMAGES)
        image = getattr(skimage.data, name)()  # (H, W, 3) uint8
        out[name] = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    return out


def augmentation_gallery(size: int = 128) -> dict[str, object]:
    """Named ``v2`` pipelines, each from a ``uint8`` ``(3, H, W)`` image to a
    ``float32`` one in [0, 1]; random resized crops are ``size`` x ``size``."""
    from torchvision.transforms import v2  # slow import, needed only here

    size = check_int("size", size, low=1)
    to_float = v2.ToDtype(torch.float32, scale=True)
    steps = {
        "original": [],
        "horizontal flip": [v2.RandomHorizontalFlip(p=1.0)],
        "random resized crop": [v2.RandomResizedCrop(size, scale=(0.2, 1.0))],
        "rotation": [v2.RandomRotation(degrees=30)],
        "shear": [v2.RandomAffine(degrees=0, shear=(-25, 25, -10, 10))],
        "affine": [v2.RandomAffine(15, translate=(0.1, 0.1), scale=(0.8, 1.2))],
        "colour jitter": [v2.ColorJitter(0.4, 0.4, 0.4, 0.1)],
        "random erasing": [v2.RandomErasing(p=1.0)],
        "RandAugment": [v2.RandAugment(num_ops=2, magnitude=9)],
    }
    gallery = {name: v2.Compose([*s, to_float]) for name, s in steps.items()}
    gallery["Gaussian noise"] = v2.Compose([to_float, v2.GaussianNoise(sigma=0.1)])
    return gallery


def erasing_box(
    height: int, width: int, *, scale=(0.02, 0.33), ratio=(0.3, 3.3), generator=None
) -> tuple[int, int, int, int] | None:
    r"""Random erasing's rectangle (Zhong et al. 2020), ``(top, left, h, w)``.

    Up to 10 tries: an area :math:`a = uHW`, :math:`u \sim U(s_0, s_1)`, and an
    aspect ratio :math:`r = e^v`, :math:`v \sim U(\log r_0, \log r_1)`
    (uniform in log, so :math:`r` and :math:`1/r` are equally likely), give
    :math:`h = \mathrm{round}\sqrt{a r}`, :math:`w = \mathrm{round}\sqrt{a/r}`;
    a box that fits (:math:`h < H`, :math:`w < W`) is placed uniformly inside
    the image. ``None`` if none fits. The draws are ``v2.RandomErasing``'s,
    in its order: ``u``, ``v`` per try, then ``top`` and ``left``.
    """
    height, width = check_int("height", height, low=1), check_int("width", width, low=1)
    low, high = check_real_sequence("scale", scale, "[0, 1]", length=2)
    require(low <= high, "scale", "a pair (low, high) with low <= high", scale)
    ratio = check_real_sequence("ratio", ratio, "(0, inf)", length=2)
    require(ratio[0] <= ratio[1], "ratio", "a pair (low, high) with low <= high", ratio)
    generator = check_generator(generator)
    log_ratio = torch.log(torch.tensor(ratio))  # float32, as torchvision
    for _ in range(10):
        u = torch.empty(1).uniform_(low, high, generator=generator)
        v = torch.empty(1).uniform_(*log_ratio, generator=generator)
        area, aspect = height * width * u.item(), torch.exp(v).item()
        h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if h < height and w < width:
            top = torch.randint(0, height - h + 1, (1,), generator=generator).item()
            left = torch.randint(0, width - w + 1, (1,), generator=generator).item()
            return top, left, h, w
    return None


def random_erasing(
    x: Tensor, p=0.5, *, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0,
    generator=None,
) -> Tensor:  # fmt: skip
    """With probability ``p`` (when one ``torch.rand(1)`` draw is below it),
    ``x`` (``(..., H, W)``) with one :func:`erasing_box` set to ``value``; the
    same box for every leading index, as ``v2.RandomErasing`` does (call it
    per image for a box each)."""
    p, value = check_real("p", p, "[0, 1]"), check_real("value", value)
    generator = check_generator(generator)
    require(x.ndim >= 2, "x", "a tensor of shape (..., H, W)", tuple(x.shape))
    if torch.rand(1, generator=generator) >= p:
        return x
    box = erasing_box(*x.shape[-2:], scale=scale, ratio=ratio, generator=generator)
    if box is None:
        return x
    top, left, h, w = box
    x = x.clone()
    x[..., top : top + h, left : left + w] = value
    return x


def cutout(x: Tensor, size, *, value=0.0, generator=None) -> Tensor:
    r"""Cutout (DeVries & Taylor 2017): in each image of ``x`` (``(N, C, H, W)``)
    a ``size`` box (an int for a square, or ``(h, w)``) set to ``value``.

    The box's centre :math:`(c_y, c_x)` is uniform over all :math:`HW` pixels
    (the ``N`` rows are drawn first, then the ``N`` columns), its rows are
    :math:`[c_y - \lfloor h/2 \rfloor, c_y - \lfloor h/2 \rfloor + h)`, and
    the part outside the image is cut off, so near a border less is erased.
    On standardised inputs ``value=0`` is the mean pixel, as in the paper,
    which reports that letting the box leave the image mattered. This is why no
    seed makes ``v2.RandomErasing``, whose boxes stay inside, give the same
    output; given the same box the two erase the same pixels.
    """
    require(x.ndim == 4, "x", "a tensor of shape (N, C, H, W)", tuple(x.shape))
    h, w = _check_size(size)
    value, generator = check_real("value", value), check_generator(generator)
    (n, _, height, width), device = x.shape, _rng_device(generator, x)
    cy = torch.randint(0, height, (n,), generator=generator, device=device)
    cx = torch.randint(0, width, (n,), generator=generator, device=device)
    top, left = (cy - h // 2).to(x.device), (cx - w // 2).to(x.device)
    rows = torch.arange(height, device=x.device) - top[:, None]  # (N, H)
    cols = torch.arange(width, device=x.device) - left[:, None]  # (N, W)
    in_rows, in_cols = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    inside = in_rows[:, :, None] & in_cols[:, None, :]  # (N, H, W)
    return x.masked_fill(inside[:, None], value)  # the same box in every channel


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_size(size) -> tuple[int, int]:
    pair = (size, size) if _is_integer(size) else size
    ok = isinstance(pair, (tuple, list)) and len(pair) == 2
    ok = ok and all(_is_integer(v) and v >= 1 for v in pair)
    require(ok, "size", "a positive integer or a pair (h, w) of them", size)
    return int(pair[0]), int(pair[1])


# ---------------------------------------------------------------- mixup


class MixedBatch(NamedTuple):
    r"""A mixup batch: ``x`` :math:`= \lambda x_a + (1 - \lambda) x_b`, with
    ``y_a`` the labels of the samples and ``y_b`` those of their partners."""

    x: Tensor
    y_a: Tensor
    y_b: Tensor
    lam: float

    def targets(self, num_classes: int | None = None) -> Tensor:
        r"""The soft targets :math:`\lambda y_a + (1 - \lambda) y_b`, ``(N, C)``
        (class indices are one-hot encoded with ``num_classes``)."""
        y_a, y_b = self.y_a, self.y_b
        if not y_a.is_floating_point():
            num_classes = check_int("num_classes", num_classes, low=1)
            y_a, y_b = (F.one_hot(y, num_classes).to(self.x.dtype) for y in (y_a, y_b))
        return y_a * self.lam + y_b * (1 - self.lam)


def mixup(x: Tensor, y: Tensor, alpha=1.0, *, pairing="shuffle", generator=None):
    r"""Mixup (Zhang et al. 2018): a :class:`MixedBatch` of ``x`` (``(N, ...)``
    float) and ``y`` (``(N,)`` class indices or ``(N, C)`` targets).

    One :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)` for the batch, drawn
    as :math:`G_1 / (G_1 + G_2)` with :math:`G_i \sim \Gamma(\alpha, 1)`, as
    ``torch.distributions.Beta`` does; small :math:`\alpha` puts most
    :math:`\lambda` near 0 or 1, :math:`\alpha = 1` is uniform. The partner
    of sample ``i`` is sample ``perm[i]``: a random permutation drawn after
    :math:`\lambda` (``"shuffle"``, the paper's), or ``i - 1`` (``"roll"``,
    torchvision's, which relies on a shuffled loader).
    """
    alpha = check_real("alpha", alpha, "(0, inf)")
    pairing = check_choice("pairing", pairing, _PAIRINGS)
    generator = check_generator(generator)
    ok = x.is_floating_point() and x.ndim >= 1
    require(ok, "x", "a float tensor of shape (N, ...)", f"{x.dtype} {tuple(x.shape)}")
    ok = y.ndim in (1, 2) and len(y) == len(x)
    require(ok, "y", f"a tensor of shape ({len(x)},) or ({len(x)}, C)", tuple(y.shape))
    device = "cpu" if generator is None else generator.device
    concentration = torch.tensor([[alpha, alpha]], device=device)
    # the sampler behind torch.distributions.Beta, which takes no generator
    lam = float(torch._sample_dirichlet(concentration, generator=generator)[0, 0])
    if pairing == "roll":
        perm = (torch.arange(len(x)) - 1) % max(len(x), 1)
    else:
        perm = torch.randperm(len(x), generator=generator, device=device)
    perm = perm.to(x.device)
    return MixedBatch(x * lam + x[perm] * (1 - lam), y, y[perm], lam)


def mixup_loss(logits: Tensor, batch: MixedBatch) -> Tensor:
    r""":math:`\lambda\,\mathrm{CE}(f(\tilde x), y_a) + (1 - \lambda)\,
    \mathrm{CE}(f(\tilde x), y_b)`, batch means; cross-entropy is linear in its
    target, so this equals ``F.cross_entropy(logits, batch.targets(C))``."""
    loss_a = F.cross_entropy(logits, batch.y_a)
    return batch.lam * loss_a + (1 - batch.lam) * F.cross_entropy(logits, batch.y_b)


# ---------------------------------------------------------------- 1-D signals


def _check_signals(x: Tensor) -> None:
    ok = x.is_floating_point() and x.ndim in (2, 3)
    require(ok, "x", "a float tensor of shape (N, L) or (N, C, L)", tuple(x.shape))


def _per_sample(values: Tensor, x: Tensor) -> Tensor:
    """``(N,)`` -> ``(N, 1)`` or ``(N, 1, 1)``, on ``x``'s device and dtype."""
    return values.to(x).view(-1, *([1] * (x.ndim - 1)))


def _per_step(values: Tensor, x: Tensor) -> Tensor:
    """``(N, L)`` -> ``(N, L)`` or ``(N, 1, L)``, to broadcast against ``x``."""
    return values.view(len(x), *([1] * (x.ndim - 2)), x.shape[-1])


def _uniform(x: Tensor, half_width: float, generator) -> Tensor:
    """``(N,)`` factors uniform in ``[1 - half_width, 1 + half_width]``."""
    device = _rng_device(generator, x)
    u = torch.rand(len(x), generator=generator, dtype=x.dtype, device=device)
    return (1 + half_width * (2 * u - 1)).to(x.device)


def _take(x: Tensor, index: Tensor) -> Tensor:
    """``x[n, ..., index[n, t]]``, 0 where ``index`` (``(N, L)``) is outside
    ``[0, L)``."""
    valid = _per_step((index >= 0) & (index < x.shape[-1]), x)
    index = _per_step(index.clamp(0, x.shape[-1] - 1), x).expand_as(x)
    return torch.where(valid, torch.gather(x, -1, index), 0.0)


def random_shift(x: Tensor, max_shift: int, *, mode="circular", generator=None):
    r"""Shift each signal of ``x`` (``(N, L)`` or ``(N, C, L)``) by
    :math:`s \sim U\{-m, \dots, m\}` steps, later in time for :math:`s > 0`:
    :math:`\tilde x_t = x_{t - s}`, with :math:`t - s` taken mod :math:`L`
    (``"circular"``: what leaves one end comes back at the other, as
    ``torch.roll``) or with zeros where :math:`t - s` is outside the signal
    (``"zeros"``)."""
    _check_signals(x)
    m = check_int("max_shift", max_shift, low=0, high=x.shape[-1] - 1)
    mode = check_choice("mode", mode, _SHIFT_MODES)
    generator = check_generator(generator)
    if m == 0:
        return x
    device = _rng_device(generator, x)
    shift = torch.randint(-m, m + 1, (len(x),), generator=generator, device=device)
    index = torch.arange(x.shape[-1], device=x.device) - shift.to(x.device)[:, None]
    return _take(x, index % x.shape[-1] if mode == "circular" else index)


def random_scale(x: Tensor, max_scale: float, *, generator=None) -> Tensor:
    r"""Multiply each signal by :math:`a \sim U[1 - m, 1 + m]`, ``m =
    max_scale`` in [0, 1): the amplitude changes, the shape does not."""
    _check_signals(x)
    m = check_real("max_scale", max_scale, "[0, 1)")
    generator = check_generator(generator)
    return x if m == 0 else x * _per_sample(_uniform(x, m, generator), x)


def add_noise(x: Tensor, std: float, *, generator=None) -> Tensor:
    r""":math:`\tilde x = x + \sigma \epsilon`, :math:`\epsilon \sim \mathcal
    N(0, I)` drawn for every entry of ``x`` (``(N, L)`` or ``(N, C, L)``)."""
    _check_signals(x)
    std = check_real("std", std, "[0, inf)")
    generator = check_generator(generator)
    if std == 0:
        return x
    device = _rng_device(generator, x)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device)
    return x + std * noise.to(x.device)


def time_stretch(x: Tensor, max_stretch: float, *, generator=None) -> Tensor:
    r"""Stretch each signal about its centre :math:`c = (L - 1)/2` by
    :math:`r \sim U[1 - m, 1 + m]`: :math:`\tilde x(t) = x(c + (t - c)/r)`,
    wider for :math:`r > 1`. The signal is extended with zeros on both sides
    and interpolated linearly between its samples."""
    _check_signals(x)
    m = check_real("max_stretch", max_stretch, "[0, 1)")
    generator = check_generator(generator)
    if m == 0:
        return x
    rate = _uniform(x, m, generator)  # (N,)
    centre = (x.shape[-1] - 1) / 2
    t = torch.arange(x.shape[-1], device=x.device, dtype=x.dtype)
    where = centre + (t - centre) / rate[:, None]  # (N, L): the positions read
    left = where.floor()
    frac, left = _per_step(where - left, x), left.long()
    return _take(x, left) * (1 - frac) + _take(x, left + 1) * frac


@dataclass(frozen=True)
class SignalAugment:
    """The 1-D augmentations in one call, in this order: :func:`time_stretch`,
    :func:`random_shift`, :func:`random_scale`, :func:`add_noise`.

    A strength of 0 skips its step, which then draws nothing. In a training
    loop::

        augment = SignalAugment(max_shift=4, max_scale=0.2, noise_std=0.05)
        rng = course_lib.device.generator(seed)
        for X, y in loader:
            loss = loss_fn(model(augment(X, generator=rng)), y)
    """

    max_shift: int = 0
    shift_mode: str = "circular"
    max_scale: float = 0.0
    noise_std: float = 0.0
    max_stretch: float = 0.0

    def __post_init__(self) -> None:
        set_fields(
            self,
            max_shift=check_int("max_shift", self.max_shift, low=0),
            shift_mode=check_choice("shift_mode", self.shift_mode, _SHIFT_MODES),
            max_scale=check_real("max_scale", self.max_scale, "[0, 1)"),
            noise_std=check_real("noise_std", self.noise_std, "[0, inf)"),
            max_stretch=check_real("max_stretch", self.max_stretch, "[0, 1)"),
        )

    def __call__(self, x: Tensor, *, generator=None) -> Tensor:
        x = time_stretch(x, self.max_stretch, generator=generator)
        x = random_shift(x, self.max_shift, mode=self.shift_mode, generator=generator)
        x = random_scale(x, self.max_scale, generator=generator)
        return add_noise(x, self.noise_std, generator=generator)
