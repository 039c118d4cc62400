"""Tests for course_lib.hparam: samplers, searches, refinement, the lr range test."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from course_lib import hparam as H

# Kolmogorov-Smirnov at level 0.001, asymptotic: sqrt(-ln(0.001 / 2) / 2) / sqrt(n)
KS_C = math.sqrt(-math.log(0.001 / 2) / 2)


def ks_statistic(samples, cdf) -> float:
    """sup |F_n - F| of the empirical CDF of ``samples`` against ``cdf``."""
    x = np.sort(np.asarray(samples, dtype=float))
    n, f = len(x), cdf(x)
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - f), np.max(f - (i - 1) / n)))


def draws(dist, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [dist.sample(gen) for _ in range(n)]


def loguniform_cdf(a, b):
    return lambda x: np.log(x / a) / np.log(b / a)


def test_loguniform_passes_ks_against_its_cdf():
    a, b, n = 1e-5, 1.0, 4000
    x = draws(H.LogUniform(a, b), n)
    assert min(x) >= a and max(x) < b
    assert ks_statistic(x, loguniform_cdf(a, b)) < KS_C / math.sqrt(n)
    # each of the five decades holds about a fifth (sd of a share ~0.0063)
    decades = np.histogram(np.log10(x), bins=5, range=(-5, 0))[0] / n
    np.testing.assert_allclose(decades, 0.2, atol=0.03)


def test_ks_check_rejects_uniform_draws_as_loguniform():
    # the same check fails the wrong sampler, so the test above can fail
    a, b, n = 1e-5, 1.0, 4000
    x = draws(H.Uniform(a, b), n)
    assert ks_statistic(x, loguniform_cdf(a, b)) > 10 * KS_C / math.sqrt(n)


def test_uniform_passes_ks():
    a, b, n = -2.0, 3.0, 4000
    x = draws(H.Uniform(a, b), n, seed=1)
    assert ks_statistic(x, lambda v: (v - a) / (b - a)) < KS_C / math.sqrt(n)


def test_choice_and_intuniform_frequencies():
    n = 6000
    picks = draws(H.Choice(["sgd", "adam", "rmsprop"]), n, seed=2)
    for option in ("sgd", "adam", "rmsprop"):  # sd of a share ~0.006
        assert abs(picks.count(option) / n - 1 / 3) < 0.03
    ints = draws(H.IntUniform(2, 5), n, seed=3)
    assert set(ints) == {2, 3, 4, 5}  # both ends included
    for k in range(2, 6):
        assert abs(ints.count(k) / n - 1 / 4) < 0.03


SPACE = {
    "lr": H.LogUniform(1e-4, 1.0),
    "wd": H.Uniform(0.0, 0.1),
    "width": H.IntUniform(8, 64),
    "opt": H.Choice(("sgd", "adam")),
}


def toy(p):
    return (math.log10(p["lr"]) + 2) ** 2 + p["wd"] + (p["opt"] == "sgd")


def test_random_search_is_deterministic_under_a_seed():
    one = H.random_search(toy, SPACE, num_trials=12, seed=7)
    two = H.random_search(toy, SPACE, num_trials=12, seed=7)
    other = H.random_search(toy, SPACE, num_trials=12, seed=8)
    assert [t.params for t in one] == [t.params for t in two]
    assert [t.score for t in one] == [t.score for t in two]
    assert [t.params for t in one] != [t.params for t in other]
    gen = torch.Generator().manual_seed(5)
    assert H.sample(SPACE, gen) == H.sample(SPACE, torch.Generator().manual_seed(5))
    c1 = H.coarse_to_fine(toy, SPACE, rounds=2, num_trials=6, seed=3)
    c2 = H.coarse_to_fine(toy, SPACE, rounds=2, num_trials=6, seed=3)
    assert [t.params for t in c1] == [t.params for t in c2]


def test_table_sorting_best_columns_and_maximize():
    table = H.random_search(toy, SPACE, num_trials=10, seed=0)
    scores = [t.score for t in table]
    assert table.best.score == min(scores)
    assert [t.score for t in table.sorted()] == sorted(scores)
    cols = table.to_dict()
    assert list(cols) == ["lr", "wd", "width", "opt", "score"]
    assert cols["score"] == scores and len(cols["lr"]) == 10
    x, y = table.columns("lr", "score")
    np.testing.assert_array_equal(y, scores)
    assert x.shape == (10,)
    up = H.random_search(toy, SPACE, num_trials=10, seed=0, minimize=False)
    assert up.best.score == max(scores)
    nan = H.TrialTable((H.Trial({"a": 1}, math.nan), H.Trial({"a": 2}, 5.0)))
    assert nan.best.params == {"a": 2}  # a diverged trial ranks last
    assert nan.sorted()[1].params == {"a": 1}
    with pytest.raises(ValueError, match="name must be one of"):
        table.column("nope")


def test_table_plots_in_one_line():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = H.random_search(toy, SPACE, num_trials=5, seed=0)
    _, ax = plt.subplots()
    points = ax.scatter("lr", "score", data=table.to_dict())
    np.testing.assert_allclose(points.get_offsets()[:, 1], table.column("score"))
    plt.close("all")


def test_columns_keep_values_of_any_type():
    space = {"hidden": H.Choice([(64,), (32, 32)]), "act": H.Choice(["relu", 0])}
    table = H.random_search(lambda p: len(p["hidden"]), space, num_trials=8, seed=0)
    hidden, act = table.columns("hidden", "act")
    assert hidden.shape == (8,) and set(hidden) == {(64,), (32, 32)}
    assert list(act) == [t.params["act"] for t in table]  # 0 stays an int
    assert table.to_dict()["hidden"] == [t.params["hidden"] for t in table]
    width = H.random_search(toy, SPACE, num_trials=4, seed=0).column("width")
    assert width.dtype.kind == "i"


def test_objective_must_return_a_real_number():
    space = {"a": H.Uniform(0.0, 1.0)}
    for bad in (None, "0.5", True, torch.ones(2)):
        with pytest.raises(TypeError, match="objective must return a real number"):
            H.random_search(lambda p, bad=bad: bad, space, num_trials=1, seed=0)
    f64 = functools.partial(torch.tensor, dtype=torch.float64)
    table = H.random_search(lambda p: f64(p["a"]), space, num_trials=2,
                            seed=0)  # fmt: skip
    assert [t.score for t in table] == [t.params["a"] for t in table]


def test_grid_search_visits_the_full_product():
    seen = []
    grid = {"a": [1, 2, 3], "b": ["x", "y"], "c": [0.5]}
    table = H.grid_search(lambda p: seen.append(dict(p)) or p["a"], grid)
    expected = [{"a": a, "b": b, "c": 0.5} for a in (1, 2, 3) for b in ("x", "y")]
    assert seen == expected and [t.params for t in table] == expected
    assert table.best.params["a"] == 1


def test_random_beats_grid_when_one_of_two_parameters_matters():
    # f depends (almost) only on a; a 3 x 3 grid tries 3 values of a, 9 random
    # trials try 9. Over 20 optima a* ~ U[0, 1] the grid's error |a - a*|
    # averages ~0.10 (1/8 in expectation) and random search's ~0.04; we ask
    # for less than 0.6 times the grid's mean and a win in >= 14 of 20.
    grid_err, rand_err = [], []
    for s in range(20):
        a_star = torch.rand((), generator=torch.Generator().manual_seed(100 + s)).item()

        def f(p, a_star=a_star):
            return (p["a"] - a_star) ** 2 + 1e-3 * p["b"]

        grid = H.grid_search(f, {"a": [0.0, 0.5, 1.0], "b": [0.0, 0.5, 1.0]})
        space = {"a": H.Uniform(0.0, 1.0), "b": H.Uniform(0.0, 1.0)}
        rand = H.random_search(f, space, num_trials=9, seed=s)
        grid_err.append(abs(grid.best.params["a"] - a_star))
        rand_err.append(abs(rand.best.params["a"] - a_star))
    grid_err, rand_err = np.array(grid_err), np.array(rand_err)
    assert rand_err.mean() < 0.6 * grid_err.mean()
    assert (rand_err < grid_err).sum() >= 14


def test_refine_rule_by_hand():
    space = {"x": H.Uniform(0.0, 10.0), "lr": H.LogUniform(1e-4, 1.0),
             "n": H.IntUniform(1, 9), "o": H.Choice(("a", "b", "c"))}  # fmt: skip
    rows = [({"x": 4.0, "lr": 1e-2, "n": 5, "o": "b"}, 0.0),
            ({"x": 6.0, "lr": 1e-3, "n": 5, "o": "c"}, 1.0),
            ({"x": 0.0, "lr": 1e-4, "n": 1, "o": "a"}, 9.0)]  # fmt: skip
    table = H.TrialTable(tuple(H.Trial(p, s) for p, s in rows))
    new = H.refine(space, table, keep=2, pad=0.1)
    assert new["x"] == H.Uniform(3.0, 7.0)  # [4, 6] +- 0.1 * 10
    # log space: [1e-3, 1e-2] widened by 0.1 * 4 decades on each side
    assert math.isclose(new["lr"].low, 10**-3.4) and math.isclose(
        new["lr"].high, 10**-1.6
    )
    assert new["n"] == H.IntUniform(4, 6)  # [5, 5] +- ceil(0.1 * 8)
    # an integer range collapsed to one value becomes a Choice
    ends = H.TrialTable((H.Trial({"n": 1}, 0.0),))
    assert H.refine({"n": H.IntUniform(1, 2)}, ends, keep=1, pad=0.1) == {
        "n": H.IntUniform(1, 2)
    }
    one = H.refine({"n": H.IntUniform(1, 30)}, ends, keep=1, pad=0.01)
    assert one == {"n": H.IntUniform(1, 2)}
    assert new["o"] == H.Choice(("b", "c"))


def f2(p):
    """Minimum 0 at lr = 10^-2.5, x = 0.3, on a box of four decades by [0, 1]."""
    return (math.log10(p["lr"]) + 2.5) ** 2 + 10 * (p["x"] - 0.3) ** 2


SPACE2 = {"lr": H.LogUniform(1e-5, 1e-1), "x": H.Uniform(0.0, 1.0)}


def test_coarse_to_fine_shrinks_toward_the_optimum():
    # defaults (keep 3, pad 0.1); over 300 seeds we measured: spreads always
    # decreasing, last/first <= 0.15, |median log10 lr + 2.5| <= 0.29 and
    # |median x - 0.3| <= 0.20 in the last round
    table = H.coarse_to_fine(f2, SPACE2, rounds=4, num_trials=20, seed=0)
    rounds = table.column("round")
    assert len(table) == 80 and set(rounds) == {0, 1, 2, 3}
    log_lr, x = np.log10(table.column("lr")), table.column("x")
    # spread of a round: its range in decades / 4 plus its range in x
    spread = [np.ptp(log_lr[rounds == r]) / 4 + np.ptp(x[rounds == r])
              for r in range(4)]  # fmt: skip
    assert all(b < a for a, b in zip(spread, spread[1:], strict=False))
    assert spread[3] < 0.3 * spread[0]
    last = rounds == 3
    assert abs(np.median(log_lr[last]) + 2.5) < 0.4
    assert abs(np.median(x[last]) - 0.3) < 0.25


def test_coarse_to_fine_beats_random_search_at_equal_budget():
    # 4 rounds of 20 vs 80 random trials, 20 seeds; measured (seed shifts 0 to
    # 5000): median best ratio 0.004 to 0.05, wins 18 to 20 of 20; asked:
    # ratio < 0.25 and >= 16 wins
    fine = np.array([H.coarse_to_fine(f2, SPACE2, rounds=4, num_trials=20, seed=s)
                     .best.score for s in range(20)])  # fmt: skip
    flat = np.array([H.random_search(f2, SPACE2, num_trials=80, seed=s + 100)
                     .best.score for s in range(20)])  # fmt: skip
    assert np.median(fine) < 0.25 * np.median(flat)
    assert (fine < flat).sum() >= 16


def regression(seed):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(256, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 1, generator=gen, dtype=torch.float64)
    y = X @ w + 0.1 * torch.randn(256, 1, generator=gen, dtype=torch.float64)
    return [(X[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]  # (32, 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lr_range_test_on_a_regression(seed):
    torch.manual_seed(seed)
    model = nn.Linear(5, 1).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sgd = functools.partial(torch.optim.SGD, momentum=0.0)
    result = H.lr_range_test(model, F.mse_loss, regression(seed), sgd,
                             start_lr=1e-4, end_lr=100.0, num_steps=120)  # fmt: skip
    for k, v in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())
    lr, score = result.columns("lr", "score")
    assert result.stopped is not None and len(result) < 120  # it diverged
    assert score.min() < 0.5 * score[0]  # the loss fell first
    assert score[-1] > 4 * score.min()
    ratios = lr[1:] / lr[:-1]
    np.testing.assert_allclose(ratios, (100.0 / 1e-4) ** (1 / 119))
    # SGD on this least squares diverges past 2 / lambda_max ~ 1; suggestion
    # is a tenth of the minimum's lr: in [0.01, 0.5]
    assert 0.01 < result.suggested_lr < 0.5
    assert math.isclose(result.suggested_lr, lr[np.argmin(score)] / 10)


def test_range_test_leaves_the_callers_optimizer_alone():
    torch.manual_seed(0)
    model, data = nn.Linear(5, 1).double(), regression(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    F.mse_loss(model(data[0][0]), data[0][1]).backward()
    opt.step()  # the caller's run has momentum state and grads
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    H.lr_range_test(model, F.mse_loss, data, torch.optim.SGD, start_lr=1e-3,
                    end_lr=10.0, num_steps=40)  # fmt: skip
    assert opt.param_groups[0]["lr"] == 0.05
    for p, g, b in zip(model.parameters(), grads, buffers, strict=True):
        assert torch.equal(p.grad, g)
        assert torch.equal(opt.state[p]["momentum_buffer"], b)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert model.training  # the copy is put in train mode, not the model
    model.eval()
    H.lr_range_test(model, F.mse_loss, data, torch.optim.SGD, num_steps=5)
    assert not model.training


def test_range_test_stops_at_a_non_finite_loss():
    # no divergence threshold: the run ends when the loss overflows to inf
    torch.manual_seed(0)
    result = H.lr_range_test(nn.Linear(5, 1).double(), F.mse_loss, regression(0),
                             torch.optim.SGD, start_lr=10.0, end_lr=1e4,
                             num_steps=500, diverge_factor=math.inf)  # fmt: skip
    assert result.stopped.startswith("non-finite loss")
    assert 0 < len(result) < 500
    assert np.isfinite(result.column("score")).all()


def test_suggest_lr_steepest_on_a_known_curve():
    lrs = np.logspace(-5, 0, 101)
    # a smooth drop centred at lr = 1e-3, then a rise after 1e-1
    loss = 2 - np.tanh(2 * (np.log10(lrs) + 3)) + np.where(lrs > 0.1, 50 * lrs, 0)
    steep = H.suggest_lr(lrs, loss, "steepest")
    assert math.isclose(math.log10(steep), -3, abs_tol=0.06)
    assert math.isclose(H.suggest_lr(lrs, loss), lrs[np.argmin(loss)] / 10)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: H.Uniform(1.0, 1.0), "high must be a real number > low"),
        (lambda: H.Uniform(2.0, 1.0), "high must be"),
        (lambda: H.Uniform(0.0, math.nan), "high must be a finite real"),
        (lambda: H.LogUniform(0.0, 1.0), "low must be a real number > 0"),
        (lambda: H.LogUniform(-1.0, 1.0), "low must be"),
        (lambda: H.LogUniform(1e-2, 1e-3), "high must be a real number > low"),
        (lambda: H.IntUniform(3, 3), "high must be an integer > low"),
        (lambda: H.IntUniform(0.5, 3), "low must be an integer"),
        (lambda: H.Choice([]), "options must be a non-empty sequence"),
        (lambda: H.Choice("abc"), "options must be a non-empty sequence"),
        (lambda: H.random_search(toy, SPACE, num_trials=0, seed=0), "num_trials"),
        (lambda: H.random_search(toy, {}, num_trials=3, seed=0), "space must"),
        (lambda: H.random_search(toy, SPACE, num_trials=3, seed=1.5), "seed must"),
        (lambda: H.grid_search(toy, {"a": []}), r"grid\['a'\] must be a non-empty"),
        (lambda: H.coarse_to_fine(toy, SPACE, rounds=0, num_trials=5, seed=0),
         "rounds must"),  # fmt: skip
        (lambda: H.coarse_to_fine(toy, SPACE, rounds=2, num_trials=5, seed=0,
                                  keep=6), "keep must be an integer in"),  # fmt: skip
        (lambda: H.suggest_lr([1, 2], [1, 2], "valley"), "rule must be one of"),
        (lambda: H.grid_search(3, {"a": [1]}), "objective must be a callable"),
        (lambda: H.grid_search(toy, {}), "grid must be a non-empty mapping"),
        (lambda: H.grid_search(toy, {"a": [1]}, minimize=1), "minimize must be"),
        (lambda: H.refine(SPACE2, H.grid_search(f2, {"lr": [0.1], "x": [0.5]}),
                          keep=1, pad=0.0), "pad must be a real number > 0"),
    ],
)
def test_bad_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_range_test_arguments():
    model, data = nn.Linear(5, 1).double(), regression(0)
    run = functools.partial(H.lr_range_test, model, F.mse_loss, data, torch.optim.SGD)
    for kwargs, match in [
        ({"start_lr": 0.0}, "start_lr must be a real number > 0"),
        ({"start_lr": 1.0, "end_lr": 0.5}, "end_lr must be a real number > start"),
        ({"num_steps": 1}, "num_steps must be an integer >= 2"),
        ({"smoothing": 1.0}, r"smoothing must be a real number in \[0, 1\)"),
        ({"diverge_factor": 1.0}, "diverge_factor must be a real number > 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            run(**kwargs)
    with pytest.raises(ValueError, match="loader must be a non-empty"):
        H.lr_range_test(model, F.mse_loss, [], torch.optim.SGD)
    with pytest.raises(TypeError, match=r"space\['lr'\] must be a Uniform"):
        H.random_search(toy, {"lr": 0.1}, num_trials=2, seed=0)
