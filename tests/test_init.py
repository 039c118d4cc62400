"""Tests for course_lib.init: every initialiser bit for bit against torch.nn.init
(every mode, nonlinearity and slope; Linear and Conv1d/2d/3d weights; float64
and float32; an explicit generator and the global one, including how far each
advances), the fans of real layers, the gains, nn.Linear's default init, the
errors, and activation_statistics against a small network worked by hand."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import init

# (out, in) for Linear; (out, in, k...) for Conv1d, Conv2d and Conv3d
SHAPES = {
    "linear": (7, 5),
    "linear_wide": (3, 40),
    "conv1d": (4, 3, 5),
    "conv2d": (6, 2, 3, 3),
    "conv3d": (3, 2, 2, 3, 4),
}
KAIMING = ["kaiming_uniform_", "kaiming_normal_"]
XAVIER = ["xavier_uniform_", "xavier_normal_"]
SLOPES = [0, math.sqrt(5), 0.2, 1]  # 0: ReLU; sqrt(5): nn.Linear's default
DTYPES = [torch.float64, torch.float32]


def fill_both(name, shape, dtype, source, **kwargs):
    """Fill one tensor with course_lib.init.<name> and one with torch's, from the
    same random state (a generator, or the global one); return both tensors and
    the next draw of each state, which shows both consumed the same numbers."""
    results = []
    for module in (init, torch.nn.init):
        tensor = torch.full(shape, math.nan, dtype=dtype)
        if source == "generator":
            rng = torch.Generator().manual_seed(1234)
            returned = getattr(module, name)(tensor, generator=rng, **kwargs)
            after = torch.rand(3, generator=rng, dtype=torch.float64)
        else:
            torch.manual_seed(1234)
            returned = getattr(module, name)(tensor, **kwargs)
            after = torch.rand(3, dtype=torch.float64)
        assert returned is tensor  # in place
        results.append((tensor, after))
    return results


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("nonlinearity", init.NONLINEARITIES)
@pytest.mark.parametrize("mode", init.MODES)
@pytest.mark.parametrize("name", KAIMING)
def test_kaiming_bit_for_bit(name, mode, nonlinearity, shape):
    for a in SLOPES:
        for dtype in DTYPES:
            for source in ("generator", "global"):
                kwargs = dict(a=a, mode=mode, nonlinearity=nonlinearity)
                ours, theirs = fill_both(name, shape, dtype, source, **kwargs)
                case = (a, dtype, source)
                assert not ours[0].isnan().any(), case
                assert torch.equal(ours[0], theirs[0]), case
                assert torch.equal(ours[1], theirs[1]), case


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name", XAVIER)
def test_xavier_bit_for_bit(name, shape):
    gains = [1.0, 0.0, 3] + [init.calculate_gain(n) for n in init.NONLINEARITIES]
    for gain in gains:
        for dtype in DTYPES:
            for source in ("generator", "global"):
                ours, theirs = fill_both(name, shape, dtype, source, gain=gain)
                case = (gain, dtype, source)
                assert torch.equal(ours[0], theirs[0]), case
                assert torch.equal(ours[1], theirs[1]), case


@pytest.mark.parametrize("name", KAIMING + XAVIER)
def test_defaults_match_torch(name):
    for shape in SHAPES.values():
        ours, theirs = fill_both(name, shape, torch.float64, "global")
        assert torch.equal(ours[0], theirs[0])


@pytest.mark.parametrize("name", KAIMING)
def test_kaiming_slope_none_is_torchs_default_slope(name):
    for nonlinearity in ("leaky_relu", "relu"):
        kwargs = dict(a=None, nonlinearity=nonlinearity)
        ours, theirs = fill_both(name, (9, 4, 3), torch.float64, "generator", **kwargs)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    with_none = fill_both(name, (9, 4), torch.float64, "global", a=None)[0][0]
    with_001 = fill_both(name, (9, 4), torch.float64, "global", a=0.01)[0][0]
    assert torch.equal(with_none, with_001)


@pytest.mark.parametrize("name", KAIMING + XAVIER)
def test_parameter_filled_without_history(name):
    weight = nn.Parameter(torch.zeros(8, 4, dtype=torch.float64))
    getattr(init, name)(weight, generator=torch.Generator().manual_seed(0))
    assert weight.grad_fn is None and weight.requires_grad
    assert (weight != 0).all()


def test_variance_formulas():
    """Large samples have the variances the docstrings derive (4 sigma bounds)."""
    rng = torch.Generator().manual_seed(0)
    w = torch.empty(400, 250, dtype=torch.float64)  # fan_in 250, fan_out 400
    cases = {
        "kaiming_normal_": (dict(nonlinearity="relu"), 2 / 250),
        "kaiming_uniform_": (dict(nonlinearity="relu", mode="fan_out"), 2 / 400),
        "xavier_normal_": (dict(), 2 / 650),
        "xavier_uniform_": (dict(gain=5 / 3), (5 / 3) ** 2 * 2 / 650),
    }
    for name, (kwargs, variance) in cases.items():
        getattr(init, name)(w, generator=rng, **kwargs)
        sampled = w.pow(2).mean().item()
        # the sample variance of 1e5 draws is within 4 * sqrt(2/1e5) ~ 1.8%
        assert sampled == pytest.approx(variance, rel=0.018), name
    init.kaiming_uniform_(w, nonlinearity="relu", generator=rng)
    bound = math.sqrt(6 / 250)
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.999 * bound


# --- fans --------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer",
    [
        nn.Linear(5, 3),
        nn.Conv1d(3, 4, 5),
        nn.Conv2d(2, 6, (3, 2)),
        nn.Conv2d(4, 8, 3, groups=2),
        nn.Conv3d(2, 3, (2, 3, 4)),
        nn.ConvTranspose2d(3, 5, 2),
    ],
    ids=repr,
)
def test_fans_of_real_layers(layer):
    weight = layer.weight
    expected = torch.nn.init._calculate_fan_in_and_fan_out(weight)
    assert init.fan_in_and_fan_out(weight) == expected
    receptive = math.prod(weight.shape[2:])
    assert init.fan_in_and_fan_out(weight) == (
        weight.shape[1] * receptive,
        weight.shape[0] * receptive,
    )


def test_fans_by_hand():
    assert init.fan_in_and_fan_out(torch.empty(3, 5)) == (5, 3)
    assert init.fan_in_and_fan_out(torch.empty(16, 3, 5, 5)) == (75, 400)
    assert init.fan_in_and_fan_out(torch.empty(4, 2, 3)) == (6, 12)


# --- gains -------------------------------------------------------------------


@pytest.mark.parametrize("nonlinearity", init.NONLINEARITIES)
def test_gain_equals_torch(nonlinearity):
    assert init.calculate_gain(nonlinearity) == torch.nn.init.calculate_gain(
        nonlinearity
    )


def test_gain_values():
    expected = {"linear": 1, "conv2d": 1, "sigmoid": 1, "tanh": 5 / 3, "selu": 0.75}
    expected["relu"] = math.sqrt(2)
    expected["leaky_relu"] = math.sqrt(2 / (1 + 0.01**2))
    for name, gain in expected.items():
        assert init.calculate_gain(name) == gain, name
        assert isinstance(init.calculate_gain(name), float)


@pytest.mark.parametrize("param", [None, 0, 0.2, 1, 3, -0.5, 0.0])
def test_leaky_relu_param(param):
    ours = init.calculate_gain("leaky_relu", param)
    assert ours == torch.nn.init.calculate_gain("leaky_relu", param)
    slope = 0.01 if param is None else param
    assert ours == pytest.approx(math.sqrt(2 / (1 + slope**2)), rel=1e-15)


def test_param_ignored_except_for_leaky_relu():
    for name in init.NONLINEARITIES:
        if name != "leaky_relu":
            assert init.calculate_gain(name, 0.3) == init.calculate_gain(name)
    assert init.calculate_gain("leaky_relu", np.float64(0.2)) == (
        torch.nn.init.calculate_gain("leaky_relu", 0.2)
    )


# --- nn.Linear's default -----------------------------------------------------


def test_linear_default_is_kaiming_uniform_sqrt5():
    """nn.Linear's reset_parameters: weight U(-1/sqrt(fan_in), 1/sqrt(fan_in)) via
    kaiming_uniform_(a=sqrt(5)), then bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    torch.manual_seed(7)
    layer = nn.Linear(20, 6)
    torch.manual_seed(7)
    weight, bias = torch.empty(6, 20), torch.empty(6)
    init.kaiming_uniform_(weight, a=math.sqrt(5))
    bias.uniform_(-1 / math.sqrt(20), 1 / math.sqrt(20))
    assert torch.equal(layer.weight.detach(), weight)
    assert torch.equal(layer.bias.detach(), bias)
    # sqrt(3) * gain / sqrt(fan_in) with gain sqrt(2 / (1 + 5)) is 1 / sqrt(fan_in)
    gain = init.calculate_gain("leaky_relu", math.sqrt(5))
    assert math.sqrt(3) * gain == pytest.approx(1.0, rel=1e-15)


