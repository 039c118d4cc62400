"""course_lib.sanity: every check passes on a correct set-up and fails, with
a message naming what it saw, on the broken one it is meant to catch."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import sanity
from course_lib.data import Standardizer
from course_lib.models import MLP


def _data(n=200, d=20, num_classes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen)
    y = torch.arange(n) % num_classes  # every class present
    return X, y[torch.randperm(n, generator=gen)]


def _mlp(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MLP(20, [32], 10, **kwargs)


# --- initial loss, labels, probabilities ---------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_initial_loss_passes_for_a_fresh_classifier(seed):
    X, y = _data(seed=seed)
    check = sanity.initial_loss_check(_mlp(seed), X, y, 10)
    assert check.ok, check
    assert abs(check.details["loss"] / math.log(10) - 1) <= 0.1
    assert check.details["expected"] == pytest.approx(math.log(10))
    assert str(check).startswith("[ok] initial_loss")


def test_initial_loss_flags_a_softmax_fed_to_cross_entropy():
    X, y = _data()
    model = nn.Sequential(_mlp(), nn.Softmax(dim=1))
    check = sanity.initial_loss_check(model, X, y, 10)
    assert not check.ok and "probabilities" in check.message
    # the loss alone would not have told: it also starts near log C
    assert abs(check.details["loss"] / math.log(10) - 1) < 0.05
    assert str(check).startswith("[FAILED]")


def test_initial_loss_flags_overconfident_logits_and_wrong_shape():
    X, y = _data()
    model = _mlp()
    with torch.no_grad():
        model[-1].weight.mul_(30.0)  # last layer 30x too large
    check = sanity.initial_loss_check(model, X, y, 10)
    assert not check.ok and "outside" in check.message
    assert check.details["loss"] > 1.5 * math.log(10)
    torch.manual_seed(0)
    check = sanity.initial_loss_check(MLP(20, [32], 9), X, y, 10)
    assert not check.ok and "shape (200, 9)" in check.message


@pytest.mark.parametrize(
    "shift, words", [(1, "shifted by one (they run 1..10)"), (-1, "run -1..8")]
)
def test_labels_shifted_by_one(shift, words):
    X, y = _data()
    check = sanity.initial_loss_check(_mlp(), X, y + shift, 10)
    assert not check.ok and words in check.message
    assert "shifted by one" in check.message


def test_label_check_cases():
    _, y = _data()
    assert sanity.label_check(y, 10).ok
    assert not sanity.label_check(y.float(), 10).ok
    assert not sanity.label_check(y[:, None], 10).ok
    # many samples and a class never seen: the labels were mapped wrongly
    merged = torch.where(y == 3, 4, y)
    check = sanity.label_check(merged, 10)
    assert not check.ok and check.details["missing"] == [3]
    # few samples: a missing class can be chance, not an error
    assert sanity.label_check(torch.tensor([0, 1, 2, 5]), 10).ok
    assert not sanity.label_check(torch.tensor([0, 10]), 10).ok
    with pytest.raises(ValueError, match="num_classes"):
        sanity.label_check(y, 0)
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        sanity.label_check([0, 1], 2)


def test_outputs_look_like_probabilities():
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    assert sanity.outputs_look_like_probabilities(logits.softmax(dim=1))
    assert not sanity.outputs_look_like_probabilities(logits)
    assert not sanity.outputs_look_like_probabilities(logits.log_softmax(dim=1))
    assert not sanity.outputs_look_like_probabilities(logits.sigmoid())
    with pytest.raises(ValueError, match="outputs"):
        sanity.outputs_look_like_probabilities(logits[0])
    with pytest.raises(ValueError, match="atol"):
        sanity.outputs_look_like_probabilities(logits, atol=-1.0)


# --- shapes ----------------------------------------------------------------------


def test_shape_check_catches_the_broadcasting_loss():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(8, 1, generator=gen), torch.randn(8, generator=gen)
    check = sanity.shape_check(pred, target)
    assert not check.ok and check.details["broadcast"] == (8, 8)
    assert "(8, 8)" in check.message and "64 pairs instead of 8" in check.message
    # what the broken loss computes: the mean over every (prediction, target) pair
    broken = ((pred - target) ** 2).mean()
    pairs = torch.stack([(p - t) ** 2 for p in pred[:, 0] for t in target]).mean()
    torch.testing.assert_close(broken, pairs)
    right = ((pred.squeeze(1) - target) ** 2).mean()
    assert not torch.isclose(broken, right)
    assert sanity.shape_check(pred.squeeze(1), target).ok
    check = sanity.shape_check(torch.zeros(3, 2), torch.zeros(4))
    assert not check.ok and "do not broadcast" in check.message


def test_shape_guard():
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    mse = sanity.shape_guard(F.mse_loss)
    assert mse.__name__ == "mse_loss"
    torch.testing.assert_close(mse(pred, target), F.mse_loss(pred, target))
    torch.testing.assert_close(mse(pred, target, reduction="sum"),
                               F.mse_loss(pred, target, reduction="sum"))  # fmt: skip
    with pytest.raises(ValueError, match=r"mse_loss: .*broadcast to \(6, 6\)"):
        mse(pred[:, None], target)
    with pytest.raises(ValueError, match="loss_fn"):
        sanity.shape_guard(3)


# --- stale gradients (no zero_grad) ----------------------------------------------


def _train(model, opt, X, y, *, zero="before", micro=1, steps=4):
    for _ in range(steps):
        if zero == "before":
            opt.zero_grad()
        if zero == "zeros":
            opt.zero_grad(set_to_none=False)
        for Xb, yb in zip(X.chunk(micro), y.chunk(micro), strict=True):
            F.cross_entropy(model(Xb), yb).backward()
        opt.step()
        if zero == "after":
            opt.zero_grad()


@pytest.mark.parametrize("zero", ["before", "after", "zeros"])
def test_stale_gradient_probe_passes_correct_loops(zero):
    X, y = _data()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with sanity.StaleGradientProbe(model, opt) as probe:
        _train(model, opt, X, y, zero=zero)
    check = probe.result()
    assert check.ok, check
    assert check.details["gradients"] == 4 * 4  # 4 steps x 4 parameter tensors


def test_stale_gradient_probe_catches_missing_zero_grad():
    X, y = _data()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with sanity.StaleGradientProbe(model, opt) as probe:
        _train(model, opt, X, y, zero="never")
    check = probe.result()
    assert not check.ok and check.details["stale"] == 3 * 4  # every step but the first
    assert "12 of 16 of the gradients" in check.message
    _train(model, opt, X, y, zero="never")  # hooks are gone after the block
    assert probe.gradients == 16


def test_stale_gradient_probe_and_deliberate_accumulation():
    X, y = _data()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with sanity.StaleGradientProbe(model, opt) as probe:
        _train(model, opt, X, y, micro=2)  # two backwards per step, on purpose
    assert probe.result().ok
    with sanity.StaleGradientProbe(model) as probe:  # no optimizer: any sum counts
        _train(model, opt, X, y, micro=2)
    assert not probe.result().ok and probe.stale == 4 * 4
    with sanity.StaleGradientProbe(model) as probe:
        pass
    assert not probe.result().ok and "no gradient" in probe.result().message
    with pytest.raises(ValueError, match="optimizer"):
        sanity.StaleGradientProbe(model, optimizer="sgd")


# --- frozen, detached, dead, forgotten parameters --------------------------------


class _Detached(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head = nn.Linear(20, 16), nn.Linear(16, 10)

    def forward(self, X):
        return self.head(torch.relu(self.body(X)).detach())  # cuts off the body


def _backward(model, X, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(X), y).backward()


def test_frozen_parameters_correct_and_before_backward():
    X, y = _data()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    check = sanity.frozen_parameters(model, opt)
    assert not check.ok and "after loss.backward()" in check.message
    _backward(model, X, y)
    check = sanity.frozen_parameters(model, opt)
    assert check.ok, check
    assert all(names == [] for names in check.details.values())


def test_frozen_parameters_finds_each_kind():
    X, y = _data()
    model = _Detached()
    _backward(model, X, y)
    check = sanity.frozen_parameters(model)
    assert not check.ok and check.details["grad_none"] == ["body.weight", "body.bias"]
    model = _mlp()
    model[0].requires_grad_(False)
    _backward(model, X, y)
    check = sanity.frozen_parameters(model)
    assert check.details["requires_grad_false"] == ["0.weight", "0.bias"]
    assert not check.ok
    assert sanity.frozen_parameters(model, frozen_ok=True).ok
    model = _mlp()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU off: the first layer is dead
    _backward(model, X, y)
    check = sanity.frozen_parameters(model)
    # the next layer sees only zeros, so its weight gets a zero gradient too
    assert check.details["grad_zero"] == ["0.weight", "0.bias", "2.weight"]
    model = _mlp()
    opt = torch.optim.SGD(model[-1].parameters(), lr=0.1)  # forgot the body
    _backward(model, X, y)
    check = sanity.frozen_parameters(model, opt)
    assert check.details["not_in_optimizer"] == ["0.weight", "0.bias"]
    assert "not_in_optimizer: 0.weight, 0.bias" in check.message


# --- evaluation mode -------------------------------------------------------------


def test_eval_mode_check_dropout():
    X, _ = _data()
    model = _mlp(dropout=0.5)
    check = sanity.eval_mode_check(model, X)
    assert not check.ok and "two calls" in check.message
    assert check.details["train_mode"] == ["2"]
    state = torch.get_rng_state()
    sanity.eval_mode_check(model, X)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert sanity.eval_mode_check(model.eval(), X).ok


def test_eval_mode_check_batch_norm():
    X, _ = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 10))  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check = sanity.eval_mode_check(model, X)
    assert not check.ok and "changes with its batch" in check.message
    assert "two calls" not in check.message  # batch norm is deterministic
    assert check.details["train_mode"] == ["1"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # running stats restored
    assert sanity.eval_mode_check(model.eval(), X).ok
    with pytest.raises(ValueError, match="X must be a batch of at least 4"):
        sanity.eval_mode_check(model, X[:3])


# --- splits and preprocessing ----------------------------------------------------


def test_split_overlap_exact_and_near_duplicates():
    gen = torch.Generator().manual_seed(0)
    A, B = torch.randn(300, 12, generator=gen), torch.randn(80, 12, generator=gen)
    assert sanity.split_overlap(A, B).ok
    leaked = B.clone()
    leaked[[3, 17, 40]] = A[[0, 5, 299]]
    check = sanity.split_overlap(A, leaked, chunk=7)
    assert not check.ok and check.details["indices"] == [3, 17, 40]
    assert check.details["fraction"] == pytest.approx(3 / 80)
    assert "3 of 80 test rows (3.8%)" in check.message
    near = leaked.clone()
    near[[3, 17, 40]] += 1e-3 * torch.randn(3, 12, generator=gen)
    assert sanity.split_overlap(A, near).ok  # not exact copies any more
    check = sanity.split_overlap(A, near, atol=0.05)
    assert check.details["indices"] == [3, 17, 40]
    assert check.details["median_nearest"] > 1.0  # the scale atol is set against
    # NumPy images of any shape
    imgs = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert sanity.split_overlap(imgs, imgs[1:]).details["indices"] == [0]
    with pytest.raises(ValueError, match="X_test"):
        sanity.split_overlap(A, B[:, :5])
    with pytest.raises(ValueError, match="atol"):
        sanity.split_overlap(A, B, atol=-1.0)


def test_split_overlap_matches_brute_force():
    gen = torch.Generator().manual_seed(3)
    A = torch.randint(0, 3, (60, 4), generator=gen).float()  # many repeats
    B = torch.randint(0, 3, (40, 4), generator=gen).float()
    expected = [i for i in range(40) if any(torch.equal(B[i], a) for a in A)]
    assert sanity.split_overlap(A, B).details["indices"] == expected
    assert 0 < len(expected) < 40


def _splits(seed=0):
    gen = torch.Generator().manual_seed(seed)
    X_train = 3 + 2 * torch.randn(400, 6, generator=gen)
    X_test = 3.5 + 2 * torch.randn(100, 6, generator=gen)  # a shifted test split
    X_train[:, 2] = 7.0  # a constant feature
    X_test[:, 2] = 7.0
    return X_train, X_test


def test_check_fitted_on_train():
    X_train, X_test = _splits()
    scale = Standardizer.fit(X_train)
    assert sanity.check_fitted_on_train(scale.mean, scale.std, X_train, X_test).ok
    sample_std = X_train.std(dim=0)  # torch's default, the sample std
    assert sanity.check_fitted_on_train(X_train.mean(0), sample_std, X_train).ok
    assert sanity.check_fitted_on_train(X_train.mean(0), None, X_train).ok
    whole = Standardizer.fit(X_train, per_feature=False)
    assert sanity.check_fitted_on_train(whole.mean, whole.std, X_train).ok
    leak = Standardizer.fit(torch.cat([X_train, X_test]))
    check = sanity.check_fitted_on_train(leak.mean, leak.std, X_train, X_test)
    assert not check.ok and "training and held-out data together" in check.message
    other = Standardizer.fit(X_test)
    check = sanity.check_fitted_on_train(other.mean, other.std, X_train, X_test)
    assert not check.ok and "held-out data's" in check.message
    check = sanity.check_fitted_on_train(other.mean, other.std, X_train)
    assert not check.ok and "not the training split" in check.message
    # right mean, wrong std
    assert not sanity.check_fitted_on_train(scale.mean, leak.std, X_train).ok
    with pytest.raises(ValueError, match="rtol"):
        sanity.check_fitted_on_train(scale.mean, scale.std, X_train, rtol=0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_standardized_check(seed):
    X_train, X_test = _splits(seed)
    right = Standardizer.fit(X_train)(X_train)
    check = sanity.standardized_check(right)
    assert check.ok, check
    leaked = Standardizer.fit(torch.cat([X_train, X_test]))(X_train)
    check = sanity.standardized_check(leaked)
    assert not check.ok and check.details["mean_offset"] > 0.02
    with pytest.raises(ValueError, match="Z_train"):
        sanity.standardized_check(right[0])
