r"""Two-dimensional loss surfaces on which an optimizer's path can be seen.

Each surface is a callable on a tensor whose last dimension holds the two
coordinates, ``(..., 2) -> (...)``, so the same object gives the loss at one
point (for an optimizer) and on a grid (for a contour plot):

- :class:`Quadratic`: :math:`\tfrac12(x^2 + \kappa y^2)`, a valley whose
  curvatures differ by the condition number :math:`\kappa`;
- :class:`Saddle`: :math:`\tfrac12 x^2 - \tfrac12 y^2 + \tfrac14 y^4`, a
  saddle point at the origin between two minima at :math:`(0, \pm 1)`;
- :class:`Rosenbrock`: :math:`(1 - x)^2 + b\,(y - x^2)^2`, a curved, narrow
  valley with its minimum at :math:`(1, 1)`.

:func:`trajectory` runs any ``torch.optim``-style optimizer on a surface and
returns the path; :func:`newton_step` takes one Newton step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._args import check_callable, check_int, check_real, set_fields


def _xy(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if points.shape[-1] != 2:
        raise ValueError(f"points must have 2 coordinates in the last dimension, "
                         f"got shape {tuple(points.shape)}")  # fmt: skip
    return points[..., 0], points[..., 1]


@dataclass(frozen=True)
class Quadratic:
    """``0.5 * (x**2 + condition * y**2)``; minimum 0 at the origin."""

    condition: float = 50.0

    def __post_init__(self):
        set_fields(self, condition=check_real("condition", self.condition, "[1, inf)"))

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        x, y = _xy(points)
        return 0.5 * (x**2 + self.condition * y**2)

    minimum = (0.0, 0.0)


@dataclass(frozen=True)
class Saddle:
    """``0.5 x^2 - 0.5 y^2 + 0.25 y^4``: a saddle at 0, minima -0.25 at (0, +-1)."""

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        x, y = _xy(points)
        return 0.5 * x**2 - 0.5 * y**2 + 0.25 * y**4

    minimum = (0.0, 1.0)


@dataclass(frozen=True)
class Rosenbrock:
    """``(1 - x)^2 + b (y - x^2)^2``; minimum 0 at (1, 1)."""

    b: float = 100.0

    def __post_init__(self):
        set_fields(self, b=check_real("b", self.b, "(0, inf)"))

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        x, y = _xy(points)
        return (1 - x) ** 2 + self.b * (y - x**2) ** 2

    minimum = (1.0, 1.0)


def trajectory(
    surface: Callable[[torch.Tensor], torch.Tensor],
    make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    start: tuple[float, float],
    num_steps: int,
) -> torch.Tensor:
    """The points visited by an optimizer on ``surface``: ``(num_steps + 1, 2)``.

    ``make_optimizer`` receives the parameter list, e.g.
    ``lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9)``. The
    point is float64 so that paths are not limited by float32 round-off.
    """
    check_callable("surface", surface)
    check_callable("make_optimizer", make_optimizer)
    num_steps = check_int("num_steps", num_steps, low=0)
    point = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = make_optimizer([point])
    path = [point.detach().clone()]
    for _ in range(num_steps):
        optimizer.zero_grad()
        surface(point).backward()
        optimizer.step()
        path.append(point.detach().clone())
    return torch.stack(path)  # (num_steps + 1, 2)


def steps_to_reach(surface, path: torch.Tensor, target: float) -> int | None:
    """First step at which ``surface`` is below ``target`` on ``path`` (None: never)."""
    below = torch.nonzero(surface(path) < target)
    return int(below[0, 0]) if len(below) else None


def newton_step(surface, point) -> torch.Tensor:
    r"""One Newton step, :math:`x - H(x)^{-1} \nabla f(x)`, from ``point``.

    Exact for a quadratic: it lands on the minimum in one step whatever the
    conditioning, because it rescales every direction by its own curvature.
    """
    x = torch.as_tensor(point, dtype=torch.float64)
    grad = torch.autograd.functional.jacobian(surface, x)  # (2,)
    hessian = torch.autograd.functional.hessian(surface, x)  # (2, 2)
    return x - torch.linalg.solve(hessian, grad)
