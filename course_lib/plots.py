"""Plots the book draws again and again: learning curves and schedules.

Every function draws on a matplotlib ``Axes`` (made if not given) and returns
it, so that a notebook can put several on one figure and add its own labels.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np

from ._args import check_bool, check_choice, check_int, check_real
from ._util import history_field
from .diagnose import moving_average
from .schedules import factors

_METRICS = ("loss", "acc")


def _axes(ax):
    return ax if ax is not None else plt.subplots(figsize=(5, 3.2))[1]


def plot_history(
    history, metric: str = "loss", *, ax=None, log: bool = False, title=None
):
    """Per-epoch training and validation ``metric`` ("loss" or "acc") of one run."""
    check_choice("metric", metric, _METRICS)
    log = check_bool("log", log)
    ax = _axes(ax)
    for split, style in (("train", "-"), ("val", "--")):
        values = history_field(history, f"{split}_{metric}")
        if len(values):
            ax.plot(np.arange(1, len(values) + 1), values, style, label=split)
    ax.set(xlabel="epoch", ylabel=metric, title=title)
    if log:
        ax.set_yscale("log")
    ax.legend()
    return ax


def plot_step_loss(
    histories: Mapping[str, object],
    *,
    ax=None,
    smooth: int | None = None,
    log: bool = False,
    title=None,
):
    """Per-step training loss of several runs (``{label: history}``).

    ``smooth`` draws a trailing moving average of that many steps over a faint
    copy of the raw curve; non-finite values are left out (a diverged run
    simply ends).
    """
    if smooth is not None:
        smooth = check_int("smooth", smooth, low=0)  # 0, like None: no smoothing
    log = check_bool("log", log)
    ax = _axes(ax)
    for label, history in histories.items():
        loss = np.asarray(history_field(history, "step_loss"), dtype=float)
        loss = (
            loss[: np.argmin(np.isfinite(loss))]
            if not np.isfinite(loss).all()
            else loss
        )
        steps = np.arange(len(loss))
        if smooth:
            line = ax.plot(steps, loss, alpha=0.25, linewidth=0.8)[0]
            ax.plot(
                steps, moving_average(loss, smooth), color=line.get_color(), label=label
            )
        else:
            ax.plot(steps, loss, label=label, linewidth=1)
    ax.set(xlabel="step", ylabel="training loss (mini-batch)", title=title)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize="small")
    return ax


def plot_schedules(
    schedules: Mapping[str, object], num_steps: int, *, base_lr=1.0, ax=None
):
    """Learning rate against step for several schedules (``{label: schedule}``)."""
    base_lr = check_real("base_lr", base_lr, "[0, inf)")
    ax = _axes(ax)
    for label, schedule in schedules.items():
        ax.plot(base_lr * np.asarray(factors(schedule, num_steps)), label=label)
    ax.set(xlabel="step", ylabel="learning rate")
    ax.legend(fontsize="small", ncol=2)
    return ax


def plot_landscape(
    surface,
    paths: Mapping[str, object] | None = None,
    *,
    xlim=(-2.0, 2.0),
    ylim=(-2.0, 2.0),
    ax=None,
    log_levels: bool = True,
    title=None,
):
    """Contours of a 2-D ``surface`` with optimizer ``paths`` (``{label: (T, 2)}``).

    ``log_levels`` spaces the contours logarithmically above the minimum of
    the grid, which shows narrow valleys far better than even spacing.
    """
    import torch  # plots needs torch only here

    ax = _axes(ax)
    xs, ys = np.linspace(*xlim, 300), np.linspace(*ylim, 300)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), axis=-1))  # (300, 300, 2)
    z = surface(grid).numpy()
    if log_levels:
        z = np.log10(z - z.min() + 1e-3)
    ax.contour(xs, ys, z, levels=25, cmap="Greys", linewidths=0.6)
    for label, path in (paths or {}).items():
        p = np.asarray(path)
        ax.plot(p[:, 0], p[:, 1], ".-", markersize=2, linewidth=1, label=label)
    ax.set(xlim=xlim, ylim=ylim, xlabel="$x$", ylabel="$y$", title=title)
    if paths:
        ax.legend(fontsize="small")
    return ax
