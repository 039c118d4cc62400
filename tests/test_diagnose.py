"""diagnose() on curves produced by real training runs, plus its building blocks.

Each pathology is produced the way chapter 1 produces it (an MLP on MNIST-1D,
plain SGD), with other seeds than the chapter's, so the thresholds are not
tuned to one run.
"""

import math

import numpy as np
import pytest
import torch

from course_lib.diagnose import (
    PATHOLOGIES,
    RECIPES,
    cycle_score,
    demo_run,
    diagnose,
    gradient_noise,
    moving_average,
)


def test_every_pathology_has_a_recipe():
    assert set(RECIPES) == set(PATHOLOGIES)


@pytest.mark.parametrize("name", PATHOLOGIES)
@pytest.mark.parametrize("seed", [11, 12])
def test_diagnose_names_real_runs(mnist1d, name, seed):
    history = demo_run(mnist1d, name, seed=seed)
    verdict = diagnose(history)
    assert verdict.name == name, str(verdict)
    assert verdict.reason and verdict.advice
    assert diagnose(history.as_dict()) == verdict  # a plain dict works too


def test_shuffling_removes_the_cycles(mnist1d):
    sorted_off = demo_run(mnist1d, "unshuffled_cycles", seed=5)
    sorted_on = demo_run(mnist1d, "unshuffled_cycles", seed=5, shuffle=True)
    off = cycle_score(sorted_off.step_loss, sorted_off.steps_per_epoch)
    on = cycle_score(sorted_on.step_loss, sorted_on.steps_per_epoch)
    assert off > 0.6 and on < 0.2, (off, on)
    assert diagnose(sorted_on).name != "unshuffled_cycles"


def test_cycle_score_on_synthetic_signals():
    rng = np.random.default_rng(0)
    period, epochs = 25, 12
    trend = np.linspace(2.0, 0.5, period * epochs)
    noise = np.exp(rng.normal(0, 0.05, trend.size))
    cycle = 1 + 0.5 * np.sin(2 * np.pi * np.arange(trend.size) / period)
    assert cycle_score(trend * noise, period) == pytest.approx(0.0, abs=0.05)
    assert cycle_score(trend * noise * cycle, period) > 0.9
    # A cycle of another length is not this epoch's cycle.
    other = 1 + 0.5 * np.sin(2 * np.pi * np.arange(trend.size) / 7.3)
    assert cycle_score(trend * noise * other, period) < 0.2
    assert cycle_score(trend[: 2 * period], period) == 0.0  # too short to judge


def test_moving_average_matches_the_definition():
    x = np.random.default_rng(1).normal(size=50)
    expected = [x[max(0, i - 4) : i + 1].mean() for i in range(50)]
    assert moving_average(x, 5) == pytest.approx(expected, rel=1e-12)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="window"):
            moving_average(x, bad)


def synthetic_history(step_loss, steps_per_epoch=10, train=(), val=()):
    return dict(
        step_loss=list(step_loss),
        steps_per_epoch=steps_per_epoch,
        train_loss=list(train),
        val_loss=list(val),
    )


def test_rules_on_hand_made_curves():
    flat = synthetic_history([2.3] * 100)
    assert diagnose(flat).name == "not_training"
    rising = synthetic_history(np.linspace(2.3, 3.0, 100))
    assert diagnose(rising).name == "diverging"
    nan = synthetic_history([2.3, 2.0, math.nan, math.nan])
    d = diagnose(nan)
    assert d.name == "diverging" and "step 2" in d.reason
    with pytest.raises(ValueError, match="history"):
        diagnose(synthetic_history([2.3]))


def test_demo_run_arguments(mnist1d):
    with pytest.raises(ValueError, match="pathology"):
        demo_run(mnist1d, "exploding")
    with pytest.raises(ValueError, match="changes"):
        demo_run(mnist1d, "healthy", learning_rate=0.1)


def test_gradient_noise_follows_the_sampling_formula():
    # Linear least squares: per-sample gradients are known in closed form, so
    # tr(Sigma) is exact and the 1/B law (with the finite-population factor)
    # can be checked against the Monte-Carlo estimate.
    g = torch.Generator().manual_seed(0)
    n, d = 200, 3
    X, w_true = (
        torch.randn(n, d, generator=g, dtype=torch.float64),
        torch.tensor([1.0, -2.0, 0.5]),
    )
    y = X @ w_true.double() + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(d, 1, bias=False).double()
    loss_fn = lambda out, t: 0.5 * (out.squeeze(1) - t).pow(2).mean()  # noqa: E731
    with torch.no_grad():
        residual = (model(X).squeeze(1) - y)[:, None]  # (N, 1)
    per_sample = residual * X  # (N, d): gradient of each sample's loss
    trace = (per_sample - per_sample.mean(0)).pow(2).sum(1).mean().item()
    before = [p.detach().clone() for p in model.parameters()]
    for batch_size in (1, 10, 50, 150):
        expected = trace / batch_size * (n - batch_size) / (n - 1)
        measured = gradient_noise(
            model, loss_fn, X, y, batch_size, num_draws=3000, seed=1
        )
        assert measured == pytest.approx(expected, rel=0.1), batch_size
    assert gradient_noise(model, loss_fn, X, y, n, num_draws=3) == pytest.approx(
        0, abs=1e-20
    )
    assert all(
        torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)
    )
    for bad in (0, n + 1, 2.0):
        with pytest.raises(ValueError, match="batch_size"):
            gradient_noise(model, loss_fn, X, y, bad)


def _noise(**changes):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(12, 3, generator=g), torch.randint(0, 2, (12,), generator=g)
    args = dict(batch_size=4, num_draws=2) | changes
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return gradient_noise(model, torch.nn.functional.cross_entropy, X, y, **args)


LOSS = np.exp(np.random.default_rng(0).normal(size=50))
NUMPY_ARGUMENTS = [
    ("window", lambda v: moving_average(np.arange(10.0), v), np.int64(5)),
    ("steps_per_epoch", lambda v: cycle_score(LOSS, v), np.int64(5)),
    ("batch_size", lambda v: _noise(batch_size=v), np.int64(4)),
    ("num_draws", lambda v: _noise(num_draws=v), np.int32(3)),
]


@pytest.mark.parametrize(("name", "call", "value"), NUMPY_ARGUMENTS)
def test_numpy_scalars_pass_bools_and_strings_do_not(name, call, value):
    assert np.all(call(value) == call(int(value)))
    for bad in (True, "3"):
        with pytest.raises(ValueError, match=rf"^{name} must be "):
            call(bad)
