"""Name what a learning curve says is wrong.

:func:`diagnose` reads a :class:`~course_lib.train.History` (or the dict from
``History.as_dict()``) and returns the first pathology, in the order below,
whose test holds. Each test is a number with a threshold, so the verdict can
be argued with:

========================  ===================================================
``diverging``             a NaN/inf loss, a loss above 10x its start, or a
                          loss that ends higher than it began
``not_training``          the loss moved by less than 10% of its start
``unshuffled_cycles``     the per-step loss repeats with the epoch's period
                          (:func:`cycle_score` >= 0.3)
``slow_start``            the loss stays within 2% of its start for >= 15%
                          of the steps, then falls
``overfitting``           validation loss >= 10% above its minimum while the
                          training loss went on falling
``not_converged``         the (validation) loss still falls by >= 3% over the
                          last fifth of training (a fitted line, >= 2 epochs)
``healthy``               none of the above
========================  ===================================================

It also holds :func:`gradient_noise` (how far a mini-batch gradient is from
the full one) and :func:`demo_run`, which trains the run that shows each
pathology (:data:`RECIPES`).

The thresholds were set on runs in chapter 1 and ``tests/test_diagnose.py``,
which produce every pathology by real training; ``diagnose`` reports the
numbers it used, so a borderline case is visible as one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._args import check_choice, check_int
from ._util import history_field
from .device import generator as device_generator
from .device import shifted_seed

#: The pathologies :func:`diagnose` names, in the order it tests them.
PATHOLOGIES = (
    "diverging",
    "not_training",
    "unshuffled_cycles",
    "slow_start",
    "overfitting",
    "not_converged",
    "healthy",
)

ADVICE = {
    "diverging": "lower the learning rate, add warmup or gradient clipping, "
    "look for a bug in the update or log(0)",
    "not_training": "raise the learning rate; check that the optimizer holds "
    "the model's parameters and that gradients are not zero or None",
    "unshuffled_cycles": "shuffle the training data every epoch",
    "slow_start": "the initialisation is probably too small (chapter 4) or "
    "the learning rate too low at first",
    "overfitting": "regularise, get more data, or stop early at the best "
    "validation epoch",
    "not_converged": "train longer, or raise the learning rate",
    "healthy": "nothing obvious; compare with a tuned baseline",
}


@dataclass(frozen=True)
class Diagnosis:
    """A verdict, the evidence behind it, and what to try."""

    name: str
    reason: str
    advice: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason} -> {self.advice}"


def moving_average(values, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start)."""
    window = check_int("window", window, low=1)
    x = np.asarray(values, dtype=float)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    stop = np.arange(1, len(x) + 1)
    first = np.maximum(0, stop - window)
    return (csum[stop] - csum[first]) / (stop - first)


def cycle_score(step_loss, steps_per_epoch: int) -> float:
    r"""How much of the per-step loss repeats with the epoch's period, in [~0, 1].

    The log-loss is detrended with a moving average one epoch long (which
    cancels anything periodic in the epoch, so the remainder keeps the cycle
    whole), the remainders are grouped by position within the epoch, and the
    share of their variance explained by the position is estimated with
    :math:`\omega^2` from a one-way ANOVA, which is about 0 for noise whatever
    the number of epochs. With shuffled data positions mean nothing and the
    score is near 0; with data sorted by class it is close to 1.
    """
    period = check_int("steps_per_epoch", steps_per_epoch, low=1)
    x = np.log(np.asarray(step_loss, dtype=float))
    if period < 4 or len(x) < 5 * period or not np.all(np.isfinite(x)):
        return 0.0
    trend = np.convolve(x, np.ones(period) / period, mode="valid")  # len n-P+1
    offset = period // 2
    resid = x[offset : offset + len(trend)] - trend
    position = (np.arange(len(resid)) + offset) % period
    means = np.array([resid[position == p].mean() for p in range(period)])
    counts = np.bincount(position, minlength=period)
    ss_between = float(np.sum(counts * (means - resid.mean()) ** 2))
    ss_within = float(np.sum((resid - means[position]) ** 2))
    ms_within = ss_within / (len(resid) - period)
    omega2 = (ss_between - (period - 1) * ms_within) / (
        ss_between + ss_within + ms_within
    )
    return float(omega2)


