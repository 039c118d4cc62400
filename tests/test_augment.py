"""Tests for course_lib.augment: random erasing and mixup bit-equal to
torchvision's v2.RandomErasing and v2.MixUp after the same seed; cutout equal
to v2's erase given the same (clipped) box and statistically right (each
pixel's erase probability); mixup's lambda Beta-distributed and its loss equal
to cross-entropy with the mixed targets (float64); the 1-D augmentations
against torch.roll / np.interp given the same draws, identity at strength 0,
deterministic under a seed, with the right statistics; the gallery and photos."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from course_lib import augment as A

F64 = torch.float64
# Statistical checks: fixed seeds, bounds of Z standard deviations of the exact
# sampling distribution (a correct implementation fails one with probability
# below 1e-6; a wrong range, a missing clip or a wrong lambda misses by far).
Z = 5.0


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- images


def test_sample_images_are_the_bundled_photos_as_chw_uint8():
    import skimage.data

    images = A.sample_images()
    assert tuple(images) == A.SAMPLE_IMAGES
    for name, image in images.items():
        expected = getattr(skimage.data, name)()  # (H, W, 3)
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        assert np.array_equal(image.permute(1, 2, 0).numpy(), expected)
    assert tuple(A.sample_images(["coffee"])) == ("coffee",)
    with pytest.raises(ValueError, match=r"^names must be one of \('astronaut'"):
        A.sample_images(["lena"])


def test_gallery_pipelines_give_float_images_in_unit_range():
    image = A.sample_images(["chelsea"])["chelsea"][:, :96, :128]  # (3, 96, 128)
    gallery = A.augmentation_gallery(size=64)
    for name in ("horizontal flip", "rotation", "RandAugment", "Gaussian noise"):
        assert name in gallery
    torch.manual_seed(0)
    outputs = {name: pipeline(image) for name, pipeline in gallery.items()}
    for name, out in outputs.items():
        assert out.dtype == torch.float32 and out.shape[0] == 3, name
        assert out.min() >= 0 and out.max() <= 1, name
    original = image.float() / 255
    torch.testing.assert_close(outputs["original"], original)
    torch.testing.assert_close(outputs["horizontal flip"], original.flip(-1))
    assert outputs["random resized crop"].shape == (3, 64, 64)
    for name in ("rotation", "colour jitter", "random erasing", "Gaussian noise"):
        assert (outputs[name] - original).abs().max() > 0.1, name
    draws = []
    for _ in range(2):
        torch.manual_seed(1)  # the v2 transforms draw from the global RNG
        draws.append(gallery["RandAugment"](image))
    assert torch.equal(*draws)
    with pytest.raises(ValueError, match=r"^size must be a positive integer"):
        A.augmentation_gallery(size=0)


# ---------------------------------------------------------------- random erasing

ERASING_CASES = [
    {},
    {"p": 1.0, "scale": (0.3, 0.9), "ratio": (0.2, 5.0), "value": 0.5},
    {"p": 0.8, "scale": (0.1, 0.1), "ratio": (1.0, 1.0)},
    {"p": 1.0, "scale": (0.3, 0.7), "ratio": (1.5, 4.0)},  # many tries fail
]


@pytest.mark.parametrize("shape", [(3, 17, 23), (4, 2, 12, 12)])
@pytest.mark.parametrize("kwargs", ERASING_CASES)
def test_random_erasing_is_bit_equal_to_torchvision(kwargs, shape):
    x = torch.rand(shape, generator=gen(1))
    transform = v2.RandomErasing(**kwargs)
    changed = 0
    for seed in range(60):
        torch.manual_seed(seed)
        expected = transform(x)
        assert torch.equal(A.random_erasing(x, generator=gen(seed), **kwargs), expected)
        torch.manual_seed(seed)  # generator=None: the same calls on the global RNG
        assert torch.equal(A.random_erasing(x, **kwargs), expected)
        changed += not torch.equal(expected, x)
    assert changed > 10  # the comparison covered real erasures


def test_erasing_box_fits_and_none_when_nothing_fits():
    boxes = [A.erasing_box(20, 30, generator=gen(s)) for s in range(300)]
    for top, left, h, w in boxes:
        assert 0 <= top <= 20 - h and 0 <= left <= 30 - w and 0 < h < 20 and 0 < w < 30
    area = torch.tensor([h * w / 600 for _, _, h, w in boxes])
    assert 0.01 < area.min() and area.max() < 0.36  # scale (0.02, 0.33), rounded
    # an area of the whole image with a ratio >= 5 can never fit
    assert (
        A.erasing_box(20, 30, scale=(0.9, 1.0), ratio=(5, 6), generator=gen(0)) is None
    )
    x = torch.rand(3, 20, 30)
    out = A.random_erasing(x, 1.0, scale=(0.9, 1.0), ratio=(5, 6), generator=gen(0))
    assert out is x  # left as it is, as torchvision does


def test_random_erasing_applies_with_probability_p():
    x, n, p = torch.ones(1, 8, 8), 4000, 0.3
    g = gen(2)
    hits = sum(
        not torch.equal(A.random_erasing(x, p, generator=g), x) for _ in range(n)
    )
    assert abs(hits - n * p) < Z * (n * p * (1 - p)) ** 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 1.5}, r"^p must be a real number in \[0, 1\], got 1.5"),
        ({"scale": (0.1, 2.0)}, r"^scale must be a pair of real numbers in \[0, 1\]"),
        ({"ratio": (0.0, 1.0)}, r"^ratio must be a pair of real numbers > 0"),
        ({"ratio": 1.0}, r"^ratio must be a pair"),
        ({"scale": (0.5, 0.1)}, r"^scale must be a pair \(low, high\) with low <="),
        ({"ratio": (2.0, 0.5)}, r"^ratio must be a pair \(low, high\) with low <="),
        ({"value": "random"}, r"^value must be a finite real number"),
    ],
)
def test_random_erasing_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        A.random_erasing(torch.rand(3, 8, 8), **{"p": 1.0, **kwargs})
    with pytest.raises(
        ValueError, match=r"^x must be a tensor of shape \(\.\.\., H, W\)"
    ):
        A.random_erasing(torch.rand(8), p=1.0)
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator"):
        A.random_erasing(torch.rand(3, 8, 8), generator=0)


# ---------------------------------------------------------------- cutout


def _cutout_boxes(n, height, width, size, seed):
    """The boxes cutout draws with this seed, clipped: (top, left, h, w) each."""
    h, w = size
    g = gen(seed)
    cy, cx = (
        torch.randint(0, height, (n,), generator=g),
        torch.randint(0, width, (n,), generator=g),
    )
    boxes = []
    for y, x in zip(cy.tolist(), cx.tolist(), strict=True):
        top, left = y - h // 2, x - w // 2
        bottom, right = min(top + h, height), min(left + w, width)
        top, left = max(top, 0), max(left, 0)
        boxes.append((top, left, bottom - top, right - left))
    return boxes


@pytest.mark.parametrize("size", [3, (4, 7), (1, 1), (30, 30)])
def test_cutout_equals_torchvision_erase_given_the_same_box(size):
    x = torch.rand(64, 3, 12, 16, generator=gen(3), dtype=F64)
    out = A.cutout(x, size, value=-1.0, generator=gen(4))
    pair = (size, size) if isinstance(size, int) else size
    boxes = _cutout_boxes(64, 12, 16, pair, seed=4)
    v = torch.tensor(-1.0, dtype=F64)
    for image, result, (top, left, h, w) in zip(x, out, boxes, strict=True):
        assert torch.equal(result, TF.erase(image, top, left, h, w, v))
    areas = [h * w for _, _, h, w in boxes]
    full = pair[0] * pair[1]
    assert max(areas) == min(full, 12 * 16)
    if full > 1:  # centres near a border: the box is cut off, less is erased,
        assert min(areas) < full  # which RandomErasing's inside boxes never do
    assert A.cutout(x, size, generator=gen(4)).dtype == F64 and x.shape == out.shape


def test_cutout_erases_each_pixel_with_its_exact_probability():
    n, height, width, side = 20_000, 8, 10, 4
    erased = A.cutout(torch.ones(n, 1, height, width), side, generator=gen(5)) == 0
    freq = erased.double().mean(0)[0]  # (H, W)

    def covering(length):  # for each pixel, how many centres put it in the box
        centres = torch.arange(length)[:, None]  # (centres, 1)
        pixels = torch.arange(length)[None, :]
        offset = pixels - (centres - side // 2)
        return ((offset >= 0) & (offset < side)).sum(0).double()  # (length,)

    exact = covering(height)[:, None] * covering(width)[None, :] / (height * width)
    assert exact.min() < exact.max()  # corners are erased less often than the middle
    bound = Z * (exact * (1 - exact) / n).sqrt()
    assert ((freq - exact).abs() <= bound).all()


@pytest.mark.parametrize(
    ("x", "size", "message"),
    [
        (torch.rand(3, 8, 8), 2, r"^x must be a tensor of shape \(N, C, H, W\)"),
        (torch.rand(2, 1, 8, 8), 0, r"^size must be a positive integer or a pair"),
        (torch.rand(2, 1, 8, 8), (2,), r"^size must be a positive integer or a pair"),
        (torch.rand(2, 1, 8, 8), True, r"^size must be a positive integer or a pair"),
        (torch.rand(2, 1, 8, 8), 2.5, r"^size must be a positive integer or a pair"),
    ],
)
def test_cutout_bad_arguments(x, size, message):
    with pytest.raises(ValueError, match=message):
        A.cutout(x, size)


# ---------------------------------------------------------------- mixup


@pytest.mark.parametrize("alpha", [0.2, 1.0, 3.0])
def test_mixup_roll_is_bit_equal_to_torchvision(alpha):
    x, y = torch.randn(8, 3, 5, 5, generator=gen(6)), torch.randint(0, 4, (8,))
    soft = torch.softmax(torch.randn(8, 4, generator=gen(7)), dim=1)
    for seed in range(30):
        torch.manual_seed(seed)
        x_tv, y_tv = v2.MixUp(alpha=alpha, num_classes=4)(x, y)
        ours = A.mixup(x, y, alpha, pairing="roll", generator=gen(seed))
        assert torch.equal(ours.x, x_tv) and torch.equal(ours.targets(4), y_tv)
        torch.manual_seed(seed)
        _, soft_tv = v2.MixUp(alpha=alpha)(x, soft)
        ours = A.mixup(x, soft, alpha, pairing="roll", generator=gen(seed))
        assert torch.equal(ours.targets(), soft_tv)
    assert torch.equal(ours.y_b, soft.roll(1, 0))


def test_mixup_shuffle_draws_lambda_then_a_permutation():
    x, y = torch.randn(10, 6, generator=gen(8), dtype=F64), torch.arange(10) % 3
    for seed in range(10):
        torch.manual_seed(seed)  # the reference: torch's Beta, then randperm
        lam = float(
            torch.distributions.Beta(torch.tensor([0.4]), torch.tensor([0.4])).sample(
                ()
            )
        )
        perm = torch.randperm(10)
        torch.manual_seed(seed)
        ours = A.mixup(x, y, 0.4)
        assert ours.lam == lam and torch.equal(ours.y_b, y[perm])
        torch.testing.assert_close(
            ours.x, lam * x + (1 - lam) * x[perm], rtol=0, atol=1e-15
        )
        again = A.mixup(x, y, 0.4, generator=gen(seed))
        assert again.lam == lam and torch.equal(again.x, ours.x)
        targets = ours.targets(3)
        assert targets.dtype == F64
        torch.testing.assert_close(targets.sum(1), torch.ones(10, dtype=F64))


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_lambda_is_beta_distributed(alpha):
    x, y = torch.zeros(2, 1), torch.zeros(2, dtype=torch.int64)
    g = gen(9)
    lams = np.array([A.mixup(x, y, alpha, generator=g).lam for _ in range(3000)])
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-4
    var = 1 / (4 * (2 * alpha + 1))  # Beta(a, a): mean 1/2, variance 1/(4(2a+1))
    assert abs(lams.mean() - 0.5) < Z * (var / len(lams)) ** 0.5
    wrong = stats.beta(2 * alpha, 2 * alpha).cdf  # a wrong law is told apart
    assert stats.kstest(lams, wrong).pvalue < 1e-4


def test_mixup_loss_equals_cross_entropy_with_mixed_targets():
    x, y = torch.randn(16, 5, generator=gen(10), dtype=F64), torch.randint(0, 3, (16,))
    batch = A.mixup(x, y, 1.0, generator=gen(11))
    logits = (
        batch.x @ torch.randn(5, 3, generator=gen(12), dtype=F64)
    ).requires_grad_()
    loss = A.mixup_loss(logits, batch)
    by_hand = batch.lam * F.cross_entropy(logits, y) + (
        1 - batch.lam
    ) * F.cross_entropy(logits, batch.y_b)
    torch.testing.assert_close(loss, by_hand)
    soft = F.cross_entropy(logits, batch.targets(3))
    torch.testing.assert_close(loss, soft)
    grad, grad_soft = (
        torch.autograd.grad(v, logits, retain_graph=True)[0] for v in (loss, soft)
    )
    torch.testing.assert_close(grad, grad_soft)
    assert 0 < batch.lam < 1 and not torch.equal(batch.y_b, y)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda x, y: A.mixup(x, y, 0.0), ValueError,
         r"^alpha must be a real number > 0"),
        (lambda x, y: A.mixup(x, y, float("nan")), ValueError, r"^alpha must be"),
        (lambda x, y: A.mixup(x, y, pairing="cutmix"), ValueError,
         r"^pairing must be one of \('shuffle', 'roll'\)"),
        (lambda x, y: A.mixup(x.long(), y), ValueError, r"^x must be a float tensor"),
        (lambda x, y: A.mixup(x, y[:3]), ValueError,
         r"^y must be a tensor of shape \(4,\)"),
        (lambda x, y: A.mixup(x, y).targets(), ValueError,
         r"^num_classes must be a positive integer, got None"),
        (lambda x, y: A.mixup(x, y, generator=1), TypeError, r"^generator must be"),
    ],
)  # fmt: skip
def test_mixup_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.randn(4, 2), torch.arange(4))


# ---------------------------------------------------------------- 1-D signals

SHAPES = [(6, 40), (6, 1, 40), (6, 2, 40)]


def signals(shape, seed=13):
    return torch.randn(shape, generator=gen(seed), dtype=F64)


def _drawn_shifts(n, m, seed):
    return torch.randint(-m, m + 1, (n,), generator=gen(seed))


@pytest.mark.parametrize("shape", SHAPES)
def test_random_shift_against_torch_roll_given_the_same_shifts(shape):
    x = signals(shape)
    circular = A.random_shift(x, 7, generator=gen(14))
    padded = A.random_shift(x, 7, mode="zeros", generator=gen(14))
    shifts = _drawn_shifts(len(x), 7, seed=14)
    assert shifts.abs().max() > 0
    for xi, ci, pi, s in zip(x, circular, padded, shifts.tolist(), strict=True):
        rolled = torch.roll(xi, s, dims=-1)
        assert torch.equal(ci, rolled)
        wrapped = torch.zeros(40, dtype=torch.bool)  # what the roll brought round
        wrapped[:s] = s > 0
        if s < 0:
            wrapped[s:] = True
        assert torch.equal(pi, torch.where(wrapped, 0.0, rolled))
    assert circular.shape == x.shape and circular.dtype == F64


def test_random_shift_values_are_uniform():
    m, n = 3, 14_000
    impulses = torch.zeros(n, 40)
    impulses[:, 20] = 1.0
    shifts = A.random_shift(impulses, m, generator=gen(15)).argmax(1) - 20
    counts = torch.bincount(shifts + m, minlength=2 * m + 1).double()
    p = 1 / (2 * m + 1)
    assert len(counts) == 2 * m + 1
    assert ((counts - n * p).abs() < Z * (n * p * (1 - p)) ** 0.5).all()


def test_random_scale_statistics():
    m, n = 0.3, 20_000
    a = A.random_scale(torch.ones(n, 1, 5), m, generator=gen(16))
    assert (a == a[:, :, :1]).all()  # one factor per signal
    a = a[:, 0, 0].double()
    assert a.min() >= 1 - m and a.max() <= 1 + m
    var = m**2 / 3  # U[1 - m, 1 + m]
    assert abs(a.mean() - 1) < Z * (var / n) ** 0.5
    assert abs(a.var() - var) < 0.03 * var


def test_add_noise_statistics():
    x, std = signals((500, 1, 40)), 0.2
    noise = A.add_noise(x, std, generator=gen(17)) - x
    n = noise.numel()
    assert abs(noise.mean()) < Z * std / n**0.5
    assert abs(noise.std() / std - 1) < Z * (1 / (2 * n)) ** 0.5


@pytest.mark.parametrize("shape", SHAPES)
def test_time_stretch_is_interpolation_of_the_zero_padded_signal(shape):
    x, m = signals(shape), 0.4
    out = A.time_stretch(x, m, generator=gen(18))
    rates = 1 + m * (2 * torch.rand(len(x), generator=gen(18), dtype=F64) - 1)
    centre = 19.5
    for xi, oi, r in zip(x, out, rates.tolist(), strict=True):
        where = centre + (np.arange(40) - centre) / r
        for xc, oc in zip(xi.reshape(-1, 40), oi.reshape(-1, 40), strict=True):
            padded = np.concatenate([[0.0], xc.numpy(), [0.0]])
            expected = np.interp(where + 1, np.arange(42), padded, left=0.0, right=0.0)
            np.testing.assert_allclose(oc.numpy(), expected, rtol=0, atol=1e-12)
    assert rates.min() < 0.9 and rates.max() > 1.1


def test_time_stretch_widens_a_bump_for_a_rate_above_one():
    t = torch.arange(41, dtype=F64)
    bump = torch.exp(-((t - 20) ** 2) / 8).repeat(200, 1)  # (200, 41), centred
    out = A.time_stretch(bump, 0.5, generator=gen(19))
    rates = 1 + 0.5 * (2 * torch.rand(200, generator=gen(19), dtype=F64) - 1)
    area = out.sum(1) / bump.sum(1)  # the area scales with the rate, up to
    torch.testing.assert_close(area, rates, rtol=0.025, atol=0)  # sampling error


STRENGTH_ZERO = [
    lambda x, g: A.random_shift(x, 0, generator=g),
    lambda x, g: A.random_shift(x, 0, mode="zeros", generator=g),
    lambda x, g: A.random_scale(x, 0.0, generator=g),
    lambda x, g: A.add_noise(x, 0.0, generator=g),
    lambda x, g: A.time_stretch(x, 0.0, generator=g),
    lambda x, g: A.SignalAugment()(x, generator=g),
]


@pytest.mark.parametrize("call", STRENGTH_ZERO)
def test_zero_strength_is_the_identity_and_draws_nothing(call):
    x, g = signals((4, 1, 40)), gen(20)
    state = g.get_state()
    assert torch.equal(call(x, g), x)
    assert torch.equal(g.get_state(), state)


def test_time_stretch_near_one_is_near_identity():
    x = signals((4, 40))
    out = A.time_stretch(x, 1e-9, generator=gen(21))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def test_signal_augment_is_its_steps_in_order_and_deterministic():
    x = signals((8, 1, 40))
    augment = A.SignalAugment(
        max_shift=4, max_scale=0.2, noise_std=0.1, max_stretch=0.2
    )
    out = augment(x, generator=gen(22))
    assert out.shape == x.shape and out.dtype == F64
    assert torch.equal(augment(x, generator=gen(22)), out)
    assert not torch.allclose(augment(x, generator=gen(23)), out)
    g = gen(22)
    by_hand = A.time_stretch(x, 0.2, generator=g)
    by_hand = A.random_shift(by_hand, 4, generator=g)
    by_hand = A.random_scale(by_hand, 0.2, generator=g)
    by_hand = A.add_noise(by_hand, 0.1, generator=g)
    assert torch.equal(out, by_hand)
    torch.manual_seed(0)
    first = augment(x)  # generator=None: the global RNG
    torch.manual_seed(0)
    assert torch.equal(augment(x), first)
    for shape in [(8, 40), (8, 2, 40)]:
        assert augment(signals(shape), generator=gen(24)).shape == shape


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_shift": -1}, r"^max_shift must be a non-negative integer, got -1"),
        ({"max_shift": 2.0}, r"^max_shift must be a non-negative integer"),
        ({"shift_mode": "wrap"}, r"^shift_mode must be one of \('circular', 'zeros'\)"),
        ({"max_scale": 1.0}, r"^max_scale must be a real number in \[0, 1\), got 1.0"),
        ({"noise_std": -0.1}, r"^noise_std must be a real number >= 0"),
        ({"max_stretch": True}, r"^max_stretch must be a real number in \[0, 1\)"),
    ],
)
def test_signal_augment_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        A.SignalAugment(**kwargs)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda x: A.random_shift(x, 40),
            r"^max_shift must be an integer in \[0, 39\]",
        ),
        (
            lambda x: A.random_shift(x[0, 0], 2),
            r"^x must be a float tensor of shape \(N, L\)",
        ),
        (lambda x: A.random_scale(x.long(), 0.1), r"^x must be a float tensor"),
        (lambda x: A.add_noise(x[None], 0.1), r"^x must be a float tensor"),
        (lambda x: A.add_noise(x, float("inf")), r"^std must be a real number >= 0"),
        (lambda x: A.time_stretch(x, -0.1), r"^max_stretch must be a real number in"),
    ],
)
def test_signal_functions_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(signals((4, 1, 40)))
