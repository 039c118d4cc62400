"""Tests for course_lib.regularize: dropout bit-equal to F.dropout and statistically
right (mean kept, drop fraction within its binomial bound), vanilla vs inverted
dropout, label smoothing against F.cross_entropy(label_smoothing=) (values and
gradients, float64) and the eps/(C-1) convention against its definition written
out, penalties against hand-computed sums, noise statistics, weights restored
after weight noise, stochastic depth bit-equal to torchvision."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from course_lib import regularize as R

F64 = torch.float64
# Statistical tests use fixed seeds and a bound of Z standard deviations of the
# exact (binomial or normal) sampling distribution: a correct implementation
# fails one with probability below 1e-6, a wrong scale (no rescaling, a
# rescaling at test time too, a p for 1 - p) misses it by hundreds of them.
Z = 5.0
N_STAT = 200_000


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed), dtype=F64)


# ---------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(1000,), (8, 3, 5, 5)])
def test_dropout_bit_equal_to_torch_for_the_same_rng_state(p, shape):
    x = randn(*shape)
    torch.manual_seed(7)
    expected = F.dropout(x, p)
    after_torch = torch.rand(3)
    torch.manual_seed(7)
    got = R.dropout(x, p)
    assert torch.equal(got, expected)
    assert torch.equal(torch.rand(3), after_torch)  # the same number of draws
    assert torch.equal(R.dropout(x, p, generator=gen(7)), expected)


def test_dropout_gradient_and_inplace_match_torch():
    x = randn(50, 20).requires_grad_()
    torch.manual_seed(3)
    (F.dropout(x, 0.3) * randn(50, 20, seed=1)).sum().backward()
    expected, x.grad = x.grad, None
    torch.manual_seed(3)
    (R.dropout(x, 0.3) * randn(50, 20, seed=1)).sum().backward()
    assert torch.equal(x.grad, expected)
    a, b = randn(40), randn(40)
    torch.manual_seed(5)
    out_torch = F.dropout(a, 0.4, inplace=True)
    torch.manual_seed(5)
    out = R.dropout(b, 0.4, inplace=True)
    assert out is b and torch.equal(b, a) and torch.equal(out, out_torch)


def test_dropout_eval_p0_and_p1():
    x = randn(30, 4)
    assert R.dropout(x, 0.7, training=False) is x
    assert R.dropout(x, 0.0) is x
    assert torch.equal(R.dropout(x, 1.0), torch.zeros_like(x))
    assert torch.equal(R.dropout(x, 1.0), F.dropout(x, 1.0))
    layer = R.Dropout(0.7).eval()
    assert layer(x) is x


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("seed", [0, 1])
def test_dropout_keeps_the_mean_and_drops_a_fraction_p(p, seed):
    # On x = 1 the output is K / ((1 - p) n) with K ~ Binomial(n, 1 - p).
    out = R.dropout(torch.ones(N_STAT, dtype=F64), p, generator=gen(seed))
    mean_sd = math.sqrt(p / ((1 - p) * N_STAT))
    assert abs(out.mean().item() - 1.0) < Z * mean_sd
    dropped = (out == 0).double().mean().item()
    assert abs(dropped - p) < Z * math.sqrt(p * (1 - p) / N_STAT)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-15)


def test_vanilla_dropout_draws_the_same_mask_unscaled():
    x, p = randn(500), 0.3
    inverted = R.dropout(x, p, generator=gen(4))
    vanilla = R.vanilla_dropout(x, p, generator=gen(4))
    assert torch.equal(vanilla == 0, inverted == 0)
    torch.testing.assert_close(vanilla, inverted * (1 - p), rtol=1e-15, atol=0)
    assert torch.equal(R.vanilla_dropout(x, p, training=False), x * (1 - p))
    assert R.vanilla_dropout(x, 0.0, training=False) is x
    assert torch.equal(R.vanilla_dropout(x, 1.0), torch.zeros_like(x))


@pytest.mark.parametrize("p", [0.25, 0.6])
def test_vanilla_and_inverted_training_means_equal_their_eval_outputs(p):
    # The same expectation: each form's average over many masks is its own
    # test-time output (x for inverted, (1 - p) x for vanilla), entry by entry.
    x, draws = randn(40), 20_000
    g_inv, g_van = gen(10), gen(11)
    inverted = torch.stack([R.dropout(x, p, generator=g_inv) for _ in range(draws)])
    vanilla = torch.stack(
        [R.vanilla_dropout(x, p, generator=g_van) for _ in range(draws)]
    )
    sd_inverted = x.abs() * math.sqrt(p / (1 - p) / draws)
    sd_vanilla = x.abs() * math.sqrt(p * (1 - p) / draws)
    eval_inverted = R.dropout(x, p, training=False)
    eval_vanilla = R.vanilla_dropout(x, p, training=False)
    assert ((inverted.mean(0) - eval_inverted).abs() < Z * sd_inverted).all()
    assert ((vanilla.mean(0) - eval_vanilla).abs() < Z * sd_vanilla).all()
    # and vanilla without its test-time factor would be off by p |x|
    assert ((vanilla.mean(0) - x).abs() > Z * sd_vanilla).all()


def test_dropout_modules_follow_train_and_eval():
    x = randn(6, 10)
    layer = R.Dropout(0.4, generator=gen(2))
    assert torch.equal(layer(x), R.dropout(x, 0.4, generator=gen(2)))
    vanilla = R.VanillaDropout(0.4, generator=gen(2))
    assert torch.equal(vanilla(x), R.vanilla_dropout(x, 0.4, generator=gen(2)))
    assert torch.equal(vanilla.eval()(x), 0.6 * x)
    assert repr(layer) == repr(nn.Dropout(0.4)) == "Dropout(p=0.4, inplace=False)"
    ours = inspect.signature(R.Dropout).parameters
    theirs = inspect.signature(nn.Dropout).parameters
    assert [(k, v.default) for k, v in theirs.items()] == [
        (k, v.default) for k, v in ours.items() if k != "generator"
    ]


@pytest.mark.parametrize("fn", [R.dropout, R.vanilla_dropout])
def test_dropout_rejects_bad_arguments(fn):
    x = randn(5)
    for p in (-0.1, 1.1, float("nan"), True):
        with pytest.raises(ValueError, match=r"p must be a real number in \[0, 1\]"):
            fn(x, p)
    with pytest.raises(ValueError, match="training must be True or False"):
        fn(x, 0.5, training=1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        fn(x, 0.5, generator=0)
    with pytest.raises(ValueError, match="p must be"):
        R.Dropout(p=2)


# ------------------------------------------------------- label smoothing


def logits_and_target(n, c, seed, extra=()):
    g = gen(seed)
    logits = (3 * torch.randn(n, c, *extra, generator=g, dtype=F64)).requires_grad_()
    return logits, torch.randint(0, c, (n, *extra), generator=g)


def value_and_grad(loss_fn, logits):
    logits.grad = None
    value = loss_fn(logits)
    value.backward(torch.linspace(0.5, 1.5, value.numel(), dtype=F64).view_as(value))
    return value.detach(), logits.grad.clone()


@pytest.mark.parametrize("smoothing", [0.0, 0.05, 0.1, 0.3, 0.9])
@pytest.mark.parametrize("num_classes", [2, 5, 10])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_label_smoothing_equals_torch(smoothing, num_classes, reduction, weighted):
    logits, target = logits_and_target(17, num_classes, seed=num_classes)
    weight = torch.rand(num_classes, generator=gen(1), dtype=F64) + 0.1
    weight = weight if weighted else None
    kw = dict(weight=weight, reduction=reduction)
    ours = value_and_grad(
        lambda z: R.label_smoothing_cross_entropy(z, target, smoothing, **kw), logits
    )
    theirs = value_and_grad(
        lambda z: F.cross_entropy(z, target, label_smoothing=smoothing, **kw), logits
    )
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_label_smoothing_equals_torch_with_extra_dimensions(reduction):
    logits, target = logits_and_target(4, 6, seed=3, extra=(3, 2))  # (N, C, H, W)
    weight = torch.arange(1.0, 7.0, dtype=F64)
    for w in (None, weight):
        kw = dict(weight=w, reduction=reduction)
        ours = R.label_smoothing_cross_entropy(logits, target, 0.2, **kw)
        theirs = F.cross_entropy(logits, target, label_smoothing=0.2, **kw)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def others_by_definition(logits, target, eps, weight):
    """-sum_c w_c q_c log p_c with q_y = 1 - eps, q_c = eps / (C - 1) otherwise."""
    log_p = torch.log_softmax(logits, dim=1)
    num_classes, losses = logits.shape[1], []
    for i, y in enumerate(target.tolist()):
        loss = -(1 - eps) * weight[y] * log_p[i, y]
        for c in range(num_classes):
            if c != y:
                loss = loss - eps / (num_classes - 1) * weight[c] * log_p[i, c]
        losses.append(loss)
    return torch.stack(losses)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4, 0.95])
@pytest.mark.parametrize("num_classes", [2, 3, 7])
@pytest.mark.parametrize("weighted", [False, True])
def test_others_convention_equals_its_definition(smoothing, num_classes, weighted):
    logits, target = logits_and_target(9, num_classes, seed=num_classes + 20)
    weight = torch.rand(num_classes, generator=gen(2), dtype=F64) + 0.1
    weight = weight if weighted else torch.ones(num_classes, dtype=F64)
    per_sample = others_by_definition(logits, target, smoothing, weight)
    expected = {"none": per_sample, "sum": per_sample.sum()}
    expected["mean"] = per_sample.sum() / weight[target].sum()
    for reduction, value in expected.items():
        got = R.label_smoothing_cross_entropy(
            logits, target, smoothing, spread="others",
            weight=weight if weighted else None, reduction=reduction,
        )  # fmt: skip
        torch.testing.assert_close(got, value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("spread", ["all", "others"])
def test_label_smoothing_gradient_is_softmax_minus_target(spread):
    # d/dz of -sum_c q_c log softmax(z)_c is softmax(z) - q, whatever q.
    logits, target = logits_and_target(12, 5, seed=8)
    loss = R.label_smoothing_cross_entropy(
        logits, target, 0.3, spread=spread, reduction="sum"
    )
    loss.backward()
    q = R.smoothed_targets(target, 5, 0.3, spread, dtype=F64)
    expected = torch.softmax(logits.detach(), dim=1) - q
    torch.testing.assert_close(logits.grad, expected, rtol=1e-12, atol=1e-14)


def test_smoothed_targets_in_both_conventions():
    target = torch.tensor([0, 3, 1, 3])
    q_all = R.smoothed_targets(target, 4, 0.2, "all", dtype=F64)
    q_others = R.smoothed_targets(target, 4, 0.2, "others", dtype=F64)
    rows = torch.arange(4)
    torch.testing.assert_close(q_all.sum(1), torch.ones(4, dtype=F64))
    torch.testing.assert_close(q_others.sum(1), torch.ones(4, dtype=F64))
    assert torch.allclose(q_all[rows, target], torch.tensor(0.85, dtype=F64))
    assert torch.allclose(q_others[rows, target], torch.tensor(0.8, dtype=F64))
    assert torch.allclose(q_all[0, 1:], torch.tensor(0.05, dtype=F64))
    assert torch.allclose(q_others[0, 1:], torch.tensor(0.2 / 3, dtype=F64))
    assert torch.equal(R.smoothed_targets(target, 4, 0.0), F.one_hot(target, 4).float())
    # eps spread over the others equals eps * C / (C - 1) spread over all
    assert torch.allclose(q_others, R.smoothed_targets(target, 4, 0.8 / 3, dtype=F64))


def test_label_smoothing_module_matches_cross_entropy_loss():
    logits, target = logits_and_target(10, 4, seed=5)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=F64)
    ours = R.LabelSmoothingCrossEntropy(0.15, weight=weight)
    theirs = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.15)
    torch.testing.assert_close(ours(logits, target), theirs(logits, target))
    assert torch.equal(ours.state_dict()["weight"], weight)


def test_label_smoothing_rejects_bad_arguments():
    logits, target = logits_and_target(4, 3, seed=0)
    loss = R.label_smoothing_cross_entropy
    for eps in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"smoothing must be a real number in"):
            loss(logits, target, eps)
    with pytest.raises(ValueError, match="smoothing must be"):
        R.LabelSmoothingCrossEntropy(1.0)
    with pytest.raises(ValueError, match="weight must be None or a 1-D tensor"):
        R.LabelSmoothingCrossEntropy(0.1, weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="spread must be one of"):
        loss(logits, target, spread="wrong")
    with pytest.raises(ValueError, match="reduction must be one of"):
        loss(logits, target, reduction="avg")
    with pytest.raises(TypeError, match="target must be a tensor of class indices"):
        loss(logits, target.double())
    with pytest.raises(ValueError, match=r"target must be class indices in \[0, 2\]"):
        loss(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"target must be a tensor of shape \(4,\)"):
        loss(logits, target[:3])
    with pytest.raises(ValueError, match=r"weight must be None or a tensor of shape"):
        loss(logits, target, weight=torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match=r"logits.shape\[1\] must be an integer >= 2"):
        loss(logits[:, :1], torch.zeros(4, dtype=torch.int64))


# -------------------------------------------------------------- penalties


def hand_model():
    """Linear(2, 2) -> BatchNorm1d(2) -> Linear(2, 1), with values chosen by hand."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1)).double()
    values = [
        [[1.0, -2.0], [3.0, -4.0]], [5.0, 6.0],  # first Linear
        [1.5, -0.5], [0.0, 2.0],  # BatchNorm scale and shift
        [[-0.5, 0.25]], [7.0],  # last Linear
    ]  # fmt: skip
    with torch.no_grad():
        for p, v in zip(model.parameters(), values, strict=True):
            p.copy_(torch.tensor(v, dtype=F64))
    return model