# --- errors ------------------------------------------------------------------


@pytest.mark.parametrize("name", KAIMING)
@pytest.mark.parametrize("mode", ["fan", "FAN_IN", "fan_avg", None])
def test_unknown_mode(name, mode):
    with pytest.raises(
        ValueError, match=r"mode must be one of \('fan_in', 'fan_out'\)"
    ):
        getattr(init, name)(torch.empty(3, 4), mode=mode)


@pytest.mark.parametrize("name", KAIMING)
def test_unknown_nonlinearity(name):
    with pytest.raises(
        ValueError, match=r"nonlinearity must be one of .*'selu'.*'gelu'"
    ):
        getattr(init, name)(torch.empty(3, 4), nonlinearity="gelu")
    with pytest.raises(ValueError, match="nonlinearity must be one of .*'linear'"):
        init.calculate_gain("Tanh")
    with pytest.raises(ValueError):  # torch agrees it is not a nonlinearity
        torch.nn.init.calculate_gain("gelu")


@pytest.mark.parametrize("name", KAIMING + XAVIER)
@pytest.mark.parametrize("shape", [(5,), ()])
def test_fewer_than_two_dims(name, shape):
    with pytest.raises(ValueError):
        getattr(torch.nn.init, name)(torch.empty(shape))
    with pytest.raises(ValueError, match="at least 2 dimensions.*got shape"):
        getattr(init, name)(torch.empty(shape))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.fan_in_and_fan_out(torch.empty(shape))


