"""Tests for course_lib.norm: every layer against its torch.nn counterpart
(float64, several training and evaluation steps: outputs, input and parameter
gradients, running statistics, num_batches_tracked), the hand-written batch
norm backward (gradcheck and F.batch_norm's autograd), torch's errors,
state_dict round trips both ways, weight norm against torch's
parametrization, signatures and argument validation."""

import copy
import inspect
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import norm

D = torch.float64
# Largest deviation from torch measured here (torch 2.14.1, CPU, float64) over
# every comparison below: 6.2e-15 absolute on values of unit scale, except
# group norm with one or two values per group (3e-13: there x - mean is rounding
# noise, amplified by 1/sqrt(eps) ~ 316). The tolerance leaves room for another
# CPU's rounding and still catches any change to the math (a biased/unbiased
# swap changes running_var by a factor m/(m-1), a few per cent).
TOL = {"rtol": 1e-10, "atol": 1e-12}
# torch changed its norm layers after 2.6.0, the oldest release the course
# supports (`make test-compat`): batch, instance and group norm gained the
# keyword-only ``bias=``, and the layers' repr gained ``bias=...``; course_lib.norm
# follows the newer torch. On an older torch (found out from torch itself, not a
# version number) the reference layer without a bias is built as that torch
# allows, and the ``bias`` entry is left out of the signature and repr checks.
TORCH_NORM_BIAS_ARG = "bias" in inspect.signature(nn.BatchNorm1d).parameters
TORCH_NORM_BIAS_REPR = "bias=" in repr(nn.LayerNorm(3))


def name(value) -> str:
    """A test id: a class's or function's name, else the value as text."""
    return getattr(value, "__name__", str(value))


def close(actual, expected, what):
    torch.testing.assert_close(actual, expected, **TOL, msg=lambda m: f"{what}: {m}")


def make_pair(ours_cls, torch_cls, *args, seed=0, **kwargs):
    """Our module and torch's, float64, sharing random affine parameters.

    The parameters reach ours through ``load_state_dict(strict=True)`` of
    torch's state, so every comparison also tests that direction of loading.
    """
    theirs = dict(kwargs)
    no_bias_arg = "bias" not in inspect.signature(torch_cls).parameters
    drop_bias = no_bias_arg and theirs.pop("bias", True) is False
    ref = torch_cls(*args, **theirs).double()
    if drop_bias:  # what bias=False builds where torch has the argument
        ref.register_parameter("bias", None)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(1 + 0.5 * torch.randn(p.shape, generator=generator, dtype=D))
    ours = ours_cls(*args, **kwargs).double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def same_state(ours, ref):
    """Same parameters and buffers (names, dtypes, values; counts exactly)."""
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert list(mine) == list(theirs)
    for key, value in theirs.items():
        assert mine[key].dtype == value.dtype, key
        if value.dtype == torch.long:
            assert torch.equal(mine[key], value), key
        else:
            close(mine[key], value, key)


def step(ours, ref, x, grad_seed):
    """One forward and backward of both on x; outputs and every gradient equal."""
    inputs = [x.clone().requires_grad_() for _ in range(2)]
    outputs = [module(inp) for module, inp in zip((ours, ref), inputs, strict=True)]
    close(outputs[0], outputs[1], "output")
    generator = torch.Generator().manual_seed(grad_seed)
    grad = torch.randn(outputs[1].shape, generator=generator, dtype=D)
    for module, out in zip((ours, ref), outputs, strict=True):
        module.zero_grad()
        out.backward(grad)
    close(inputs[0].grad, inputs[1].grad, "input gradient")
    pairs = zip(ours.named_parameters(), ref.named_parameters(), strict=True)
    for (name, p), (_, q) in pairs:
        close(p.grad, q.grad, f"gradient of {name}")
    same_state(ours, ref)