def test_penalized_parameters_choose_weights_or_all():
    model = hand_model()
    weights = R.penalized_parameters(model)
    assert [id(p) for p in weights] == [id(model[0].weight), id(model[2].weight)]
    assert len(R.penalized_parameters(model, "all")) == 6
    assert len(R.penalized_parameters(model.parameters(), "all")) == 6


def test_penalties_equal_hand_computed_sums():
    model = hand_model()
    # weights: |1|+|-2|+|3|+|-4|+|-0.5|+|0.25|; the rest adds 5+6+1.5+0.5+0+2+7
    assert R.l1_penalty(model).item() == 10.75
    assert R.l1_penalty(model, include="all").item() == 10.75 + 22.0
    # half the sum of squares: (1+4+9+16+0.25+0.0625)/2; rest (25+36+2.25+0.25+4+49)/2
    assert R.l2_penalty(model).item() == 15.15625
    assert R.l2_penalty(model, include="all").item() == 15.15625 + 58.25
    assert R.elastic_net_penalty(model, 0.3).item() == pytest.approx(
        0.3 * 10.75 + 0.7 * 15.15625, rel=1e-15
    )
    assert R.elastic_net_penalty(model, 1.0).item() == 10.75
    assert R.elastic_net_penalty(model, 0.0).item() == 15.15625