def _plateau_fraction(loss: np.ndarray, start: float) -> float:
    """Fraction of steps before the smoothed loss first falls 2% below start."""
    smooth = moving_average(loss, max(5, len(loss) // 50))
    below = np.nonzero(smooth < 0.98 * start)[0]
    return (below[0] if len(below) else len(loss)) / len(loss)


@dataclass(frozen=True)
class _Curves:
    """The numbers every rule below reads off a history."""

    loss: np.ndarray  # per step
    period: int  # steps per epoch
    train: np.ndarray  # per epoch
    val: np.ndarray  # per epoch (may be empty)
    start: float  # median of the first 5 step losses
    end: float  # mean over the last epoch (or 10% of steps, if more)


def _diverging(c: _Curves) -> str | None:
    if not np.all(np.isfinite(c.loss)):
        first = int(np.argmin(np.isfinite(c.loss)))
        return f"loss became {c.loss[first]} at step {first}"
    peak = c.loss.max()
    if peak > 10 * c.start:
        return (
            f"loss peaked at {peak:.3g}, {peak / c.start:.0f}x its start {c.start:.3g}"
        )
    if c.end > 1.1 * c.start:
        return f"loss rose from {c.start:.3g} to {c.end:.3g}"
    return None


def _not_training(c: _Curves) -> str | None:
    moved = (c.start - c.end) / c.start
    if moved < 0.1:
        return f"loss moved {moved:.1%} (from {c.start:.3g} to {c.end:.3g})"
    return None


def _unshuffled_cycles(c: _Curves) -> str | None:
    score = cycle_score(c.loss, c.period)
    if score >= 0.3:
        return f"{score:.0%} of the step-to-step variation repeats every epoch"
    return None


def _slow_start(c: _Curves) -> str | None:
    plateau = _plateau_fraction(c.loss, c.start)
    if plateau >= 0.15:
        return (
            f"loss stayed within 2% of its start for {plateau:.0%} of training, "
            f"then fell to {c.end:.3g}"
        )
    return None


def _overfitting(c: _Curves) -> str | None:
    if len(c.val) < 3 or not np.all(np.isfinite(c.val)):
        return None
    best = int(np.argmin(c.val))
    rise = c.val[-1] / c.val[best] - 1
    if rise >= 0.1 and c.train[-1] < c.train[best]:
        return (
            f"validation loss is {rise:.0%} above its minimum (epoch {best}) while "
            f"training loss fell from {c.train[best]:.3g} to {c.train[-1]:.3g}"
        )
    return None


def _not_converged(c: _Curves) -> str | None:
    curve, which = (c.val, "validation") if len(c.val) >= 3 else (c.train, "training")
    if len(curve) < 3:
        return None
    # Least-squares slope over the last fifth (at least 2 epochs): one noisy
    # epoch should neither hide nor fake a trend.
    k = max(2, len(curve) // 5)
    slope = np.polyfit(np.arange(k + 1), curve[-k - 1 :], 1)[0]
    drop = -slope * k / curve[-1]
    if drop >= 0.03:
        return f"{which} loss still falls: {drop:.1%} over the last {k} epochs"
    return None


def _healthy(c: _Curves) -> str:
    return f"loss fell {(c.start - c.end) / c.start:.0%} and has levelled off"


_RULES = (_diverging, _not_training, _unshuffled_cycles, _slow_start, _overfitting,
          _not_converged, _healthy)  # fmt: skip


def diagnose(history) -> Diagnosis:
    """Return the first :data:`PATHOLOGIES` entry whose test holds (see module doc)."""
    loss = np.asarray(history_field(history, "step_loss"), dtype=float)
    if len(loss) < 2:
        raise ValueError(f"history must hold at least 2 steps, got {len(loss)}")
    period = history_field(history, "steps_per_epoch")
    curves = _Curves(
        loss=loss,
        period=period,
        train=np.asarray(history_field(history, "train_loss"), dtype=float),
        val=np.asarray(history_field(history, "val_loss"), dtype=float),
        start=float(np.median(loss[:5])),
        # At least an epoch, so that a cycle within the epoch averages out.
        end=float(np.mean(loss[-max(period, len(loss) // 10) :])),
    )
    for name, rule in zip(PATHOLOGIES, _RULES, strict=True):
        reason = rule(curves)
        if reason is not None:
            return Diagnosis(name, reason, ADVICE[name])
    raise AssertionError("unreachable: the healthy rule always answers")


#: How chapter 1, lab 1 and the tests produce each pathology with a real run
#: (an MLP on MNIST-1D trained by plain SGD), with the settings each run changes.
RECIPES = {
    "diverging": dict(lr=10.0),
    "not_training": dict(lr=1e-3),
    "unshuffled_cycles": dict(lr=0.5, sort=True, shuffle=False),
    "slow_start": dict(lr=0.5, hidden=(100,) * 4, init_std=0.03),
    "overfitting": dict(
        lr=0.5, n_train=500, hidden=(256, 256), batch_size=50, epochs=60
    ),
    "not_converged": dict(lr=0.1, epochs=10),
    "healthy": dict(lr=0.5, cosine=True),
}
_DEFAULTS = dict(
    epochs=20,
    hidden=(100, 100),
    init_std=None,
    n_train=None,
    batch_size=100,
    shuffle=True,
    sort=False,
    cosine=False,
)


def demo_run(
    splits, pathology: str, *, seed: int = 0, progress: bool = False, **changes
):
    """Train the run of :data:`RECIPES` that shows ``pathology``; return its History.

    Baseline: ``MLP(in, [100, 100], classes)``, plain SGD at lr 0.5, batches
    of 100, 20 epochs, shuffled, validated on ``splits``' validation set.
    Each recipe changes what its name says (learning rate, data order,
    initialisation, data size, epochs, schedule); ``changes`` overrides any
    of those settings, e.g. ``shuffle=True`` to cure the unshuffled run.
    """
    # Imported here: diagnosing a curve needs none of the training code.
    from .data import make_loader, sort_by_label
    from .models import MLP
    from .schedules import Cosine
    from .train import fit

    check_choice("pathology", pathology, PATHOLOGIES)
    unknown = set(changes) - set(_DEFAULTS) - {"lr"}
    if unknown:
        raise ValueError(
            f"changes must be among {sorted(_DEFAULTS) + ['lr']}, got {sorted(unknown)}"
        )
    cfg = _DEFAULTS | RECIPES[pathology] | changes
    X, y = splits.X_train[: cfg["n_train"]], splits.y_train[: cfg["n_train"]]
    if cfg["sort"]:
        X, y = sort_by_label(X, y)
    torch.manual_seed(shifted_seed(seed))
    model = MLP(splits.num_features, list(cfg["hidden"]), splits.num_classes)
    if cfg["init_std"] is not None:  # far too small weights: signals fade
        for layer in model:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=cfg["init_std"])
                nn.init.zeros_(layer.bias)
    train = make_loader(
        X, y, batch_size=cfg["batch_size"], shuffle=cfg["shuffle"], seed=seed
    )
    val = make_loader(splits.X_val, splits.y_val, batch_size=1000, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    schedule = Cosine(cfg["epochs"] * len(train)) if cfg["cosine"] else None
    return fit(
        model,
        train,
        optimizer,
        num_epochs=cfg["epochs"],
        val_loader=val,
        schedule=schedule,
        progress=progress,
    )


def _flat_grad(
    model: nn.Module, loss_fn, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss_fn(model(X), y).backward()
    return torch.cat(
        [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    )


def gradient_noise(
    model, loss_fn, X, y, batch_size: int, *, num_draws: int = 100, seed: int = 0
):
    r"""Mean squared distance between mini-batch and full-batch gradients.

    Draws ``num_draws`` batches of ``batch_size`` samples without replacement
    and returns the average of :math:`\lVert g_B - g\rVert^2`, where
    :math:`g` is the gradient of the mean loss over all of ``X``. Theory for
    sampling without replacement from :math:`N` samples:

    .. math:: \mathbb{E}\lVert g_B - g\rVert^2
              = \frac{\operatorname{tr}\Sigma}{B}\,\frac{N - B}{N - 1},

    with :math:`\Sigma = \frac{1}{N}\sum_i (\nabla\ell_i - g)(\nabla\ell_i - g)^\top`
    the covariance of the per-sample gradients, normalised by :math:`N` (with
    :math:`N - 1` the last factor would read :math:`(N - B)/N`). The model
    is left unchanged (only its ``.grad`` fields are overwritten).
    """
    n = len(X)
    batch_size = check_int("batch_size", batch_size, low=1, high=n)
    num_draws = check_int("num_draws", num_draws, low=1)
    generator = device_generator(seed)
    full = _flat_grad(model, loss_fn, X, y)
    total = 0.0
    for _ in range(num_draws):
        idx = torch.randperm(n, generator=generator)[:batch_size].to(X.device)
        total += (_flat_grad(model, loss_fn, X[idx], y[idx]) - full).pow(2).sum().item()
    model.zero_grad(set_to_none=True)
    return total / num_draws
