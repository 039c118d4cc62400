r"""Learning-rate schedules as pure functions of the step.

A schedule maps the 0-based index :math:`t` of the optimizer step about to be
taken to a multiplicative *factor*: :math:`\mathrm{lr}_t = \mathrm{base\_lr}
\cdot f(t)`. The same object serves a hand-written loop (``lr = base_lr *
schedule(step)``, like nanoGPT's ``get_lr(it)``) and PyTorch, which calls it
with ``last_epoch``, the number of ``scheduler.step()`` calls so far, and
scales each parameter group's own initial lr::

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Cosine(1000))

Schedules are frozen dataclasses: they pickle (multi-process training), print
a readable repr (plot legends), and keep a ``__dict__`` (no ``slots``), which
``LambdaLR.state_dict`` saves. Each class names its ``torch.optim.lr_scheduler``
counterpart and where it departs from it; the tests check it against torch.
Where torch updates the lr recursively (``StepLR``, ``ExponentialLR``,
``LinearLR``, ``CosineAnnealingLR`` multiply the current lr), ours are closed
forms, so nothing else that touches the lr can make them drift.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from ._args import (
    check_callable,
    check_int,
    check_int_sequence,
    check_real,
    require,
    set_fields,
)

__all__ = [
    "Constant", "Cosine", "CosineRestarts", "Exponential", "Inverse",
    "InverseSqrt", "LinearDecay", "MultiStep", "OneCycle", "StepDecay",
    "Warmup", "factors", "torch_scheduler",
]  # fmt: skip


def _check_step(step) -> int:
    return check_int("step", step, low=0)


def _check_schedule(schedule):
    # A class is callable too, but Warmup(Cosine, 5) would return Cosine objects
    accepted = "a callable mapping a step to a factor, e.g. Cosine(100)"
    return check_callable("schedule", schedule, accepted, allow_class=False)


def _cosine_anneal(start: float, end: float, progress: float) -> float:
    """Half a cosine from ``start`` (progress 0) to ``end`` (progress 1)."""
    # torch's OneCycleLR._annealing_cos, term for term, so rounding agrees
    return end + (start - end) / 2.0 * (math.cos(math.pi * progress) + 1)


@dataclass(frozen=True)
class Constant:
    r"""The factor 1 at every step: :math:`f(t) = 1`; the baseline.

    Counterpart: ``ConstantLR(optimizer, factor=1.0, total_iters=0)``.
    """

    def __call__(self, step: int) -> float:
        _check_step(step)
        return 1.0


@dataclass(frozen=True)
class StepDecay:
    r"""Multiply by ``gamma`` every ``step_size`` steps: :math:`f(t) =
    \gamma^{\lfloor t / \mathrm{step\_size} \rfloor}`, :math:`\gamma \in (0, 1]`.

    Counterpart: ``StepLR(optimizer, step_size, gamma)``.
    """

    step_size: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        set_fields(
            self, step_size=check_int("step_size", self.step_size, low=1),
            gamma=check_real("gamma", self.gamma, "(0, 1]"),
        )  # fmt: skip

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        return float(self.gamma ** (step // self.step_size))


@dataclass(frozen=True)
class MultiStep:
    r"""Multiply by ``gamma`` at each milestone.

    .. math::
        f(t) = \gamma^{\,|\{m \in \mathrm{milestones} \,:\, m \le t\}|}

    Counterpart: ``MultiStepLR(optimizer, milestones, gamma)``. Departure:
    milestones must be strictly increasing positive integers (torch accepts
    repeats and decays once per copy). A list is stored as a tuple, so the
    object stays immutable and hashable.
    """

    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        ms = check_int_sequence("milestones", self.milestones, low=1, nonempty=True)
        ok = all(a < b for a, b in itertools.pairwise(ms))
        accepted = "strictly increasing (no decay: use Constant())"
        require(ok, "milestones", accepted, self.milestones)
        set_fields(self, milestones=ms, gamma=check_real("gamma", self.gamma, "(0, 1]"))

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        passed = sum(1 for m in self.milestones if m <= step)
        return float(self.gamma**passed)


@dataclass(frozen=True)
class Exponential:
    r"""Multiply by ``gamma`` at every step: :math:`f(t) = \gamma^t`,
    :math:`\gamma \in (0, 1]`.

    Counterpart: ``ExponentialLR(optimizer, gamma)``.
    """

    gamma: float

    def __post_init__(self) -> None:
        set_fields(self, gamma=check_real("gamma", self.gamma, "(0, 1]"))

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        return float(self.gamma**step)


@dataclass(frozen=True)
class Inverse:
    r"""Inverse-time decay, the classic Robbins-Monro step size:
    :math:`f(t) = 1 / (1 + k t)`, :math:`k > 0`.

    No torch class; ``MultiplicativeLR`` given the ratio :math:`f(t)/f(t-1)`
    reproduces it as a running product.
    """

    k: float

    def __post_init__(self) -> None:
        set_fields(self, k=check_real("k", self.k, "(0, inf)"))

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        return 1.0 / (1.0 + self.k * step)


@dataclass(frozen=True)
class InverseSqrt:
    r"""Inverse square-root decay, the Transformer's schedule after warm-up:
    :math:`f(t) = 1 / \sqrt{1 + k t}`, :math:`k > 0`.

    No torch class; see :class:`Inverse`. Vaswani et al.'s schedule is
    ``Warmup(InverseSqrt(k), W)`` up to a constant factor.
    """

    k: float = 1.0

    def __post_init__(self) -> None:
        set_fields(self, k=check_real("k", self.k, "(0, inf)"))

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        return 1.0 / math.sqrt(1.0 + self.k * step)


@dataclass(frozen=True)
class LinearDecay:
    r"""A straight line from 1 down to ``end_factor`` :math:`= e \in [0, 1]`
    over ``total_steps`` :math:`= T`: :math:`f(t) = 1 - (1 - e) \min(t, T) / T`.

    Counterpart: ``LinearLR(optimizer, start_factor=1.0, end_factor=e,
    total_iters=T)``; both stay at :math:`e` after step :math:`T`.
    """

    total_steps: int
    end_factor: float = 0.0

    def __post_init__(self) -> None:
        set_fields(
            self, total_steps=check_int("total_steps", self.total_steps, low=1),
            end_factor=check_real("end_factor", self.end_factor, "[0, 1]"),
        )  # fmt: skip

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        progress = min(step, self.total_steps) / self.total_steps
        return 1.0 - (1.0 - self.end_factor) * progress


@dataclass(frozen=True)
class Cosine:
    r"""Half a cosine from 1 down to ``min_factor`` over ``total_steps``.

    .. math::
        f(t) = m + \frac{1 - m}{2}
        \left(1 + \cos\left(\pi \, \frac{\min(t, T)}{T}\right)\right),
        \qquad m \in [0, 1)

    Counterpart: ``CosineAnnealingLR(optimizer, T_max=T,
    eta_min=m * base_lr)``. Departures: ours stays at :math:`m` for
    :math:`t > T`, while torch's curve climbs back up (period :math:`2T`);
    torch's ``eta_min`` is one absolute lr shared by all parameter groups,
    ours is a fraction of each group's own lr.
    """

    total_steps: int
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        set_fields(
            self, total_steps=check_int("total_steps", self.total_steps, low=1),
            min_factor=check_real("min_factor", self.min_factor, "[0, 1)"),
        )  # fmt: skip

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        progress = min(step, self.total_steps) / self.total_steps
        return _cosine_anneal(1.0, self.min_factor, progress)


@dataclass(frozen=True)
class Warmup:
    r"""Linear warm-up for ``warmup_steps``, then any other schedule.

    .. math::
        f(t) = \begin{cases}
            s + (1 - s) \, t / W & t < W \\
            g(t - W) & t \ge W
        \end{cases}, \qquad s \in [0, 1]

    The wrapped schedule :math:`g` starts its own clock when warm-up ends, so
    ``Warmup(Cosine(T), W)`` lasts :math:`W + T` steps in all.

    Counterpart: ``SequentialLR(optimizer, [LinearLR(optimizer,
    start_factor=s, end_factor=1.0, total_iters=W), inner], milestones=[W])``.
    Departure: torch's ``LinearLR`` needs :math:`s > 0`; ours also takes the
    common :math:`s = 0` (step 0 then leaves the weights as they are).
    """

    schedule: Callable[[int], float]
    warmup_steps: int
    start_factor: float = 0.0

    def __post_init__(self) -> None:
        _check_schedule(self.schedule)
        set_fields(
            self, warmup_steps=check_int("warmup_steps", self.warmup_steps, low=1),
            start_factor=check_real("start_factor", self.start_factor, "[0, 1]"),
        )  # fmt: skip

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        if step < self.warmup_steps:
            ramp = step / self.warmup_steps
            return self.start_factor + (1.0 - self.start_factor) * ramp
        return self.schedule(step - self.warmup_steps)


@dataclass(frozen=True)
class CosineRestarts:
    r"""SGDR: cosine from 1 to ``min_factor``, restarted, cycles growing.

    Cycle :math:`i = 0, 1, \dots` lasts :math:`T_i = \mathrm{period} \cdot
    \mathrm{period\_mult}^i` steps; with :math:`t_{cur}` the steps since the
    last restart,

    .. math::
        f(t) = m + \frac{1 - m}{2}
        \left(1 + \cos\left(\pi \, \frac{t_{cur}}{T_i}\right)\right)

    Counterpart: ``CosineAnnealingWarmRestarts(optimizer, T_0=period,
    T_mult=period_mult, eta_min=m * base_lr)``. As in torch, the factor jumps
    back to 1 one step before it would reach :math:`m`. Departure: torch's
    ``eta_min`` is shared by all groups, ours is relative (see :class:`Cosine`).
    """

    period: int
    period_mult: int = 1
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        set_fields(
            self, period=check_int("period", self.period, low=1),
            period_mult=check_int("period_mult", self.period_mult, low=1),
            min_factor=check_real("min_factor", self.min_factor, "[0, 1)"),
        )  # fmt: skip

    def _cycle_position(self, step: int) -> tuple[int, int]:
        """(steps since the last restart, length of the current cycle)."""
        if self.period_mult == 1:  # O(1); the loop below would take t / period
            return step % self.period, self.period
        length = self.period
        while step >= length:  # cycles grow geometrically: O(log t) rounds
            step -= length
            length *= self.period_mult
        return step, length

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        since_restart, length = self._cycle_position(step)
        return _cosine_anneal(1.0, self.min_factor, since_restart / length)


@dataclass(frozen=True)
class OneCycle:
    r"""Smith & Topin's 1cycle policy, as a factor of the PEAK learning rate.

    Build the optimizer with the peak lr (torch's ``max_lr``). With
    :math:`a = 1/\mathrm{div\_factor}`, :math:`b = a/\mathrm{final\_div\_factor}`,
    torch's phase ends :math:`E_1 = \mathrm{pct\_start} \cdot T - 1` and
    :math:`E_2 = T - 1`, and :math:`c(x, y, p) = y + \frac{x - y}{2}
    (1 + \cos \pi p)`, a cosine from :math:`x` to :math:`y`:

    .. math::
        f(t) = \begin{cases}
            c(a, 1, t / E_1) & t \le E_1 \\
            c(1, b, (t - E_1) / (E_2 - E_1)) & E_1 < t \le E_2 \\
            b & t > E_2
        \end{cases}

    Counterpart: ``OneCycleLR(optimizer, max_lr, total_steps=T, pct_start,
    anneal_strategy='cos', cycle_momentum=False, div_factor,
    final_div_factor, three_phase=False)``: same values for :math:`t < T`.
    Departures: for :math:`t \ge T` ours stays at :math:`b`; torch overshoots
    at :math:`t = T` (its cosine runs past the end) and raises after. Ours
    rejects a ``pct_start`` with :math:`E_1 \le 0`, for which torch divides by
    zero or skips the peak. Momentum cycling (not an lr schedule) is left out.
    """

    total_steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def __post_init__(self) -> None:
        set_fields(
            self, total_steps=check_int("total_steps", self.total_steps, low=1),
            pct_start=check_real("pct_start", self.pct_start, "(0, 1)"),
        )  # fmt: skip
        # Both phases must span more than one step: torch divides by zero when
        # pct_start * total_steps == 1 and starts past the peak when it is < 1.
        ok = 0 < self._rise_end() < self.total_steps - 1
        accepted = f"such that 1 < pct_start * total_steps < {self.total_steps}"
        require(ok, "pct_start", accepted + " (= total_steps)", self.pct_start)
        set_fields(
            self, div_factor=check_real("div_factor", self.div_factor, "[1, inf)"),
            final_div_factor=check_real(
                "final_div_factor", self.final_div_factor, "[1, inf)"
            ),
        )  # fmt: skip

    def _rise_end(self) -> float:
        # torch's end of phase 1, not rounded: float(pct_start * total_steps) - 1
        return float(self.pct_start * self.total_steps) - 1

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        start = 1.0 / self.div_factor
        final = start / self.final_div_factor
        rise_end, last = self._rise_end(), self.total_steps - 1
        if step <= rise_end:
            return _cosine_anneal(start, 1.0, step / rise_end)
        if step <= last:
            return _cosine_anneal(1.0, final, (step - rise_end) / (last - rise_end))
        return final


def factors(schedule: Callable[[int], float], num_steps: int) -> list[float]:
    """``[schedule(t) for t in range(num_steps)]``: the curve a plot draws."""
    _check_schedule(schedule)
    num_steps = check_int("num_steps", num_steps, low=0)
    return [schedule(t) for t in range(num_steps)]


def torch_scheduler(schedule: Callable[[int], float], optimizer):
    """The ``torch.optim.lr_scheduler`` object that computes the same learning rates.

    This is the "in practice" half of each schedule: what to write when you use
    PyTorch's own classes. ``Inverse`` and ``InverseSqrt`` have no class of
    their own; they map to ``MultiplicativeLR`` with the step-to-step ratio of
    the formula, so torch still computes the running product independently.
    Torch's ``eta_min`` is one absolute value, so a ``min_factor`` > 0 is
    translated with the first parameter group's learning rate.
    """
    from torch.optim import lr_scheduler as sched

    base = optimizer.param_groups[0]["lr"]
    match schedule:
        case Constant():
            return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
        case StepDecay(step_size=s, gamma=g):
            return sched.StepLR(optimizer, step_size=s, gamma=g)
        case MultiStep(milestones=m, gamma=g):
            return sched.MultiStepLR(optimizer, milestones=list(m), gamma=g)
        case Exponential(gamma=g):
            return sched.ExponentialLR(optimizer, gamma=g)
        case Inverse(k=k):
            return sched.MultiplicativeLR(
                optimizer, lambda t: (1 + k * (t - 1)) / (1 + k * t)
            )
        case InverseSqrt(k=k):
            ratio = lambda t: math.sqrt((1 + k * (t - 1)) / (1 + k * t))  # noqa: E731
            return sched.MultiplicativeLR(optimizer, ratio)
        case LinearDecay(total_steps=n, end_factor=e):
            return sched.LinearLR(
                optimizer, start_factor=1.0, end_factor=e, total_iters=n
            )
        case Cosine(total_steps=n, min_factor=m):
            return sched.CosineAnnealingLR(optimizer, T_max=n, eta_min=m * base)
        case CosineRestarts(period=p, period_mult=k, min_factor=m):
            return sched.CosineAnnealingWarmRestarts(
                optimizer, T_0=p, T_mult=k, eta_min=m * base
            )
        case OneCycle():
            peaks = [group["lr"] for group in optimizer.param_groups]
            return sched.OneCycleLR(
                optimizer,
                max_lr=peaks,
                total_steps=schedule.total_steps,
                pct_start=schedule.pct_start,
                anneal_strategy="cos",
                cycle_momentum=False,
                div_factor=schedule.div_factor,
                final_div_factor=schedule.final_div_factor,
            )
        case Warmup(schedule=inner, warmup_steps=w, start_factor=s):
            require(s > 0, "start_factor", "> 0 for torch's LinearLR", s)
            ramp = sched.LinearLR(
                optimizer, start_factor=s, end_factor=1.0, total_iters=w
            )
            after = torch_scheduler(inner, optimizer)
            return sched.SequentialLR(optimizer, [ramp, after], milestones=[w])
    names = [n for n in __all__ if n[0].isupper()]
    raise ValueError(f"schedule must be one of {names}, got {schedule!r}")
