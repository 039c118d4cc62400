r"""Hyperparameter search: grid, random, coarse-to-fine, and the lr range test.

A search space maps names to distributions: :class:`Uniform`,
:class:`LogUniform`, :class:`IntUniform` and :class:`Choice`, each drawn from
an explicit ``torch.Generator`` (a seed ``s`` means
:func:`course_lib.device.generator` of ``s``, so the seed shift applies). The
objective is a plain function ``params -> float`` of a dict of values; lower
is better unless ``minimize=False``. Every search returns a
:class:`TrialTable`, whose columns draw in one line::

    plt.scatter("lr", "score", data=table.to_dict())
    plt.semilogx(*table.columns("lr", "score"))

**Grid or random.** With :math:`n` trials over :math:`d` parameters a grid
tries only :math:`n^{1/d}` distinct values of each; when the objective
depends mostly on one of them the other axes are wasted. Random search tries
:math:`n` distinct values of every parameter, so its best value of the one
that matters is as good as a 1-D grid of :math:`n` points would find
(Bergstra and Bengio, 2012). Scales (learning rate, weight decay) are drawn
log-uniformly: :math:`\log x \sim U(\log a, \log b)`, density
:math:`1/(x \log(b/a))`, so every decade gets the same share of trials.

**Coarse to fine.** :func:`coarse_to_fine` alternates random search and
:func:`refine`: the next box is the hull of the ``keep`` best trials,
widened on each side by ``pad`` times the current box's width and clipped to
the current box (in log space for :class:`LogUniform`; a :class:`Choice`
keeps the options used by those trials). The box can only shrink.

**Range test** (Smith, 2017). :func:`lr_range_test` trains a copy of a model
for a few hundred steps while the learning rate grows geometrically, records
the smoothed loss, stops once it diverges and suggests a rate (see
:func:`suggest_lr`).
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ._args import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_real,
    require,
    set_fields,
)
from .device import generator as device_generator

Objective = Callable[[dict], float]  # params -> score


def _nonempty(name: str, value) -> tuple:
    """``value`` as a tuple, if it is a non-empty sequence (not a string)."""
    ok = isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    require(ok and len(value) > 0, name, "a non-empty sequence", value)
    return tuple(value)


def _rng(seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return device_generator(check_int("seed", seed))


@dataclass(frozen=True)
class Uniform:
    """``low + (high - low) U`` with ``U ~ U[0, 1)``."""

    low: float
    high: float
    _bounds = "(-inf, inf)"  # no annotation: a class constant, not a field
    _to = _back = staticmethod(float)  # to and from the axis draws are uniform on

    def __post_init__(self):
        low = check_real("low", self.low, self._bounds)
        high = check_real("high", self.high, self._bounds)
        require(high > low, "high", f"a real number > low ({low})", high)
        set_fields(self, low=low, high=high)

    def sample(self, generator: torch.Generator) -> float:
        """One draw, from ``generator``."""
        a, b = self._to(self.low), self._to(self.high)
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        return self._back(a + (b - a) * u)


@dataclass(frozen=True)
class LogUniform(Uniform):
    r"""``exp(U(log low, log high))``: CDF :math:`\log(x/a) / \log(b/a)`.

    Both bounds must be > 0.
    """

    _bounds = "(0, inf)"
    _to, _back = staticmethod(math.log), staticmethod(math.exp)


@dataclass(frozen=True)
class IntUniform:
    """An integer in ``[low, high]`` (both included), each equally likely."""

    low: int
    high: int

    def __post_init__(self):
        low, high = check_int("low", self.low), check_int("high", self.high)
        require(high > low, "high", f"an integer > low ({low})", high)
        set_fields(self, low=low, high=high)

    def sample(self, generator: torch.Generator) -> int:
        """One draw, from ``generator``."""
        return int(torch.randint(self.low, self.high + 1, (), generator=generator))


@dataclass(frozen=True)
class Choice:
    """One of ``options``, each equally likely."""

    options: tuple

    def __post_init__(self):
        set_fields(self, options=_nonempty("options", self.options))

    def sample(self, generator: torch.Generator):
        """One option, drawn from ``generator``."""
        i = torch.randint(len(self.options), (), generator=generator)
        return self.options[int(i)]


Distribution = Uniform | LogUniform | IntUniform | Choice


@dataclass(frozen=True)
class Trial:
    """One evaluated point: its ``params``, its ``score``, and extra ``info``."""

    params: dict
    score: float
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrialTable:
    """Trials in the order they ran; ``sorted()`` puts the best first.

    Non-finite scores (a diverged run) count as the worst.
    """

    trials: tuple[Trial, ...]
    minimize: bool = True

    def __len__(self) -> int:
        return len(self.trials)

    def __iter__(self) -> Iterator[Trial]:
        return iter(self.trials)

    def __getitem__(self, i: int) -> Trial:
        return self.trials[i]

    def _key(self, trial: Trial):
        finite = math.isfinite(trial.score)
        return (not finite, (trial.score if self.minimize else -trial.score)
                if finite else 0.0)  # fmt: skip

    def sorted(self) -> TrialTable:
        """The same trials, best first."""
        return TrialTable(tuple(sorted(self.trials, key=self._key)), self.minimize)

    @property
    def best(self) -> Trial:
        """The trial with the best score (the first of equals)."""
        return min(self.trials, key=self._key)

    @property
    def names(self) -> tuple[str, ...]:
        """The column names in order (parameters, ``"score"``, info keys)."""
        keys = dict.fromkeys(k for t in self.trials for k in t.params)
        keys["score"] = None
        keys.update(dict.fromkeys(k for t in self.trials for k in t.info))
        return tuple(keys)

    def to_dict(self) -> dict[str, list]:
        """``{column: list}``, for ``plt.plot("lr", "score", data=...)`` or pandas."""
        return {name: self.column(name).tolist() for name in self.names}

    def column(self, name: str) -> np.ndarray:
        """One column as an array (NaN where a trial lacks it)."""
        check_choice("name", name, self.names)
        if name == "score":
            return np.array([t.score for t in self.trials])
        rows = [t.params if name in t.params else t.info for t in self.trials]
        return _as_column([row.get(name, math.nan) for row in rows])

    def columns(self, *names: str) -> tuple[np.ndarray, ...]:
        """Several columns: ``plt.plot(*table.columns("lr", "score"))``."""
        return tuple(self.column(name) for name in names)


def _as_column(values: list) -> np.ndarray:
    """Numbers or strings as NumPy infers them; anything else (tuples, a mix)
    as an object array of the values themselves."""
    if all(isinstance(v, numbers.Real) for v in values) or all(
        isinstance(v, str) for v in values
    ):
        return np.array(values)
    return np.fromiter(values, dtype=object, count=len(values))  # tuples stay whole


def _evaluate(objective, params: dict, info: dict) -> Trial:
    score = objective(dict(params))
    if torch.is_tensor(score) and score.numel() == 1:
        score = score.item()
    ok = isinstance(score, numbers.Real) and not isinstance(score, bool)
    if not ok:
        raise TypeError(f"objective must return a real number, got {score!r}")
    return Trial(dict(params), float(score), info)


def grid_search(
    objective: Objective, grid: Mapping[str, Sequence], *, minimize: bool = True
) -> TrialTable:
    """Evaluate ``objective`` at every point of the product of ``grid``'s lists.

    ``{"lr": [0.1, 0.01], "wd": [0, 1e-4]}`` makes four trials, the last
    name varying fastest (``itertools.product`` order).
    """
    check_callable("objective", objective)
    minimize = check_bool("minimize", minimize)
    require(isinstance(grid, Mapping) and len(grid) > 0, "grid",
            "a non-empty mapping of names to sequences", grid)  # fmt: skip
    axes = [_nonempty(f"grid[{name!r}]", values) for name, values in grid.items()]
    trials = [_evaluate(objective, dict(zip(grid, point, strict=True)), {})
              for point in itertools.product(*axes)]  # fmt: skip
    return TrialTable(tuple(trials), minimize)


def _check_space(space) -> dict:
    require(isinstance(space, Mapping) and len(space) > 0, "space",
            "a non-empty mapping of names to distributions", space)  # fmt: skip
    for name, dist in space.items():
        if not isinstance(dist, Distribution):
            kinds = "a Uniform, LogUniform, IntUniform or Choice"
            raise TypeError(f"space[{name!r}] must be {kinds}, got {dist!r}")
    return dict(space)


def sample(space: Mapping[str, Distribution], generator) -> dict:
    """One point of ``space``, drawn in the space's key order."""
    generator = _rng(generator)
    return {name: dist.sample(generator) for name, dist in _check_space(space).items()}