def run(ours, ref, shape, modes="TTTTTEEETTE", seed=1):
    """Steps in train (T) and eval (E) mode, in that order, on new batches."""
    generator = torch.Generator().manual_seed(seed)
    for i, mode in enumerate(modes):
        ours.train(mode == "T")
        ref.train(mode == "T")
        x = 2 * torch.randn(shape, generator=generator, dtype=D) + 0.5
        step(ours, ref, x, grad_seed=100 + i)


BN_SHAPES = [
    (norm.BatchNorm1d, nn.BatchNorm1d, (8, 3)),
    (norm.BatchNorm1d, nn.BatchNorm1d, (5, 3, 4)),
    (norm.BatchNorm2d, nn.BatchNorm2d, (4, 3, 5, 2)),
]
BN_OPTIONS = [
    {},
    {"eps": 1e-3},
    {"affine": False},
    {"track_running_stats": False},
    {"bias": False, "eps": 0.5},
]


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("options", BN_OPTIONS, ids=name)
@pytest.mark.parametrize("ours_cls, torch_cls, shape", BN_SHAPES, ids=name)
def test_batch_norm_matches_torch(ours_cls, torch_cls, shape, options, momentum):
    ours, ref = make_pair(ours_cls, torch_cls, 3, momentum=momentum, **options)
    run(ours, ref, shape)
    if ref.track_running_stats:
        assert ours.num_batches_tracked.item() == 7


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_eval_after_many_steps(momentum):
    ours, ref = make_pair(norm.BatchNorm2d, nn.BatchNorm2d, 4, momentum=momentum)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(300):
            x = torch.randn(3, 4, 2, 2, generator=generator, dtype=D) * 3 - 1
            ours(x), ref(x)
    same_state(ours, ref)
    assert ours.num_batches_tracked.item() == 300
    run(ours, ref, (2, 4, 3, 3), modes="EEE")
    # The estimates approach the data's mean -1 and variance 9, within 5 standard
    # errors: of an average over 3,600 values (None), or over ~230 (momentum 0.1,
    # a window of ~19 batches of 12)
    values = 3600 if momentum is None else 230
    assert (ours.running_mean + 1).abs().max() < 5 * 3 / values**0.5
    assert (ours.running_var - 9).abs().max() < 5 * 9 * (2 / values) ** 0.5


def test_cumulative_average_is_the_plain_mean_of_batch_statistics():
    bn = norm.BatchNorm1d(2, momentum=None).double()
    batches = [torch.randn(6, 2, generator=torch.Generator().manual_seed(s), dtype=D)
               for s in range(5)]  # fmt: skip
    for x in batches:
        bn(x)
    close(bn.running_mean, torch.stack([x.mean(0) for x in batches]).mean(0), "mean")
    expected = torch.stack([x.var(0, unbiased=True) for x in batches]).mean(0)
    close(bn.running_var, expected, "var")


def test_running_var_is_unbiased_and_eval_leaves_it():
    bn = norm.BatchNorm1d(3, momentum=1.0).double()
    x = torch.randn(4, 3, 5, dtype=D)
    y = bn(x)
    close(bn.running_var, x.var(dim=(0, 2), unbiased=True), "running_var")
    biased = x.var(dim=(0, 2), unbiased=False)[None, :, None]
    close(y, (x - x.mean(dim=(0, 2), keepdim=True)) / torch.sqrt(biased + 1e-5), "y")
    bn.eval()
    before = copy.deepcopy(bn.state_dict())
    bn(torch.randn(4, 3, 5, dtype=D))
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize(
    "ours_cls, torch_cls, shape",
    [(norm.BatchNorm1d, nn.BatchNorm1d, (1, 3)),
     (norm.BatchNorm1d, nn.BatchNorm1d, (1, 3, 1)),
     (norm.BatchNorm2d, nn.BatchNorm2d, (1, 3, 1, 1))], ids=name,
)  # fmt: skip
def test_batch_norm_single_value_per_channel(ours_cls, torch_cls, shape, track):
    ours, ref = make_pair(ours_cls, torch_cls, 3, track_running_stats=track)
    x = torch.randn(shape, dtype=D)
    for mode in ("train", "eval"):
        ours.train(mode == "train")
        ref.train(mode == "train")
        raises = mode == "train" or not track  # eval without buffers: batch stats
        if raises:
            with pytest.raises(ValueError) as theirs:
                ref(x)
            with pytest.raises(ValueError) as mine:
                ours(x)
            assert str(mine.value) == str(theirs.value)
        else:
            step(ours, ref, x, grad_seed=0)
        same_state(ours, ref)  # torch counts the failed batch; so do we


