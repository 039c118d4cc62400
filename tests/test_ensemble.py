"""Tests for course_lib.ensemble: probability averaging against its definition,
snapshot ensembles against a loop driven by CosineAnnealingWarmRestarts, EMA and
SWA against torch.optim.swa_utils.AveragedModel update for update (float64 and
float32, BatchNorm buffers, several decays, use_buffers True/False) and against
their closed forms, update_bn against swa_utils.update_bn and against the mean
of the per-batch statistics, test-time views against random_shift, and the
argument errors."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import swa_utils
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts

from course_lib import ensemble as E
from course_lib.augment import SignalAugment, random_shift
from course_lib.data import make_loader
from course_lib.models import MLP

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------ models and data


def bn_mlp():
    return nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    )  # fmt: skip


class BNConv(nn.Module):
    """Conv2d + BatchNorm2d (momentum 0.3), and a BatchNorm1d without affine."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4, momentum=0.3)
        self.bn1 = nn.BatchNorm1d(4 * 9, affine=False)
        self.head = nn.Linear(4 * 9, 3)

    def forward(self, x):
        h = F.relu(self.bn2(self.conv(x.view(-1, 1, 6, 6))))  # (B, 4, 6, 6)
        h = F.max_pool2d(h, 2).flatten(1)  # (B, 36)
        return self.head(self.bn1(h))


