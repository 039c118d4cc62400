r"""Two-dimensional loss surfaces on which an optimizer's path can be seen.

Each surface is a callable on a tensor whose last dimension holds the two
coordinates, ``(..., 2) -> (...)``, so the same object gives the loss at one
point (for an optimizer) and on a grid (for a contour plot):

- :class:`Quadratic`: :math:`\tfrac12(x^2 + \kappa y^2)`, a valley whose
  curvatures differ by the condition number :math:`\kappa`, optionally
  rotated so that its axes no longer lie along the coordinates;
- :class:`Saddle`: :math:`\tfrac12 x^2 - \tfrac12 y^2 + \tfrac14 y^4`, a
  saddle point at the origin between two minima at :math:`(0, \pm 1)`;
- :class:`Rosenbrock`: :math:`(1 - x)^2 + b\,(y - x^2)^2`, a curved, narrow
  valley with its minimum at :math:`(1, 1)`.

:func:`trajectory` runs any ``torch.optim``-style optimizer on a surface and
returns the path; :func:`newton_step` takes one Newton step.
"""

from __future__ import annotations

import math
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
    r"""``0.5 * (u**2 + condition * v**2)``; minimum 0 at the origin.

    ``(u, v)`` are the coordinates ``(x, y)`` turned by ``-angle`` degrees:
    :math:`u = x\cos a + y\sin a`, :math:`v = -x\sin a + y\cos a`. With
    ``angle=0`` (the default) that is :math:`\tfrac12(x^2 + \kappa y^2)`; with
    ``angle=45`` the same valley runs along the diagonal, its Hessian
    :math:`R\,\mathrm{diag}(1, \kappa)\,R^\top` is no longer diagonal, and
    a per-coordinate step size cannot undo the conditioning.
    """

    condition: float = 50.0
    angle: float = 0.0

    def __post_init__(self):
        set_fields(
            self,
            condition=check_real("condition", self.condition, "[1, inf)"),
            angle=check_real("angle", self.angle, "[-360, 360]"),
        )

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        x, y = _xy(points)
        if self.angle == 0.0:  # exactly the unrotated formula, no round-off
            return 0.5 * (x**2 + self.condition * y**2)
        a = math.radians(self.angle)
        u = math.cos(a) * x + math.sin(a) * y
        v = -math.sin(a) * x + math.cos(a) * y
        return 0.5 * (u**2 + self.condition * v**2)

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
