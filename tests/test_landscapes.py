import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from course_lib.landscapes import (
    Quadratic,
    Rosenbrock,
    Saddle,
    newton_step,
    steps_to_reach,
    trajectory,
)
from course_lib.plots import plot_landscape


def test_surfaces_values_and_minima():
    for surface in (Quadratic(10), Saddle(), Rosenbrock()):
        at_min = surface(torch.tensor(surface.minimum, dtype=torch.float64))
        grad = torch.autograd.functional.jacobian(
            surface, torch.tensor(surface.minimum, dtype=torch.float64)
        )
        assert torch.allclose(grad, torch.zeros(2, dtype=torch.float64), atol=1e-12)
        grid = torch.randn(50, 2, dtype=torch.float64)
        assert (surface(grid) >= at_min - 1e-12).all()
    assert Quadratic(4)(torch.tensor([1.0, 1.0])) == pytest.approx(2.5)
    assert Rosenbrock()(torch.tensor([0.0, 1.0])) == pytest.approx(101.0)
    assert Saddle()(torch.zeros(3, 4, 2)).shape == (3, 4)  # works on grids


def test_trajectory_is_plain_gradient_descent():
    q = Quadratic(4)
    path = trajectory(q, lambda p: torch.optim.SGD(p, lr=0.1), (1.0, 1.0), 3)
    expected = torch.tensor([(0.9**t, 0.6**t) for t in range(4)], dtype=torch.float64)
    torch.testing.assert_close(path, expected, rtol=1e-12, atol=0)  # x *= 0.9, y *= 0.6
    assert steps_to_reach(q, path, 0.5) == 3  # f(t=2) = 0.587, f(t=3) = 0.359
    assert steps_to_reach(q, path, 1e-9) is None
    with pytest.raises(ValueError, match="num_steps"):
        trajectory(q, lambda p: torch.optim.SGD(p, lr=0.1), (1.0, 1.0), -1)


def test_newton_solves_a_quadratic_in_one_step_and_is_drawn_to_saddles():
    assert newton_step(Quadratic(1000), (3.0, -2.0)).abs().max() < 1e-12
    # Near the saddle the curvature along y is negative: Newton moves towards it.
    y_after = newton_step(Saddle(), (0.5, 0.1))[1].abs()
    assert y_after < 0.1


def test_rotated_quadratic_is_the_same_valley_turned():
    q, turned = Quadratic(50), Quadratic(50, angle=45)
    h = torch.autograd.functional.hessian(turned, torch.zeros(2, dtype=torch.float64))
    # Hessian R diag(1, 50) R^T: eigenvalues 1 and 50, eigenvectors on the diagonals.
    torch.testing.assert_close(
        h, torch.tensor([[25.5, -24.5], [-24.5, 25.5]], dtype=torch.float64)
    )
    point = torch.tensor([0.3, -0.7], dtype=torch.float64)
    c = s = 2**-0.5  # rotate the point by +45 degrees: same value as unrotated
    x, y = point
    rotated_point = torch.stack([c * x - s * y, s * x + c * y])
    assert turned(rotated_point) == pytest.approx(q(point).item(), rel=1e-12)
    assert Quadratic(50, angle=0)(point) == q(point)  # default is unchanged
    assert Quadratic(50, angle=360)(point) == pytest.approx(q(point).item(), rel=1e-12)
    assert newton_step(turned, (1.0, 2.0)).abs().max() < 1e-12
    assert turned(torch.zeros(4, 3, 2)).shape == (4, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="condition"):
        Quadratic(0.5)
    for bad in (float("nan"), 400.0, "45"):
        with pytest.raises(ValueError, match=r"^angle must be a real number in \["):
            Quadratic(10, angle=bad)
    with pytest.raises(ValueError, match="b must"):
        Rosenbrock(b=-1)
    with pytest.raises(ValueError, match="2 coordinates"):
        Quadratic()(torch.zeros(3))


def test_plot_landscape_draws_paths():
    path = trajectory(Quadratic(), lambda p: torch.optim.SGD(p, lr=0.01), (1.0, 1.0), 5)
    ax = plot_landscape(Quadratic(), {"sgd": path}, xlim=(-1, 1.5), ylim=(-1, 1.5))
    (line,) = ax.get_lines()
    assert len(line.get_xdata()) == 6 and ax.get_xlim() == (-1, 1.5)
    plt.close("all")


NUMPY_ARGUMENTS = [
    ("condition", lambda v: Quadratic(v).condition, np.float32(10.0)),
    ("b", lambda v: Rosenbrock(v).b, np.int64(100)),
    ("num_steps", lambda v: trajectory(Quadratic(), sgd_0_01, (1.0, 1.0), v).tolist(),
     np.int64(3)),
    ("angle", lambda v: Quadratic(10, angle=v).angle, np.float32(45.0)),
]  # fmt: skip


def sgd_0_01(params):
    return torch.optim.SGD(params, lr=0.01)


@pytest.mark.parametrize(("name", "call", "value"), NUMPY_ARGUMENTS)
def test_numpy_scalars_pass_bools_and_strings_do_not(name, call, value):
    assert call(value) == call(value.item())
    for bad in (True, "3"):
        with pytest.raises(ValueError, match=rf"^{name} must be "):
            call(bad)
    assert "np." not in repr(Quadratic(np.float32(10.0)))  # stored as a float