@pytest.mark.parametrize("param", [True, "0.2", math.nan, math.inf, [0.1]])
def test_bad_slope(param):
    with pytest.raises(ValueError, match="param must be a finite real number"):
        init.calculate_gain("leaky_relu", param)
    with pytest.raises(ValueError, match="a must be a finite real number"):
        init.kaiming_normal_(torch.empty(3, 4), a=param)


@pytest.mark.parametrize("name", XAVIER)
@pytest.mark.parametrize("gain", [-1.0, math.nan, "1", True])
def test_bad_gain(name, gain):
    with pytest.raises(ValueError, match="gain must be a real number >= 0"):
        getattr(init, name)(torch.empty(3, 4), gain=gain)


@pytest.mark.parametrize("name", KAIMING + XAVIER)
def test_not_a_tensor(name):
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor, got ndarray"):
        getattr(init, name)(np.zeros((3, 4)))


@pytest.mark.parametrize("name", KAIMING)
@pytest.mark.parametrize("shape", [(0, 4), (3, 0, 2), (0,)])
def test_kaiming_empty_tensor_warns_like_torch(name, shape):
    for module in (init, torch.nn.init):
        with pytest.warns(UserWarning, match="zero-element tensors is a no-op"):
            out = getattr(module, name)(torch.empty(shape))
        assert out.shape == shape