def test_penalty_gradients():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0  # torch's subgradient of |w| at 0 is 0
    w = [model[0].weight, model[2].weight]
    cases = [
        (lambda: R.l1_penalty(model), [torch.sign(p) for p in w]),
        (lambda: R.l2_penalty(model), [p.detach() for p in w]),
        (
            lambda: R.elastic_net_penalty(model, 0.25),
            [0.25 * torch.sign(p) + 0.75 * p.detach() for p in w],
        ),
    ]
    for penalty, expected in cases:
        model.zero_grad(set_to_none=True)
        penalty().backward()
        for p, e in zip(w, expected, strict=True):
            torch.testing.assert_close(p.grad, e, rtol=1e-15, atol=0)
        assert model[0].bias.grad is None and model[1].weight.grad is None
    model.zero_grad(set_to_none=True)
    R.l2_penalty(model, include="all").backward()
    for p in model.parameters():
        torch.testing.assert_close(p.grad, p.detach(), rtol=1e-15, atol=0)


def test_l2_penalty_with_sgd_equals_weight_decay():
    def train(use_penalty):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
        decay = 0.0 if use_penalty else 0.1
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=decay)
        X, y = randn(32, 5, seed=1), randn(32, 2, seed=2)
        for _ in range(20):
            optimizer.zero_grad()
            loss = F.mse_loss(model(X), y)
            if use_penalty:
                loss = loss + 0.1 * R.l2_penalty(model, include="all")
            loss.backward()
            optimizer.step()
        return list(model.parameters())

    for a, b in zip(train(True), train(False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_penalties_reject_bad_arguments():
    model = hand_model()
    with pytest.raises(ValueError, match="include must be one of"):
        R.l1_penalty(model, include="biases")
    with pytest.raises(ValueError, match="l1_ratio must be a real number in"):
        R.elastic_net_penalty(model, 1.5)
    with pytest.raises(ValueError, match="model must have a parameter with ndim >= 2"):
        R.l2_penalty(nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="model must have a parameter for"):
        R.l2_penalty([], include="all")
    with pytest.raises(TypeError, match="model must be an nn.Module or tensors"):
        R.l1_penalty([1.0, 2.0])


# ------------------------------------------------------------------ noise


@pytest.mark.parametrize("std", [0.3, 2.0])
def test_gaussian_noise_mean_std_and_shape(std):
    x = torch.full((N_STAT,), 4.0, dtype=F64)
    noise = R.gaussian_noise(x, std, generator=gen(6)) - x
    assert abs(noise.mean().item()) < Z * std / math.sqrt(N_STAT)
    # the sample sd of n normals has sd close to std / sqrt(2 n)
    assert abs(noise.std().item() - std) < Z * std / math.sqrt(2 * N_STAT)
    within = (noise.abs() < std).double().mean().item()
    one_sigma = math.erf(1 / math.sqrt(2))  # 0.6827 for a normal
    assert abs(within - one_sigma) < Z * math.sqrt(one_sigma * (1 - one_sigma) / N_STAT)


def test_gaussian_noise_eval_seed_and_module():
    x = randn(20, 3)
    assert R.gaussian_noise(x, 0.5, training=False) is x
    assert R.gaussian_noise(x, 0.0) is x
    a = R.gaussian_noise(x, 0.5, generator=gen(1))
    assert torch.equal(a, R.gaussian_noise(x, 0.5, generator=gen(1)))
    assert not torch.equal(a, R.gaussian_noise(x, 0.5, generator=gen(2)))
    layer = R.GaussianNoise(0.5, generator=gen(1))
    assert torch.equal(layer(x), a)
    assert layer.eval()(x) is x
    with pytest.raises(ValueError, match="std must be a real number >= 0"):
        R.gaussian_noise(x, -1.0)


def test_weight_noise_perturbs_then_restores_exactly():
    model = nn.Sequential(nn.Linear(300, 300), nn.Tanh(), nn.Linear(300, 2)).double()
    before = [p.detach().clone() for p in model.parameters()]
    with R.weight_noise(model, 0.05, generator=gen(3)):
        noise = model[0].weight.detach() - before[0]
        assert torch.equal(model[0].bias, before[1])  # include="weights"
        assert not torch.equal(model[2].weight, before[2])
    n = noise.numel()
    assert abs(noise.mean().item()) < Z * 0.05 / math.sqrt(n)
    assert abs(noise.std().item() - 0.05) < Z * 0.05 / math.sqrt(2 * n)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
    with pytest.raises(KeyError), R.weight_noise(model, 1.0, include="all"):
        raise KeyError("inside the block")
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


def test_weight_noise_gradient_is_taken_at_the_noisy_weights():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    X, y = randn(10, 3, seed=1), randn(10, 1, seed=2)
    with R.weight_noise(model, 0.1, generator=gen(4)):
        noisy = [p.detach().clone() for p in model.parameters()]
        F.mse_loss(model(X), y).backward()
    grads = [p.grad for p in model.parameters()]
    copy = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        for p, v in zip(copy.parameters(), noisy, strict=True):
            p.copy_(v)
    F.mse_loss(copy(X), y).backward()
    for g, p in zip(grads, copy.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-14, atol=0)
    # the same seed gives the same noise
    with R.weight_noise(model, 0.1, generator=gen(4)):
        again = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(noisy, again, strict=True))
    # a backward pass after the block is refused, as the docstring warns
    with R.weight_noise(model, 0.1, generator=gen(5)):
        loss = F.mse_loss(model(X), y)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_weight_noise_rejects_bad_arguments():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="std must be a real number >= 0"):
        with R.weight_noise(model, -0.1):
            pass
    with pytest.raises(ValueError, match="include must be one of"):
        with R.weight_noise(model, 0.1, include="bias"):
            pass