def random_search(
    objective: Objective,
    space: Mapping[str, Distribution],
    *,
    num_trials: int,
    seed: int | torch.Generator,
    minimize: bool = True,
) -> TrialTable:
    """Evaluate ``objective`` at ``num_trials`` points drawn from ``space``."""
    check_callable("objective", objective)
    space, minimize = _check_space(space), check_bool("minimize", minimize)
    num_trials, gen = check_int("num_trials", num_trials, low=1), _rng(seed)
    trials = [_evaluate(objective, sample(space, gen), {}) for _ in range(num_trials)]
    return TrialTable(tuple(trials), minimize)


def _shrink(dist, values: list, pad: float):
    if isinstance(dist, Choice):
        return Choice(tuple(o for o in dist.options if o in values))
    if isinstance(dist, IntUniform):
        margin = math.ceil(pad * (dist.high - dist.low))
        low = max(dist.low, min(values) - margin)
        high = min(dist.high, max(values) + margin)
        return IntUniform(low, high) if high > low else Choice((low,))
    a, b = dist._to(dist.low), dist._to(dist.high)
    t, margin = [dist._to(v) for v in values], pad * (b - a)
    low, high = max(a, min(t) - margin), min(b, max(t) + margin)
    return type(dist)(dist._back(low), dist._back(high))


