"""Tests for course_lib.generalization: random labels and inputs (statistics
within binomial/normal bounds, determinism, the real splits left alone),
minimum-norm least squares against NumPy's lstsq and torch's pinv (tall, wide,
rank-deficient; exact fit and least norm), ridge against scikit-learn's Ridge
and its alpha -> 0 limit, and the double-descent sweep (interpolation past
p = n, a test-error peak there, flattened by ridge)."""

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from course_lib import data
from course_lib import generalization as G

F64 = torch.float64
Z = 5.0  # statistical bounds: a correct implementation fails below 1e-6


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed), dtype=F64)


# ---------------------------------------------------------------- random labels


def test_random_labels_fraction_zero_is_identity_and_input_untouched():
    y = torch.randint(10, (500,), generator=gen(0))
    before = y.clone()
    assert torch.equal(G.random_labels(y, 10, fraction=0.0, generator=gen(1)), y)
    out = G.random_labels(y, 10, generator=gen(1))
    assert torch.equal(y, before) and out.dtype == y.dtype
    assert torch.equal(out, G.random_labels(y, 10, generator=gen(1)))
    assert not torch.equal(out, G.random_labels(y, 10, generator=gen(2)))


def test_random_labels_are_uniform_and_independent_of_the_true_ones():
    n, c = 100_000, 7
    y = torch.zeros(n, dtype=torch.long)  # all class 0
    counts = torch.bincount(G.random_labels(y, c, generator=gen(0)), minlength=c)
    sd = math.sqrt(n * (1 / c) * (1 - 1 / c))
    assert torch.all((counts - n / c).abs() < Z * sd)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_random_labels_change_the_expected_fraction(fraction):
    n, c = 50_000, 10
    y = torch.randint(c, (n,), generator=gen(3))
    out = G.random_labels(y, c, fraction=fraction, generator=gen(4))
    p_changed = fraction * (1 - 1 / c)  # a redrawn label may be the true one
    sd = math.sqrt(n * p_changed * (1 - p_changed))
    assert abs(int((out != y).sum()) - n * p_changed) < Z * sd