# -------------------------------------------------------- stochastic depth


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("shape", [(16, 3, 4, 4), (16, 5)])
def test_stochastic_depth_bit_equal_to_torchvision(mode, p, shape):
    x = randn(*shape)
    for seed in range(3):
        torch.manual_seed(seed)
        expected = torchvision.ops.stochastic_depth(x, p, mode)
        torch.manual_seed(seed)
        assert torch.equal(R.stochastic_depth(x, p, mode), expected)
        got = R.stochastic_depth(x, p, mode, generator=gen(seed))
        assert torch.equal(got, expected)
    assert R.stochastic_depth(x, p, mode, training=False) is x
    assert R.stochastic_depth(x, 0.0, mode) is x


def test_stochastic_depth_module_matches_torchvision():
    x = randn(8, 6)
    ours = R.StochasticDepth(0.3, "row")
    theirs = torchvision.ops.StochasticDepth(0.3, "row")
    assert repr(ours) == repr(theirs)
    torch.manual_seed(1)
    expected = theirs(x)
    torch.manual_seed(1)
    assert torch.equal(ours(x), expected)
    assert ours.eval()(x) is x


def test_stochastic_depth_drops_rows_or_whole_batches_at_rate_p():
    p, rows = 0.3, 50_000
    out = R.stochastic_depth(torch.ones(rows, 4, dtype=F64), p, "row", generator=gen(0))
    dropped = (out == 0).all(dim=1)
    assert ((out == 0).any(dim=1) == dropped).all()  # a row goes as a whole
    assert abs(dropped.double().mean().item() - p) < Z * math.sqrt(p * (1 - p) / rows)
    g, calls, ones = gen(1), 4000, torch.ones(5, 3)
    outs = [R.stochastic_depth(ones, p, "batch", generator=g) for _ in range(calls)]
    all_zero = [bool((o == 0).all()) for o in outs]
    assert all(z or bool((o != 0).all()) for z, o in zip(all_zero, outs, strict=True))
    assert abs(sum(all_zero) / calls - p) < Z * math.sqrt(p * (1 - p) / calls)


def test_stochastic_depth_rates_and_bad_arguments():
    assert R.stochastic_depth_rates(4) == (0.125, 0.25, 0.375, 0.5)
    assert R.stochastic_depth_rates(1, 0.2) == (0.2,)
    x = randn(4, 2)
    with pytest.raises(ValueError, match=r"p must be a real number in \[0, 1\]"):
        R.stochastic_depth(x, 1.5, "row")
    with pytest.raises(ValueError, match="mode must be one of"):
        R.stochastic_depth(x, 0.5, "column")
    with pytest.raises(ValueError, match="num_blocks must be a positive integer"):
        R.stochastic_depth_rates(0)
    with pytest.raises(ValueError, match="final_p must be"):
        R.stochastic_depth_rates(3, -0.5)