@pytest.mark.parametrize("name", XAVIER)
def test_xavier_empty(name):
    for shape in [(0, 4), (3, 0)]:  # one fan is still positive: nothing to fill
        ours, theirs = fill_both(name, shape, torch.float64, "generator")
        assert ours[0].shape == theirs[0].shape == shape
        assert torch.equal(ours[1], theirs[1])
    with pytest.raises(ZeroDivisionError):
        getattr(torch.nn.init, name)(torch.empty(0, 0))
    with pytest.raises(ValueError, match="fan_in \\+ fan_out > 0"):
        getattr(init, name)(torch.empty(0, 0))


def test_signatures_match_torch():
    import inspect

    for name in KAIMING + XAVIER + ["calculate_gain"]:
        ours = inspect.signature(getattr(init, name)).parameters
        theirs = inspect.signature(getattr(torch.nn.init, name)).parameters
        assert list(ours) == list(theirs), name
        for key in ours:
            assert ours[key].default == theirs[key].default, (name, key)


# --- activation_statistics ---------------------------------------------------


def tiny_net():
    """Linear(2, 3) -> Tanh -> Linear(3, 2) -> ReLU -> Linear(2, 2), float64, with
    weights chosen so that one tanh unit saturates and one ReLU unit is dead."""
    net = nn.Sequential(
        nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)
    ).double()
    values = [
        [[4.0, 0.0], [0.5, -0.5], [0.0, 1.0]],  # unit 0 saturates for |x0| >= 1
        [0.0, 0.1, -0.2],
        [[1.0, -1.0, 0.5], [-0.1, -0.1, -0.1]],  # unit 1 is negative here
        [0.1, -2.0],  # ... and its bias keeps it off: a dead ReLU
        [[1.0, 2.0], [-1.0, 0.5]],
        [0.0, 0.3],
    ]
    with torch.no_grad():
        for p, v in zip(net.parameters(), values, strict=True):
            p.copy_(torch.tensor(v, dtype=torch.float64))
    return net


TINY_X = torch.tensor(
    [[1.0, 0.5], [-1.5, 2.0], [0.2, -0.3], [2.0, 1.0]], dtype=torch.float64
)
TINY_Y = torch.tensor([0, 1, 1, 0])


def by_hand(net):
    """The forward and backward pass of tiny_net written out with matrices."""
    W1, b1, W2, b2, W3, b3 = (p.detach() for p in net.parameters())
    z1 = TINY_X @ W1.T + b1  # (4, 3)
    h1 = torch.tanh(z1)
    z2 = h1 @ W2.T + b2  # (4, 2)
    h2 = z2.clamp(min=0)
    logits = h2 @ W3.T + b3  # (4, 2)
    onehot = F.one_hot(TINY_Y, 2).double()
    d_logits = (logits.softmax(dim=1) - onehot) / len(TINY_Y)  # mean cross entropy
    d_z2 = (d_logits @ W3) * (z2 > 0)
    d_z1 = (d_z2 @ W2) * (1 - h1**2)
    return (h1, d_z1), (h2, d_z2)


def test_statistics_by_hand():
    net = tiny_net()
    stats = init.activation_statistics(net, TINY_X, TINY_Y)
    assert [(s.name, s.kind) for s in stats] == [("1", "Tanh"), ("3", "ReLU")]
    (h1, g1), (h2, g2) = by_hand(net)
    for s, h, g in [(stats[0], h1, g1), (stats[1], h2, g2)]:
        torch.testing.assert_close(s.activations, h, rtol=1e-14, atol=0)
        torch.testing.assert_close(s.gradients, g, rtol=1e-12, atol=1e-15)
        assert s.mean == pytest.approx(h.mean().item(), rel=1e-14)
        assert s.std == pytest.approx(np.std(h.numpy()), rel=1e-12)
        assert s.grad_mean == pytest.approx(g.mean().item(), rel=1e-10)
        assert s.grad_std == pytest.approx(np.std(g.numpy()), rel=1e-10)
    # tanh unit 0 has z = 4 x0: |tanh| > 0.99 for |x0| >= 1, i.e. 3 samples of 4
    assert (h1[:, 0].abs() > 0.99).tolist() == [True, True, False, True]
    assert (h1[:, 1:].abs() <= 0.99).all()
    assert stats[0].saturated == 3 / 12
    assert stats[0].dead == 0.0  # saturated for some samples, not for all
    assert stats[0].grad_zero == 0.0
    # ReLU unit 1 is off for all 4 samples; unit 0 is off where z2 <= 0
    assert (h2[:, 1] == 0).all()
    off = int((h2[:, 0] == 0).sum())
    assert off < 4
    assert stats[1].saturated == (4 + off) / 8
    assert stats[1].dead == 1 / 2
    assert stats[1].grad_zero == (4 + off) / 8  # every upstream gradient is non-zero