@pytest.mark.parametrize(
    "ours_cls, torch_cls, args, shape",
    [(norm.BatchNorm2d, nn.BatchNorm2d, (3,), (0, 3, 2, 2)),
     (norm.GroupNorm, nn.GroupNorm, (2, 4), (0, 4, 3)),
     (norm.LayerNorm, nn.LayerNorm, (3,), (0, 3))], ids=name,
)  # fmt: skip
def test_empty_batch_follows_torch(ours_cls, torch_cls, args, shape):
    ours, ref = make_pair(ours_cls, torch_cls, *args)
    run(ours, ref, shape, modes="TE")  # batch norm: counted, statistics kept


def test_instance_norm_empty_batch_makes_running_stats_nan_as_torch():
    x = torch.randn(0, 3, 4, dtype=D)
    for cls in (nn.InstanceNorm1d, norm.InstanceNorm1d):
        module = cls(3, track_running_stats=True).double()
        assert module(x).shape == x.shape
        assert module.running_mean.isnan().all() and module.running_var.isnan().all()


def test_modules_train_through_the_hand_written_backward():
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    assert type(norm.BatchNorm2d(3)(x).grad_fn).__name__ == "BatchNormFunctionBackward"
    assert type(norm.batch_norm(x, None, None, training=True).grad_fn).__name__ == (
        "BatchNormFunctionBackward"
    )


def test_batch_norm_function_refuses_a_second_derivative():
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    y = norm.BatchNormFunction.apply(x, None, None, 1e-5)
    (grad,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()


def test_batch_of_one_with_more_positions_trains():
    ours, ref = make_pair(norm.BatchNorm1d, nn.BatchNorm1d, 3)
    run(ours, ref, (1, 3, 4), modes="TTE")


@pytest.mark.parametrize(
    "ours_cls, torch_cls, shape",
    [(norm.BatchNorm1d, nn.BatchNorm1d, (2, 3, 4, 4)),
     (norm.BatchNorm1d, nn.BatchNorm1d, (3,)),
     (norm.BatchNorm2d, nn.BatchNorm2d, (2, 3, 4)),
     (norm.InstanceNorm1d, nn.InstanceNorm1d, (2, 3, 4, 4)),
     (norm.InstanceNorm2d, nn.InstanceNorm2d, (3, 4))], ids=name,
)  # fmt: skip
def test_wrong_input_dimension_raises_torchs_error(ours_cls, torch_cls, shape):
    x = torch.randn(shape, dtype=D)
    with pytest.raises(ValueError) as theirs:
        torch_cls(3).double()(x)
    with pytest.raises(ValueError) as mine:
        ours_cls(3).double()(x)
    assert str(mine.value) == str(theirs.value)


def test_changing_track_running_stats_after_construction_follows_torch():
    ours, ref = make_pair(norm.BatchNorm1d, nn.BatchNorm1d, 3)
    run(ours, ref, (6, 3), modes="TT")
    ours.track_running_stats = ref.track_running_stats = False
    run(ours, ref, (6, 3), modes="TTEE")  # buffers frozen, used in eval


@pytest.mark.parametrize(  # evaluation without buffers: see the bad arguments
    "training, buffers", [(True, True), (True, False), (False, True)]
)
def test_functional_batch_norm_matches_torch(training, buffers):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, 3, generator=generator, dtype=D)
    weight, bias = torch.randn(2, 4, generator=generator, dtype=D)
    stats = [torch.rand(4, generator=generator, dtype=D) + 0.5 for _ in range(2)]
    mine = [s.clone() for s in stats] if buffers else [None, None]
    theirs = [s.clone() for s in stats] if buffers else [None, None]
    y = norm.batch_norm(x, *mine, weight, bias, training, 0.3, 1e-4)
    close(y, F.batch_norm(x, *theirs, weight, bias, training, 0.3, 1e-4), "output")
    if buffers:
        close(mine[0], theirs[0], "running_mean")
        close(mine[1], theirs[1], "running_var")


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 2, 2, 3)], ids=name)
def test_batch_norm_function_gradcheck_and_torch(shape, affine):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=generator, dtype=D).requires_grad_()
    params = [torch.randn(shape[1], generator=generator, dtype=D).requires_grad_()
              for _ in range(2)] if affine else [None, None]  # fmt: skip
    inputs = (x, *params, 1e-5)
    assert torch.autograd.gradcheck(norm.BatchNormFunction.apply, inputs)
    y = norm.BatchNormFunction.apply(*inputs)
    assert type(y.grad_fn).__name__ == "BatchNormFunctionBackward"
    reference = F.batch_norm(x, None, None, *params, training=True, eps=1e-5)
    close(y, reference, "output")
    grad = torch.randn(shape, generator=generator, dtype=D)
    names = ("x", "weight", "bias") if affine else ("x",)
    wanted = [x, *params] if affine else [x]
    mine = torch.autograd.grad(y, wanted, grad)
    theirs = torch.autograd.grad(reference, wanted, grad)
    for a, b, name in zip(mine, theirs, names, strict=True):
        close(a, b, f"gradient of {name}")