def test_random_labels_bad_arguments():
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"fraction must be a real number in \[0, 1\]"):
        G.random_labels(y, 3, fraction=1.5)
    with pytest.raises(ValueError, match="y must be a 1-D integer tensor"):
        G.random_labels(y.float(), 3)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 1\]"):
        G.random_labels(y, 2)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        G.random_labels(y, 0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        G.random_labels(y, 3, generator=1)


# ---------------------------------------------------------------- random inputs


def test_gaussian_inputs_match_each_features_mean_and_std():
    n, d = 20_000, 5
    X = randn(n, d) * torch.arange(1.0, d + 1) + 10 * torch.arange(d)
    R = G.random_inputs(X, "gaussian", generator=gen(1))
    assert R.shape == X.shape and R.dtype == X.dtype
    se = X.std(0) / math.sqrt(n)
    assert torch.all((R.mean(0) - X.mean(0)).abs() < Z * se)
    assert torch.allclose(R.std(0), X.std(0), rtol=Z * math.sqrt(2 / n))
    assert abs(float(torch.corrcoef(torch.stack([R[:, 0], X[:, 0]]))[0, 1])) < 0.05


def test_shuffled_pixels_is_one_permutation_for_all_samples():
    X = randn(50, 12)
    R = G.random_inputs(X, "shuffled_pixels", generator=gen(2))
    perm = [int(torch.nonzero(X[0] == v)[0]) for v in R[0]]  # from the first row
    assert sorted(perm) == list(range(12)) and perm != list(range(12))
    assert torch.equal(R, X[:, perm])


def test_random_pixels_is_a_new_permutation_per_sample():
    X = randn(50, 12)
    R = G.random_inputs(X, "random_pixels", generator=gen(3))
    assert torch.equal(R.sort(1).values, X.sort(1).values)
    perms = {tuple(int(torch.nonzero(X[i] == v)[0]) for v in R[i]) for i in range(50)}
    assert len(perms) == 50


def test_random_inputs_bad_kind():
    with pytest.raises(ValueError, match=r"kind must be one of \('gaussian'"):
        G.random_inputs(randn(3, 2), "noise")
    with pytest.raises(ValueError, match="X must be a 2-D float tensor"):
        G.random_inputs(torch.ones(3), "gaussian")


def test_randomized_splits_corrupt_only_train():
    splits = data.load_dataset("digits")
    out = G.randomized_splits(
        splits, label_fraction=1.0, inputs="random_pixels", seed=5
    )
    assert out.name == "digits/inputs=random_pixels/labels=1.0"
    for part in ("X_val", "y_val", "X_test", "y_test"):
        assert torch.equal(getattr(out, part), getattr(splits, part))
    assert out.X_train.shape == splits.X_train.shape
    assert not torch.equal(out.X_train, splits.X_train)
    agree = (out.y_train == splits.y_train).float().mean()
    assert abs(float(agree) - 0.1) < 0.05  # chance: labels carry no information
    again = G.randomized_splits(
        splits, label_fraction=1.0, inputs="random_pixels", seed=5
    )
    assert torch.equal(again.y_train, out.y_train)
    same = G.randomized_splits(splits)
    assert torch.equal(same.X_train, splits.X_train)
    assert torch.equal(same.y_train, splits.y_train)
    with pytest.raises(ValueError, match="splits must be a course_lib.data.Splits"):
        G.randomized_splits((splits.X_train, splits.y_train))


def test_randomized_splits_follow_the_seed_shift(monkeypatch):
    splits = data.load_dataset("digits")
    base = G.randomized_splits(splits, label_fraction=1.0, seed=0)
    monkeypatch.setenv("COURSE_LIB_SEED_SHIFT", "1000")
    shifted = G.randomized_splits(splits, label_fraction=1.0, seed=0)
    assert not torch.equal(base.y_train, shifted.y_train)


def test_epochs_to_accuracy():
    accs = [0.1, 0.5, 0.95, 0.99, 1.0]
    assert G.epochs_to_accuracy(accs, 0.95) == 3
    assert G.epochs_to_accuracy(accs, 0.05) == 1
    assert G.epochs_to_accuracy(accs[:2], 0.9) is None
    with pytest.raises(ValueError, match="target must be a real number in"):
        G.epochs_to_accuracy(accs, 95)


# ---------------------------------------------------------------- least squares


@pytest.mark.parametrize(
    ("n", "p", "rank"), [(30, 8, 8), (8, 30, 8), (20, 20, 20), (25, 15, 6), (10, 40, 4)]
)
@pytest.mark.parametrize("columns", [None, 3])
def test_min_norm_matches_numpy_lstsq_and_pinv(n, p, rank, columns):
    A = randn(n, rank, seed=1) @ randn(rank, p, seed=2)  # rank `rank`
    B = randn(n, seed=3) if columns is None else randn(n, columns, seed=3)
    beta = G.min_norm_least_squares(A, B)
    expected = np.linalg.lstsq(A.numpy(), B.numpy(), rcond=None)[0]
    assert beta.shape == B.shape[:0] + (p,) + B.shape[1:]
    np.testing.assert_allclose(beta.numpy(), expected, atol=1e-9)
    torch.testing.assert_close(beta, torch.linalg.pinv(A) @ B, atol=1e-9, rtol=1e-7)


def test_min_norm_interpolates_and_has_least_norm_when_wide():
    A, B = randn(10, 40, seed=4), randn(10, 2, seed=5)
    beta = G.min_norm_least_squares(A, B)
    torch.testing.assert_close(A @ beta, B, atol=1e-10, rtol=0)
    null = torch.linalg.svd(A).Vh[10:]  # (30, 40): directions A does not see
    other = beta + null.T @ randn(30, 2, seed=6)
    torch.testing.assert_close(A @ other, B, atol=1e-10, rtol=0)
    assert beta.norm() < other.norm()
    torch.testing.assert_close(null @ beta, torch.zeros(30, 2, dtype=F64), atol=1e-10,
                               rtol=0)  # fmt: skip


def test_min_norm_tall_is_ordinary_least_squares():
    A, B = randn(50, 6, seed=7), randn(50, seed=8)
    beta = G.min_norm_least_squares(A, B)
    torch.testing.assert_close(beta, torch.linalg.solve(A.T @ A, A.T @ B))
    grad = A.T @ (A @ beta - B)
    assert grad.abs().max() < 1e-10


@pytest.mark.parametrize(("n", "p"), [(40, 10), (10, 40), (20, 20)])
@pytest.mark.parametrize("alpha", [1e-3, 0.5, 20.0])
def test_ridge_matches_sklearn(n, p, alpha):
    A, B = randn(n, p, seed=9), randn(n, 3, seed=10)
    beta = G.ridge_regression(A, B, alpha)
    model = Ridge(alpha=alpha, fit_intercept=False, solver="svd").fit(A, B)
    np.testing.assert_allclose(beta.numpy(), model.coef_.T, atol=1e-9)
    grad = A.T @ (A @ beta - B) + alpha * beta  # the objective's gradient / 2
    assert grad.abs().max() < 1e-9


def test_ridge_tends_to_min_norm():
    A = randn(12, 3, seed=11) @ randn(3, 30, seed=12)  # rank 3, wide
    B = randn(12, seed=13)
    # alpha small against the nonzero eigenvalues of A A^T (bias ~ alpha / s^2)
    # but not so small that rounding, ~ eps s_max^2 / alpha, dominates: at 1e-9
    # the gap was 4e-6 to 7e-6 (torch 2.6 and 2.14), at 1e-6 at most 7e-9
    # over 30 such systems
    torch.testing.assert_close(
        G.ridge_regression(A, B, 1e-6), G.min_norm_least_squares(A, B),
        atol=1e-7, rtol=1e-6,
    )  # fmt: skip


def test_least_squares_bad_arguments():
    A = randn(5, 3)
    with pytest.raises(ValueError, match="alpha must be a real number > 0"):
        G.ridge_regression(A, randn(5), 0.0)
    with pytest.raises(ValueError, match=r"B must be a tensor \(n,\) or \(n, C\)"):
        G.min_norm_least_squares(A, randn(4))
    with pytest.raises(ValueError, match="A must be a 2-D float tensor"):
        G.min_norm_least_squares(torch.ones(5, 3, dtype=torch.long), randn(5))
    with pytest.raises(ValueError, match=r"W must be a \(p, 3\) tensor"):
        G.relu_features(A, randn(4, 2))


def test_random_relu_weights_have_variance_one_over_d():
    W = G.random_relu_weights(50, 4000, generator=gen(0))
    assert W.shape == (4000, 50) and W.dtype == F64
    n = W.numel()
    assert abs(float(W.var()) - 1 / 50) < Z * (1 / 50) * math.sqrt(2 / n)
    X = randn(7, 50)
    phi = G.relu_features(X, W)
    assert phi.shape == (7, 4000) and (phi >= 0).all()
    assert ((phi > 0).double().mean() - 0.5).abs() < 0.05  # ReLU halves


# ---------------------------------------------------------------- double descent


@pytest.fixture(scope="module")
def digits_small():
    s = data.standardize(data.load_dataset("digits"))
    return s.X_train[:120], s.y_train[:120], s.X_test, s.y_test


def test_double_descent_peak_at_the_interpolation_threshold(digits_small):
    widths = [20, 60, 120, 240, 2000]
    curve = G.random_features_curve(
        *digits_small, widths, num_classes=10, num_draws=2, seed=0
    )
    assert curve.num_features == widths and curve.num_train == 120
    err, mse = dict(zip(widths, curve.test_error, strict=True)), curve.test_mse
    assert max(curve.train_error[widths.index(240) :]) == 0.0  # interpolates past n
    assert max(curve.train_mse[widths.index(240) :]) < 1e-12
    assert curve.train_error[0] > 0  # too few features to fit 120 points
    assert mse[2] == max(mse) and mse[2] > 5 * mse[-1]  # the peak at p = n
    assert err[120] > err[60] and err[120] > err[2000]
    ridge = G.random_features_curve(
        *digits_small, widths, num_classes=10, num_draws=2, seed=0, ridge=1.0
    )
    assert ridge.test_mse[2] < mse[2] / 5  # ridge flattens the peak
    again = G.random_features_curve(
        *digits_small, widths, num_classes=10, num_draws=2, seed=0
    )
    assert again.test_error == curve.test_error


def test_random_features_curve_bad_arguments(digits_small):
    with pytest.raises(ValueError, match="num_features must be a non-empty sequence"):
        G.random_features_curve(*digits_small, [], num_classes=10)
    with pytest.raises(ValueError, match="ridge must be a real number >= 0"):
        G.random_features_curve(*digits_small, [10], num_classes=10, ridge=-1.0)
    with pytest.raises(ValueError, match="num_draws must be a positive integer"):
        G.random_features_curve(*digits_small, [10], num_classes=10, num_draws=0)