def refine(
    space: Mapping[str, Distribution], table: TrialTable, *, keep: int, pad: float
) -> dict:
    """The box around ``table``'s ``keep`` best trials (the module's rule).

    Per parameter: [min, max] of those trials' values, widened by ``pad``
    times the current width on each side, clipped to the current range; in
    log space for :class:`LogUniform`; rounded outward for
    :class:`IntUniform` (a single integer left becomes a :class:`Choice`).
    """
    space = _check_space(space)
    keep = check_int("keep", keep, low=1, high=len(table))
    pad = check_real("pad", pad, "(0, inf)")
    best = table.sorted().trials[:keep]
    return {name: _shrink(dist, [t.params[name] for t in best], pad)
            for name, dist in space.items()}  # fmt: skip


def coarse_to_fine(
    objective: Objective,
    space: Mapping[str, Distribution],
    *,
    rounds: int,
    num_trials: int,
    seed: int | torch.Generator,
    keep: int = 3,
    pad: float = 0.1,
    minimize: bool = True,
) -> TrialTable:
    """``rounds`` random searches of ``num_trials``, each in the :func:`refine`
    box of the previous round. Each trial's ``info`` holds its ``round``
    (0 first) and the table holds all of them."""
    space = _check_space(space)
    rounds = check_int("rounds", rounds, low=1)
    num_trials = check_int("num_trials", num_trials, low=1)
    check_int("keep", keep, low=1, high=num_trials)
    gen, trials = _rng(seed), []
    for r in range(rounds):
        found = random_search(objective, space, num_trials=num_trials, seed=gen,
                              minimize=minimize)  # fmt: skip
        trials += [Trial(t.params, t.score, {"round": r}) for t in found]
        space = refine(space, found, keep=keep, pad=pad)
    return TrialTable(tuple(trials), minimize)


@dataclass(frozen=True)
class RangeTest(TrialTable):
    """A :class:`TrialTable` of ``lr`` / smoothed-loss ``score`` (raw ``loss``
    and ``step`` in ``info``), with the ``suggested_lr`` and why it ``stopped``."""

    suggested_lr: float = math.nan
    stopped: str | None = None


def suggest_lr(lrs, losses, rule: str = "min/10", *, skip_start: int = 10) -> float:
    r"""A learning rate from a range test's smoothed ``losses``.

    ``"min/10"`` (the default): a tenth of the lr at the minimum, a point still
    on the descent since the minimum sits close to divergence. ``"steepest"``
    (fastai's rule): where the loss falls fastest per decade, the most negative
    :math:`d\,\mathrm{loss} / d \log \mathrm{lr}` (finite differences)
    between step ``skip_start`` and the minimum (the first steps are left out:
    there the average still moves by batch-to-batch noise); it is fragile on
    noisy curves, where the noise of a few steps can beat the true descent.
    It falls back to ``"min/10"`` when the minimum comes within
    ``skip_start + 2`` steps.
    """
    rule = check_choice("rule", rule, ("steepest", "min/10"))
    skip_start = check_int("skip_start", skip_start, low=0)
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    i_min = int(np.nanargmin(losses))
    if rule == "min/10" or i_min < skip_start + 2:
        return float(lrs[i_min] / 10)
    part = slice(skip_start, i_min + 1)
    slope = np.gradient(losses[part], np.log(lrs[part]))
    return float(lrs[part][int(np.argmin(slope))])