def test_batch_norm_function_only_input_gradient():
    x = torch.randn(5, 2, dtype=D, requires_grad=True)
    weight = torch.randn(2, dtype=D)  # no gradient wanted
    (grad,) = torch.autograd.grad(norm.BatchNormFunction.apply(x, weight, None, 1e-5)
                                  .pow(2).sum(), x)  # fmt: skip
    reference = F.batch_norm(x, None, None, weight, training=True).pow(2).sum()
    close(grad, torch.autograd.grad(reference, x)[0], "input gradient")


@pytest.mark.parametrize(
    "normalized_shape, shape",
    [(4, (6, 4)), ((4,), (2, 3, 4)), ((3, 4), (2, 5, 3, 4)), ((2, 3, 4), (2, 3, 4))],
    ids=name,
)  # fmt: skip
@pytest.mark.parametrize(
    "options", [{}, {"eps": 1e-2}, {"elementwise_affine": False}, {"bias": False}],
    ids=name,
)  # fmt: skip
def test_layer_norm_matches_torch(normalized_shape, shape, options):
    ours, ref = make_pair(norm.LayerNorm, nn.LayerNorm, normalized_shape, **options)
    run(ours, ref, shape, modes="TTET")


def test_layer_norm_does_not_depend_on_the_batch():
    x = torch.randn(5, 7, dtype=D)
    layer = norm.LayerNorm(7).double()
    close(layer(x)[:2], layer(x[:2]), "first two rows")
    close(norm.layer_norm(x[:1], 7), F.layer_norm(x[:1], (7,)), "one row")


@pytest.mark.parametrize("num_groups", [1, 2, 4])
@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 5), (2, 4, 3, 3)], ids=name)
@pytest.mark.parametrize("options", [{}, {"affine": False}, {"eps": 0.1}], ids=name)
def test_group_norm_matches_torch(num_groups, shape, options):
    ours, ref = make_pair(norm.GroupNorm, nn.GroupNorm, num_groups, 4, **options)
    run(ours, ref, shape, modes="TTE")