MODELS = {
    "mlp": lambda: MLP(36, [10], 3, dropout=0.2),
    "bn_mlp": lambda: nn.Sequential(
        nn.Linear(36, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    ),
    "bn_conv": BNConv,
}


def batches(num, dtype=F64, seed=0, size=16):
    g = gen(seed)
    X = torch.randn(num, size, 36, generator=g, dtype=dtype) * 2 + 1
    y = torch.randint(0, 3, (num, size), generator=g)
    return list(zip(X, y, strict=True))


def sgd_steps(model, data, lr=0.05):
    """Yield after each momentum-SGD step on the batches of ``data``."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for X, y in data:
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()
        yield


# -------------------------------------------------------- averaging outputs


def test_average_probabilities_is_the_mean_of_the_softmaxes():
    z = torch.randn(5, 7, 4, generator=gen(1), dtype=F64)  # (M, N, C)
    by_hand = sum(torch.exp(z[m]) / torch.exp(z[m]).sum(1, keepdim=True)
                  for m in range(5)) / 5  # fmt: skip
    p = E.average_probabilities(z)
    assert p.shape == (7, 4)
    torch.testing.assert_close(p, by_hand, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(E.average_probabilities(list(z)), p, rtol=0, atol=0)
    torch.testing.assert_close(p.sum(1), torch.ones(7, dtype=F64))
    # one member: its own softmax; the mean of logits is a different model
    torch.testing.assert_close(E.average_probabilities(z[:1]), z[0].softmax(1))
    assert not torch.allclose(p, z.mean(0).softmax(1), atol=1e-3)


def test_ensemble_predict_uses_eval_mode_and_restores_training():
    torch.manual_seed(0)
    models = [MLP(36, [16], 3, dropout=0.5).double() for _ in range(3)]
    X = torch.randn(20, 36, generator=gen(2), dtype=F64)
    models[1].eval()
    with torch.no_grad():
        for m in models:
            m.eval()
        expected = torch.stack([m(X).softmax(1) for m in models])  # (M, N, C)
    models[0].train(), models[2].train()
    probs = E.member_probabilities(models, X)
    torch.testing.assert_close(probs, expected, rtol=0, atol=0)
    torch.testing.assert_close(E.ensemble_predict(models, X), expected.mean(0))
    assert [m.training for m in models] == [True, False, True]
    assert not probs.requires_grad


def test_accuracy_and_accuracy_by_size():
    probs = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.45, 0.55]])
    assert E.accuracy(probs, torch.tensor([0, 1, 1, 0])) == 0.5
    member = torch.rand(6, 50, 4, generator=gen(3)).softmax(-1)  # (M, N, C)
    y = torch.randint(0, 4, (50,), generator=gen(4))
    curve = E.accuracy_by_size(member, y)
    assert len(curve) == 6
    for k in range(1, 7):
        assert curve[k - 1] == E.accuracy(member[:k].mean(0), y)
    assert curve[0] == (member[0].argmax(1) == y).float().mean().item()


# ------------------------------------------------------- snapshot ensembles


def test_snapshot_ensemble_matches_a_loop_with_torch_warm_restarts():
    X = torch.randn(40, 36, generator=gen(5), dtype=F64)
    y = torch.randint(0, 3, (40,), generator=gen(6))
    torch.manual_seed(0)
    start = MLP(36, [12], 3).double()
    ours, ref = copy.deepcopy(start), copy.deepcopy(start)
    loader = make_loader(X, y, batch_size=8, shuffle=True, seed=7)  # 5 steps/epoch
    opt = torch.optim.SGD(ours.parameters(), lr=0.3, momentum=0.9)
    snaps, hists = E.snapshot_ensemble(
        ours, loader, opt, num_cycles=3, epochs_per_cycle=2, progress=False
    )
    assert len(snaps) == 3 and len(hists) == 3
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=0.9)
    sched = CosineAnnealingWarmRestarts(ref_opt, T_0=10)
    ref_loader = make_loader(X, y, batch_size=8, shuffle=True, seed=7)
    lrs, ref_snaps = [], []
    for _ in range(3):
        for _ in range(2):
            for Xb, yb in ref_loader:
                lrs.append(ref_opt.param_groups[0]["lr"])
                ref_opt.zero_grad()
                F.cross_entropy(ref(Xb), yb).backward()
                ref_opt.step()
                sched.step()
        ref_snaps.append(copy.deepcopy(ref.state_dict()))
    ours_lrs = [lr for h in hists for lr in h.step_lr]
    torch.testing.assert_close(ours_lrs, lrs, rtol=1e-14, atol=1e-15)
    assert ours_lrs[0] == 0.3 and ours_lrs[10] == 0.3 and ours_lrs[9] < 0.01
    for snap, ref_state in zip(snaps, ref_snaps, strict=True):
        for k, v in snap.state_dict().items():
            torch.testing.assert_close(v, ref_state[k], rtol=1e-12, atol=1e-14)
    assert not torch.equal(snaps[0][0].weight, snaps[2][0].weight)
    with torch.no_grad():  # snapshots are copies, not views of the model
        ours[0].weight.add_(1.0)
    assert torch.equal(snaps[2][0].weight, ref[0].weight)


def test_snapshot_ensemble_stops_at_a_non_finite_loss():
    X = torch.randn(40, 36, generator=gen(8)) * 1e3
    y = torch.randint(0, 3, (40,), generator=gen(9))
    torch.manual_seed(0)
    model = MLP(36, [12], 3)
    opt = torch.optim.SGD(model.parameters(), lr=1e12)
    loader = make_loader(X, y, batch_size=8, shuffle=False)
    snaps, hists = E.snapshot_ensemble(
        model, loader, opt, num_cycles=4, epochs_per_cycle=1, progress=False
    )
    assert hists[-1].stopped is not None
    assert len(snaps) == len(hists) - 1 < 4


# --------------------------------------------- EMA and SWA vs AveragedModel


@pytest.mark.parametrize("use_buffers", [False, True])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_ema_equals_averaged_model_update_for_update(name, decay, use_buffers):
    torch.manual_seed(0)
    model = MODELS[name]().double()
    ours = E.EMA(model, decay, use_buffers=use_buffers)
    multi = swa_utils.get_ema_multi_avg_fn(decay)
    ref = swa_utils.AveragedModel(model, multi_avg_fn=multi, use_buffers=use_buffers)
    X_test = batches(1, seed=99)[0][0]
    for step, _ in enumerate(sgd_steps(model, batches(120, seed=1))):
        ours.update_parameters(model)
        ref.update_parameters(model)
        assert states_equal(ours, ref), f"differs after update {step + 1}"
    assert int(ours.n_averaged) == 120
    ours.eval(), ref.eval()
    with torch.no_grad():
        assert torch.equal(ours(X_test), ref(X_test))
    assert not states_equal(ours.module, model) or decay == 0.0


@pytest.mark.parametrize("use_buffers", [False, True])
@pytest.mark.parametrize("name", list(MODELS))
def test_swa_equals_averaged_model_update_for_update(name, use_buffers):
    torch.manual_seed(1)
    model = MODELS[name]().double()
    ours = E.SWA(model, use_buffers=use_buffers)
    ref = swa_utils.AveragedModel(model, use_buffers=use_buffers)
    for step, _ in enumerate(sgd_steps(model, batches(150, seed=2))):
        ours.update_parameters(model)
        ref.update_parameters(model)
        assert states_equal(ours, ref), f"differs after update {step + 1}"


@pytest.mark.parametrize("average", ["ema", "swa"])
def test_float32_and_the_single_tensor_avg_fn(average):
    torch.manual_seed(2)
    model = MODELS["bn_conv"]()
    if average == "ema":
        ours = E.EMA(model, 0.95, use_buffers=True)
        ref = swa_utils.AveragedModel(
            model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.95), use_buffers=True
        )
        loose = swa_utils.AveragedModel(model, avg_fn=swa_utils.get_ema_avg_fn(0.95))
    else:
        ours = E.SWA(model, use_buffers=True)
        ref = swa_utils.AveragedModel(model, use_buffers=True)
        loose = swa_utils.AveragedModel(model, avg_fn=swa_utils.get_swa_avg_fn())
    ours_params = E.EMA(model, 0.95) if average == "ema" else E.SWA(model)
    for _ in sgd_steps(model, batches(80, dtype=torch.float32, seed=3)):
        for avg in (ours, ref, loose, ours_params):
            avg.update_parameters(model)
        assert states_equal(ours, ref)
    # avg_fn computes d a + (1 - d) p instead of a lerp: equal up to rounding
    for p, q in zip(ours_params.parameters(), loose.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_ema_and_swa_match_their_closed_forms():
    """Against the formulas, not torch: iterates given directly as tensors."""
    thetas = torch.randn(30, 5, generator=gen(10), dtype=F64)  # (T, P)
    model = nn.Linear(5, 1, bias=False).double()
    d = 0.8
    ema, swa = E.EMA(model, d), E.SWA(model)
    for t, theta in enumerate(thetas, start=1):
        with torch.no_grad():
            model.weight.copy_(theta[None])
        ema.update_parameters(model)
        swa.update_parameters(model)
        weights = torch.tensor([d ** (t - 1)] + [(1 - d) * d ** (t - s)
                                                 for s in range(2, t + 1)],
                               dtype=F64)  # fmt: skip
        assert abs(weights.sum().item() - 1) < 1e-12
        expected_ema = (weights[:, None] * thetas[:t]).sum(0)
        torch.testing.assert_close(ema.module.weight[0], expected_ema)
        torch.testing.assert_close(swa.module.weight[0], thetas[:t].mean(0))


def test_averages_load_into_averaged_model_and_back():
    torch.manual_seed(3)
    model = MODELS["bn_mlp"]().double()
    ours = E.EMA(model, 0.9, use_buffers=True)
    for _ in sgd_steps(model, batches(10, seed=4)):
        ours.update_parameters(model)
    ref = swa_utils.AveragedModel(
        MODELS["bn_mlp"]().double(), multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9),
        use_buffers=True,
    )  # fmt: skip
    ref.load_state_dict(ours.state_dict())
    assert int(ref.n_averaged) == 10 and states_equal(ref, ours)
    # both continue identically from the loaded state
    for _ in sgd_steps(model, batches(10, seed=5)):
        ours.update_parameters(model)
        ref.update_parameters(model)
    assert states_equal(ref, ours)


def test_buffers_copied_without_use_buffers_and_averaged_with():
    torch.manual_seed(4)
    model = MODELS["bn_mlp"]().double()
    copied, averaged = E.SWA(model), E.SWA(model, use_buffers=True)
    for _ in sgd_steps(model, batches(20, seed=6)):
        copied.update_parameters(model)
        averaged.update_parameters(model)
    bn = model[1]
    assert torch.equal(copied.module[1].running_mean, bn.running_mean)
    assert not torch.allclose(averaged.module[1].running_mean, bn.running_mean)
    # the integer counter is averaged then truncated at every update, so it sticks
    # at 1: 1 + (k - 1) / k < 2 (AveragedModel does the same, tested above)
    assert int(averaged.module[1].num_batches_tracked) == 1
    assert int(copied.module[1].num_batches_tracked) == 20


# ------------------------------------------------------------------ update_bn


def make_bn_loader(tuples: bool):
    X = torch.randn(70, 36, generator=gen(11), dtype=F64) * 3 + 2
    y = torch.randint(0, 3, (70,), generator=gen(12))
    if tuples:  # 70 = 4 x 16 + 6: the last batch is smaller
        return make_loader(X, y, batch_size=16, shuffle=False)
    return list(X.split(16))


@pytest.mark.parametrize("tuples", [True, False])
@pytest.mark.parametrize("name", ["bn_mlp", "bn_conv"])
def test_update_bn_equals_swa_utils(name, tuples):
    torch.manual_seed(5)
    model = MODELS[name]().double()
    list(sgd_steps(model, batches(5, seed=7)))
    ours, ref = copy.deepcopy(model), copy.deepcopy(model)
    ours.eval(), ref.eval()
    E.update_bn(make_bn_loader(tuples), ours)
    swa_utils.update_bn(make_bn_loader(tuples), ref)
    assert states_equal(ours, ref)
    assert not states_equal(ours, model)
    assert not ours.training
    momenta = [m.momentum for m in ours.modules() if hasattr(m, "momentum")]
    assert momenta == [m.momentum for m in model.modules() if hasattr(m, "momentum")]


def test_update_bn_is_the_mean_of_the_per_batch_statistics():
    torch.manual_seed(6)
    model = MODELS["bn_mlp"]().double()
    E.update_bn(make_bn_loader(True), model)
    batch_stats = []
    with torch.no_grad():
        for X in make_bn_loader(False):
            h = model[0](X)  # (B, 8): the input of the batch norm
            batch_stats.append((h.mean(0), h.var(0, unbiased=True)))
    mean = torch.stack([m for m, _ in batch_stats]).mean(0)
    var = torch.stack([v for _, v in batch_stats]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-12, atol=1e-14)
    assert int(model[1].num_batches_tracked) == 5


def test_update_bn_on_an_average_and_without_batch_norm():
    torch.manual_seed(7)
    model = MODELS["bn_mlp"]().double()
    ema = E.EMA(model, 0.9)
    ref = swa_utils.AveragedModel(
        model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9)
    )
    for _ in sgd_steps(model, batches(8, seed=8)):
        ema.update_parameters(model)
        ref.update_parameters(model)
    E.update_bn(make_bn_loader(True), ema)
    swa_utils.update_bn(make_bn_loader(True), ref)
    assert states_equal(ema, ref)
    plain = MLP(36, [5], 3).double()
    before = copy.deepcopy(plain.state_dict())
    E.update_bn(make_bn_loader(True), plain)
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())


# ------------------------------------------------------ test-time augmentation


@pytest.mark.parametrize("shape", [(9, 40), (9, 2, 40)])
@pytest.mark.parametrize("mode", ["circular", "zeros"])
def test_shifted_views_are_the_shifts_random_shift_draws(shape, mode):
    X = torch.randn(*shape, generator=gen(13))
    views = E.shifted_views(X, range(-3, 4), mode=mode)
    assert len(views) == 7 and all(v.shape == X.shape for v in views)
    drawn = torch.randint(-3, 4, (9,), generator=gen(14))  # what random_shift draws
    shifted = random_shift(X, 3, mode=mode, generator=gen(14))
    for n, s in enumerate(drawn.tolist()):
        assert torch.equal(shifted[n], views[s + 3][n])
    assert torch.equal(views[3], X)
    if mode == "circular":
        assert torch.equal(views[5], torch.roll(X, 2, dims=-1))
    else:
        assert torch.equal(views[5][..., 2:], X[..., :-2])
        assert (views[5][..., :2] == 0).all() and (views[0][..., -3:] == 0).all()


def test_random_views_and_tta_predict():
    X = torch.randn(12, 40, generator=gen(15))
    augment = SignalAugment(max_shift=3, noise_std=0.1)
    views = E.random_views(X, augment, 4, generator=gen(16))
    g = gen(16)
    expected = [augment(X, generator=g) for _ in range(4)]
    assert all(torch.equal(v, w) for v, w in zip(views, expected, strict=True))
    torch.manual_seed(8)
    model = MLP(40, [16], 10, dropout=0.3)
    model.train()
    p = E.tta_predict(model, [X, *views])
    model.eval()
    with torch.no_grad():
        by_hand = torch.stack([model(v).softmax(1) for v in [X, *views]]).mean(0)
    torch.testing.assert_close(p, by_hand, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(E.tta_predict(model, [X]), model(X).softmax(1))


# ------------------------------------------------------------- bad arguments


def _model():
    return MLP(36, [4], 3)


Z, VE = torch.zeros, ValueError
BAD = [
    (lambda: E.average_probabilities(Z(4, 3)), VE, r"^logits must be"),
    (lambda: E.average_probabilities([]), VE, r"^logits must be"),
    (lambda: E.average_probabilities([Z(2, 3), Z(3, 3)]),
     VE, r"^logits must be .* of one shape"),
    (lambda: E.average_probabilities(Z(2, 4, 3, dtype=torch.long)),
     VE, r"^logits must be a float tensor"),
    (lambda: E.ensemble_predict([], Z(2, 36)), VE, r"^models must be"),
    (lambda: E.member_probabilities(_model(), Z(2, 36)), VE,
     r"^models must be a non-empty sequence of nn.Module"),
    (lambda: E.accuracy(Z(4, 3), Z(5)), VE,
     r"^probs and y must be shapes"),
    (lambda: E.accuracy_by_size(Z(4, 3), Z(4)), VE,
     r"^member_probs must be a tensor \(M, N, C\)"),
    (lambda: E.EMA(_model(), 1.5), VE, r"^decay must be a real number in \[0, 1\]"),
    (lambda: E.EMA(_model(), -0.1), VE, r"^decay must be"),
    (lambda: E.EMA(_model(), True), VE, r"^decay must be"),
    (lambda: E.EMA(_model(), float("nan")), VE, r"^decay must be"),
    (lambda: E.SWA(_model(), use_buffers=1), VE, r"^use_buffers must be True or"),
    (lambda: E.SWA("model"), VE, r"^model must be an nn.Module"),
    (lambda: E.SWA(_model()).update_parameters(MLP(36, [5], 3)), VE,
     r"^model must be of the architecture being averaged"),
    (lambda: E.EMA(_model()).update_parameters(None), VE, r"^model must be"),
    (lambda: E.shifted_views(Z(3, 40), [40]), VE,
     r"^shifts must be a non-empty sequence of integers in \[-39, 39\]"),
    (lambda: E.shifted_views(Z(3, 40), []), VE, r"^shifts must be"),
    (lambda: E.shifted_views(Z(3, 40), 2), VE, r"^shifts must be"),
    (lambda: E.shifted_views(Z(3, 40), [1], mode="reflect"), VE,
     r"^mode must be one of \('circular', 'zeros'\)"),
    (lambda: E.shifted_views(Z(40), [1]), VE, r"^X must be a float"),
    (lambda: E.shifted_views(Z(3, 40, dtype=torch.long), [1]), VE,
     r"^X must be a float tensor"),
    (lambda: E.random_views(Z(3, 40), None, 2), VE,
     r"^augment must be a callable"),
    (lambda: E.random_views(Z(3, 40), SignalAugment(), 0), VE,
     r"^num_views must be a positive integer"),
    (lambda: E.random_views(Z(3, 40), SignalAugment(), 2, generator=3),
     TypeError, r"^generator must be a torch.Generator"),
    (lambda: E.tta_predict(_model(), []), VE, r"^views must be a non-empty"),
    (lambda: E.tta_predict(_model(), Z(3, 36)), VE, r"^views must be"),
]  # fmt: skip


@pytest.mark.parametrize("call, error, message", BAD)
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_cycles": 0, "epochs_per_cycle": 1}, r"^num_cycles must be a positive"),
        ({"num_cycles": 2, "epochs_per_cycle": 1.5}, r"^epochs_per_cycle must be a"),
        ({"num_cycles": 2, "epochs_per_cycle": 1, "min_factor": 1.0},
         r"^min_factor must be a real number in \[0, 1\)"),
    ],
)  # fmt: skip
def test_snapshot_ensemble_bad_arguments(kwargs, message):
    model = _model()
    loader = make_loader(torch.zeros(8, 36), torch.zeros(8, dtype=torch.long),
                         batch_size=4, shuffle=False)  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=message):
        E.snapshot_ensemble(model, loader, opt, progress=False, **kwargs)
