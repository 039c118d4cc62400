"""Pieces that lab harnesses share: tiny float64 networks, their data, and
feedback that names the step, the rank and the parameter where a run parts
from the reference run.

Float64 everywhere: a right answer then matches the reference to ~1e-15, so
tolerances can be tight enough that every classic mistake shows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .checks import tensor_mismatch


def tiny_net(seed: int, sizes=(5, 8, 3), *, frozen_first: bool = False) -> nn.Module:
    """``Linear(sizes[0], sizes[1]) -> Tanh -> Linear(sizes[1], sizes[2])``, float64.

    The weights are those ``torch.manual_seed(seed)`` gives, drawn in a forked
    random state so the caller's is untouched; ``frozen_first=True`` freezes
    the first layer (its parameters then get no gradient).
    """
    d_in, hidden, classes = sizes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes)
        ).double()
    if frozen_first:
        model[0].requires_grad_(False)
    return model


def tiny_batches(seed: int, shape: tuple, d_in: int = 5, classes: int = 3):
    """Random inputs ``(*shape, d_in)`` (float64) and labels ``shape`` (int64)."""
    g = torch.Generator().manual_seed(seed + 1000)
    X = torch.randn(*shape, d_in, generator=g, dtype=torch.float64)
    return X, torch.randint(0, classes, shape, generator=g)


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """Every parameter of ``model``, detached and flattened into one ``(P,)``."""
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def parameter_names(model: nn.Module) -> list[str]:
    """Names of ``model``'s parameters flattened in order: '0.weight[2, 1]', ...

    Feedback can then say which weight differs instead of a flat index.
    """
    names = []
    for name, p in model.named_parameters():
        for index in torch.cartesian_prod(*[torch.arange(n) for n in p.shape]).reshape(
            -1, p.dim()
        ):
            names.append(f"{name}[{', '.join(str(int(i)) for i in index)}]")
    return names


def first_mismatch(names: list[str], reference: str) -> Callable:
    """An ``explain`` for runs recorded as parameters after every step.

    The outputs are ``(steps, P)`` (one run) or ``(ranks, steps, P)`` (one run
    per worker), ``P`` the parameters named by ``names``. The message says
    after which step, on which rank and at which parameter the student's run
    first leaves ``reference``'s (e.g. ``"torch.optim.Adam"``).
    """

    def explain(expected, actual, *, rtol: float, atol: float) -> str | None:
        problem = tensor_mismatch(expected, actual)
        if problem:
            return f"parameters after each step: {problem}"
        close = torch.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
        if bool(close.all()):
            return None
        bad = torch.nonzero(~close)  # (k, ndim): indices of the elements that are off
        step = int(bad[:, -2].min())
        where = tuple(int(i) for i in bad[bad[:, -2] == step][0])
        rank = f"rank {where[0]}'s " if expected.dim() == 3 else ""
        return (
            f"after step {step + 1}, {rank}parameter {names[where[-1]]} differs "
            f"from {reference}'s: expected {expected[where].item():.10g}, got "
            f"{actual[where].item():.10g}"
        )

    return explain