def test_group_norm_single_value_follows_torchs_check():
    # torch raises when (N * C / G) * H * W == 1, even where each group has
    # only one value but the product is larger: we check the same product
    with pytest.raises(ValueError) as theirs:
        nn.GroupNorm(2, 2)(torch.randn(1, 2))
    with pytest.raises(ValueError) as mine:
        norm.GroupNorm(2, 2)(torch.randn(1, 2))
    assert str(mine.value) == str(theirs.value)
    ours, ref = make_pair(norm.GroupNorm, nn.GroupNorm, 2, 2)
    run(ours, ref, (2, 2), modes="T")  # one value per group: output is the bias


def test_group_norm_of_a_batch_of_one_holds():
    ours, ref = make_pair(norm.GroupNorm, nn.GroupNorm, 2, 4)
    run(ours, ref, (1, 4, 3, 3), modes="TE")


IN_SHAPES = [
    (norm.InstanceNorm1d, nn.InstanceNorm1d, (4, 3, 5)),
    (norm.InstanceNorm1d, nn.InstanceNorm1d, (3, 6)),  # unbatched (C, L)
    (norm.InstanceNorm2d, nn.InstanceNorm2d, (2, 3, 4, 3)),
    (norm.InstanceNorm2d, nn.InstanceNorm2d, (3, 2, 5)),  # unbatched (C, H, W)
]


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize(
    "options",
    [{}, {"affine": True}, {"track_running_stats": True},
     {"affine": True, "track_running_stats": True, "eps": 1e-2}], ids=name,
)  # fmt: skip
@pytest.mark.parametrize("ours_cls, torch_cls, shape", IN_SHAPES, ids=name)
def test_instance_norm_matches_torch(ours_cls, torch_cls, shape, options, momentum):
    ours, ref = make_pair(ours_cls, torch_cls, 3, momentum=momentum, **options)
    run(ours, ref, shape)
    if ours.track_running_stats:  # torch's instance norm never counts batches
        assert ours.num_batches_tracked.item() == 0
        moved = not torch.equal(ours.running_mean, torch.zeros(3, dtype=D))
        assert moved == (momentum is not None)  # None: momentum 0, never moves


def test_instance_norm_single_spatial_value_and_channel_mismatch():
    x = torch.randn(2, 3, 1, dtype=D)
    with pytest.raises(ValueError) as theirs:
        nn.InstanceNorm1d(3)(x)
    with pytest.raises(ValueError) as mine:
        norm.InstanceNorm1d(3)(x)
    assert str(mine.value) == str(theirs.value)
    x = torch.randn(2, 4, 5, dtype=D)
    for cls in (nn.InstanceNorm1d, norm.InstanceNorm1d):
        with pytest.raises(ValueError, match="num_features"):
            cls(3, affine=True).double()(x)
        with pytest.warns(UserWarning, match="does not match num_features"):
            y = cls(3).double()(x)
        close(y, F.instance_norm(x), "output with a mismatched count")


def _trained(module, shape, seed=5):
    generator = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(3):
        x = torch.randn(shape, generator=generator, dtype=D, requires_grad=True)
        module(x).pow(2).sum().backward()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=D))
    return module


ROUND_TRIP = [
    (norm.BatchNorm1d, nn.BatchNorm1d, (3,), {"momentum": None}, (6, 3)),
    (norm.BatchNorm2d, nn.BatchNorm2d, (3,), {"affine": False}, (2, 3, 2, 2)),
    (norm.BatchNorm2d, nn.BatchNorm2d, (3,), {"track_running_stats": False},
     (2, 3, 2, 2)),
    (norm.LayerNorm, nn.LayerNorm, ((2, 3),), {"bias": False}, (4, 2, 3)),
    (norm.GroupNorm, nn.GroupNorm, (2, 4), {}, (3, 4, 2)),
    (norm.InstanceNorm2d, nn.InstanceNorm2d, (3,),
     {"affine": True, "track_running_stats": True}, (2, 3, 3, 3)),
]  # fmt: skip