def _batches(loader) -> Iterator:
    while True:  # cycle: a short loader is read again
        empty = True
        for batch in loader:
            empty = False
            yield batch
        require(not empty, "loader", "a non-empty re-iterable of (X, y)", loader)


def lr_range_test(
    model: nn.Module,
    loss_fn: Callable,
    loader,
    optimizer_cls: Callable,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    rule: str = "min/10",
) -> RangeTest:
    r"""Smith's (2017) test: one short run with a growing learning rate.

    Step :math:`i` trains a deep copy of ``model`` (the caller's model, its
    gradients and its optimizer are untouched) at
    :math:`\mathrm{lr}_i = a (b/a)^{i/(n-1)}`, from ``start_lr`` :math:`a` to
    ``end_lr`` :math:`b` in :math:`n` = ``num_steps`` steps, with a fresh
    ``optimizer_cls(params, lr=a)`` (a ``functools.partial`` carries momentum
    etc.). ``loader`` (a ``DataLoader`` or a list of ``(X, y)``) is cycled.
    The loss recorded at :math:`\mathrm{lr}_i` is the batch's loss before
    that step, so it shows the effect of the rates up to
    :math:`\mathrm{lr}_{i-1}`. The score is the bias-corrected moving average
    :math:`\bar\ell_i = m_i / (1 - \beta^{i+1})`,
    :math:`m_i = \beta m_{i-1} + (1-\beta) \ell_i`, :math:`\beta` =
    ``smoothing``. The run stops at the first non-finite loss or once
    :math:`\bar\ell_i` exceeds ``diverge_factor`` times its minimum so far
    (``inf``: only the non-finite stop). The rate :func:`suggest_lr` picks
    with ``rule`` is kept. To plot:
    ``plt.semilogx(*result.columns("lr", "score"))``.
    """
    check_callable("loss_fn", loss_fn)
    check_callable("optimizer_cls", optimizer_cls)
    start_lr = check_real("start_lr", start_lr, "(0, inf)")
    end_lr = check_real("end_lr", end_lr, "(0, inf)")
    require(end_lr > start_lr, "end_lr", f"a real number > start_lr ({start_lr})",
            end_lr)  # fmt: skip
    num_steps = check_int("num_steps", num_steps, low=2)
    beta = check_real("smoothing", smoothing, "[0, 1)")
    diverge_factor = check_real("diverge_factor", diverge_factor, "(1, inf]")
    check_choice("rule", rule, ("steepest", "min/10"))
    net = copy.deepcopy(model).train()
    device = next(net.parameters()).device
    opt = optimizer_cls(net.parameters(), lr=start_lr)
    lrs = start_lr * (end_lr / start_lr) ** np.linspace(0.0, 1.0, num_steps)
    trials, avg, best, stopped = [], 0.0, math.inf, None
    for i, (lr, (X, y)) in enumerate(zip(lrs, _batches(loader), strict=False)):
        for group in opt.param_groups:
            group["lr"] = float(lr)
        loss = loss_fn(net(X.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        raw = loss.item()
        avg = beta * avg + (1 - beta) * raw
        smooth = avg / (1 - beta ** (i + 1))
        if not math.isfinite(smooth):
            stopped = f"non-finite loss ({raw}) at step {i}, lr {lr:.3g}"
            break
        trials.append(Trial({"lr": float(lr)}, smooth, {"loss": raw, "step": i}))
        best = min(best, smooth)
        if smooth > diverge_factor * best:
            stopped = f"diverged at step {i}, lr {lr:.3g}"
            break
    lr_col = [t.params["lr"] for t in trials]
    scores = [t.score for t in trials]
    suggested = suggest_lr(lr_col, scores, rule) if trials else math.nan
    return RangeTest(tuple(trials), True, suggested_lr=suggested, stopped=stopped)