def test_sigmoid_rule_and_conv_shapes():
    """Sigmoid saturates where |2h - 1| > 0.99; a conv net's units are the
    entries of one sample's (C, L) output."""
    conv = nn.Conv1d(1, 2, 3, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[3.0, 3.0, 3.0]], [[0.1, 0.0, -0.1]]]))
    net = nn.Sequential(conv, nn.Sigmoid(), nn.Flatten(), nn.Linear(16, 2)).double()
    X = torch.tensor([[1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0]])
    X = X.double().view(1, 1, 10)  # (N, 1, 10): channel 0 sums 3 * (3 inputs)
    (s,) = init.activation_statistics(net, X)
    h = torch.sigmoid(conv(X)).detach()  # (1, 2, 8)
    assert s.activations.shape == (1, 2, 8)
    expected = ((h - 0.5).abs() > 0.495).double().mean().item()
    assert s.saturated == expected
    # channel 0 sees z = 9, 9, 3, -3, -6, -3, 0, 0; |2h - 1| > 0.99 where
    # |z| > 2 artanh(0.99) = 5.29: z = 9, 9 and -6. Channel 1 stays near 0.5.
    assert s.saturated == 3 / 16
    assert s.dead == 3 / 16  # one sample: saturated here means for all samples
    assert s.gradients is None and s.grad_std is None


def test_model_left_as_it_was():
    net = tiny_net()
    net.eval()
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = copy.deepcopy(net.state_dict())
    init.activation_statistics(net, TINY_X, TINY_Y)
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])
    for p in net.parameters():
        assert torch.equal(p.grad, torch.full_like(p, 0.5))
    for module in net.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
    assert not nn.modules.module._global_forward_hooks


def test_hooks_removed_after_an_error():
    tanh = nn.Tanh()
    # one module used twice
    net = nn.Sequential(nn.Linear(2, 2), tanh, nn.Linear(2, 2), tanh)
    with pytest.raises(ValueError, match="module '1' must be called once per forward"):
        init.activation_statistics(net, torch.randn(3, 2))
    assert not tanh._forward_hooks
    net = tiny_net()
    with pytest.raises(RuntimeError):  # the input has the wrong width
        init.activation_statistics(net, torch.randn(3, 5, dtype=torch.float64))
    assert [m for m in net.modules() if m._forward_hooks] == []


def test_statistics_errors():
    with pytest.raises(ValueError, match="model must be a model with nn.Tanh"):
        init.activation_statistics(nn.Sequential(nn.Linear(2, 2)), torch.randn(3, 2))
    inplace = nn.Sequential(nn.Linear(2, 2), nn.ReLU(inplace=True))
    with pytest.raises(ValueError, match="module '1' must be not in-place"):
        init.activation_statistics(inplace, torch.randn(3, 2))
    with pytest.raises(ValueError, match="loss_fn must be a callable"):
        init.activation_statistics(tiny_net(), TINY_X, TINY_Y, loss_fn="mse")


def test_summary_and_no_grad_context():
    net = tiny_net()
    with torch.no_grad():  # the statistics still need a graph for the gradients
        stats = init.activation_statistics(net, TINY_X, TINY_Y)
    row = stats[1].summary()
    assert set(row) == {"name", "kind", "mean", "std", "saturated", "dead"} | {
        "grad_mean",
        "grad_std",
        "grad_zero",
    }
    assert row["dead"] == 0.5 and row["kind"] == "ReLU"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = init.activation_statistics(net, TINY_X, TINY_Y)
    assert torch.equal(again[0].gradients, stats[0].gradients)