@pytest.mark.parametrize("direction", ["ours to torch", "torch to ours"])
@pytest.mark.parametrize("ours_cls, torch_cls, args, kwargs, shape", ROUND_TRIP,
                         ids=name)  # fmt: skip
def test_state_dict_round_trip(ours_cls, torch_cls, args, kwargs, shape, direction):
    source_cls, target_cls = (ours_cls, torch_cls)[:: 1 if direction[0] == "o" else -1]
    source = _trained(source_cls(*args, **kwargs).double(), shape)
    target = target_cls(*args, **kwargs).double()
    target.load_state_dict(source.state_dict(), strict=True)
    ours, ref = (source, target) if source_cls is ours_cls else (target, source)
    same_state(ours, ref)
    run(ours, ref, shape, modes="ET")


def test_reset_running_stats_and_parameters():
    bn = _trained(norm.BatchNorm1d(3).double(), (4, 3))
    assert bn.num_batches_tracked.item() == 3
    bn.reset_running_stats()
    assert torch.equal(bn.running_mean, torch.zeros(3, dtype=D))
    assert torch.equal(bn.running_var, torch.ones(3, dtype=D))
    assert bn.num_batches_tracked.item() == 0
    assert not torch.equal(bn.weight, torch.ones(3, dtype=D))
    bn.reset_parameters()
    assert torch.equal(bn.weight, torch.ones(3, dtype=D))
    assert torch.equal(bn.bias, torch.zeros(3, dtype=D))
    for module in (norm.LayerNorm(3), norm.GroupNorm(1, 3)):
        with torch.no_grad():
            module.weight.mul_(2)
        module.reset_parameters()
        assert torch.equal(module.weight, torch.ones(3))


def _weight_normed(module, dim, seed):
    torch.manual_seed(seed)
    base = module.double()
    ref = nn.utils.parametrizations.weight_norm(copy.deepcopy(base), dim=dim)
    return norm.weight_norm(base, dim=dim), ref


@pytest.mark.parametrize("dim", [0, 1, -2, -1, None])
@pytest.mark.parametrize(
    "make, shape",
    [(lambda: nn.Linear(4, 3), (5, 4)),
     (lambda: nn.Conv2d(2, 3, kernel_size=3), (2, 2, 5, 5))], ids=["Linear", "Conv2d"],
)  # fmt: skip
def test_weight_norm_matches_torch(make, shape, dim):
    ours, ref = _weight_normed(make(), dim, seed=6)
    same_state(ours, ref)
    keys = list(ref.state_dict())
    assert keys[-2:] == ["parametrizations.weight.original0",
                         "parametrizations.weight.original1"]  # fmt: skip
    generator = torch.Generator().manual_seed(7)
    for _ in range(3):  # plain SGD on (g, v, bias): the parametrised weight follows
        x = torch.randn(shape, generator=generator, dtype=D)
        step(ours, ref, x, grad_seed=8)
        for module in (ours, ref):
            with torch.no_grad():
                for p in module.parameters():
                    p.sub_(0.1 * p.grad)
        close(ours.weight, ref.weight, "weight")
    for source, target_make in ((ours, make), (ref, make)):
        target = norm.weight_norm(target_make().double(), dim=dim)
        target.load_state_dict(source.state_dict(), strict=True)
        close(target.weight, ref.weight, "weight after loading")


def test_weight_norm_decouples_magnitude():
    layer = norm.weight_norm(nn.Linear(4, 3).double())
    weight = layer.parametrizations.weight
    g, v = weight.original0, weight.original1
    close(layer.weight.norm(dim=1, keepdim=True), g, "row norms are g")
    with torch.no_grad():
        v.mul_(5.0)
    close(layer.weight.norm(dim=1, keepdim=True), g, "v's scale does not matter")


def _arguments(obj):
    parameters = inspect.signature(obj).parameters.values()
    return [(p.name, p.kind, p.default) for p in parameters]


@pytest.mark.parametrize(
    "ours, theirs",
    [(norm.BatchNorm1d, nn.BatchNorm1d), (norm.BatchNorm2d, nn.BatchNorm2d),
     (norm.LayerNorm, nn.LayerNorm), (norm.GroupNorm, nn.GroupNorm),
     (norm.InstanceNorm1d, nn.InstanceNorm1d), (norm.InstanceNorm2d, nn.InstanceNorm2d),
     (norm.batch_norm, F.batch_norm), (norm.layer_norm, F.layer_norm),
     (norm.group_norm, F.group_norm), (norm.instance_norm, F.instance_norm),
     (norm.weight_norm, nn.utils.parametrizations.weight_norm)],
    ids=name,
)  # fmt: skip
def test_signatures_and_repr_match_torch(ours, theirs):
    mine, expected = _arguments(ours), _arguments(theirs)
    keyword_bias = ("bias", inspect.Parameter.KEYWORD_ONLY, True)
    if not TORCH_NORM_BIAS_ARG and keyword_bias in mine:
        assert "bias" not in [argument[0] for argument in expected]
        mine.remove(keyword_bias)
    assert mine == expected

    def shown(module):
        text = repr(module)
        return text if TORCH_NORM_BIAS_REPR else re.sub(r", bias=\w+", "", text)

    if isinstance(ours, type) and ours is not norm.GroupNorm:
        assert shown(ours(3)) == repr(theirs(3))
    elif ours is norm.GroupNorm:
        assert shown(ours(1, 3, affine=False)) == repr(theirs(1, 3, affine=False))


@pytest.mark.parametrize(
    "build, name",
    [(lambda: norm.BatchNorm1d(0), "num_features"),
     (lambda: norm.BatchNorm1d(3.0), "num_features"),
     (lambda: norm.BatchNorm2d(3, momentum=1.5), "momentum"),
     (lambda: norm.BatchNorm2d(3, momentum="0.1"), "momentum"),
     (lambda: norm.BatchNorm1d(3, eps=-1e-5), "eps"),
     (lambda: norm.BatchNorm1d(3, affine=1), "affine"),
     (lambda: norm.InstanceNorm1d(3, track_running_stats=None), "track_running_stats"),
     (lambda: norm.LayerNorm(0), "normalized_shape"),
     (lambda: norm.LayerNorm([3, True]), "normalized_shape"),
     (lambda: norm.LayerNorm(3, bias="yes"), "bias"),
     (lambda: norm.LayerNorm(2.0), "normalized_shape"),
     (lambda: norm.GroupNorm(3, 4), "num_channels"),
     (lambda: norm.GroupNorm(0, 4), "num_groups"),
     (lambda: norm.LayerNorm(4)(torch.randn(2, 3)), "input"),
     (lambda: norm.group_norm(torch.randn(2, 4), 3), "num_groups"),
     (lambda: norm.group_norm(torch.randn(4), 2), "input"),
     (lambda: norm.BatchNorm1d(4)(torch.randn(2, 3)), "running_mean"),
     (lambda: norm.batch_norm(torch.randn(2, 3), None, None), "running_mean"),
     (lambda: norm.batch_norm(torch.randn(2, 3), None, None, training=True, eps=0),
      "eps"),
     (lambda: norm.batch_norm(torch.randn(2, 3), None, None, training=1), "training"),
     (lambda: norm.weight_norm(nn.Linear(2, 3), name="wieght"), "name"),
     (lambda: norm.weight_norm(nn.Linear(2, 3), dim=2), "dim"),
     (lambda: norm.weight_norm(torch.randn(2, 3)), "module")],
)  # fmt: skip
def test_bad_arguments_raise_value_error_naming_them(build, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        build()


def test_no_warning_on_the_ordinary_path():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norm.InstanceNorm2d(3)(torch.randn(2, 3, 4, 4))
        norm.BatchNorm1d(3)(torch.randn(4, 3))
