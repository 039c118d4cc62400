"""top_hessian_eigenvalue against the full Hessian of tiny float64 models."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from course_lib.curvature import top_hessian_eigenvalue


def tiny_problem(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    return model, X, y


def full_hessian_eigenvalues(model, loss_fn, X, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss_of(theta):
        pieces = theta.split(sizes)
        params = {n: t.view(s) for n, t, s in zip(names, pieces, shapes, strict=True)}
        return loss_fn(functional_call(model, params, (X,)), y)

    hessian = torch.autograd.functional.hessian(loss_of, flat)  # (P, P)
    return torch.linalg.eigvalsh(hessian)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_full_hessian(seed):
    model, X, y = tiny_problem(seed)
    eigenvalues = full_hessian_eigenvalues(model, F.cross_entropy, X, y)
    largest = eigenvalues[eigenvalues.abs().argmax()].item()
    estimate = top_hessian_eigenvalue(model, F.cross_entropy, X, y, iterations=500)
    assert estimate == pytest.approx(largest, rel=1e-6)
    # the default 20 iterations give a lower bound close to it
    quick = top_hessian_eigenvalue(model, F.cross_entropy, X, y)
    assert 0.5 * abs(largest) < abs(quick) <= abs(largest) * (1 + 1e-9)


def test_quadratic_with_a_known_hessian():
    # mean squared error of a linear model: Hessian = 2 X^T X / n, exactly
    torch.manual_seed(3)
    X = torch.randn(50, 4, dtype=torch.float64)
    y = torch.randn(50, 1, dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    expected = torch.linalg.eigvalsh(2 * X.T @ X / 50).max().item()
    estimate = top_hessian_eigenvalue(model, F.mse_loss, X, y, iterations=300)
    assert estimate == pytest.approx(expected, rel=1e-8)


def test_leaves_gradients_and_parameters_alone():
    model, X, y = tiny_problem(0)
    before = [p.detach().clone() for p in model.parameters()]
    top_hessian_eigenvalue(model, F.cross_entropy, X, y, iterations=3)
    assert all(p.grad is None for p in model.parameters())
    after = list(model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, after, strict=True))


def test_seeded_and_repeatable():
    model, X, y = tiny_problem(1)
    a = top_hessian_eigenvalue(model, F.cross_entropy, X, y, iterations=2, seed=4)
    b = top_hessian_eigenvalue(model, F.cross_entropy, X, y, iterations=2, seed=4)
    assert a == b


@pytest.mark.parametrize(
    "kwargs, name",
    [({"iterations": 0}, "iterations"), ({"iterations": 2.5}, "iterations")],
)
def test_bad_arguments(kwargs, name):
    model, X, y = tiny_problem(0)
    with pytest.raises(ValueError, match=name):
        top_hessian_eigenvalue(model, F.cross_entropy, X, y, **kwargs)


def test_bad_model_and_loss():
    _, X, y = tiny_problem(0)
    with pytest.raises(ValueError, match="model"):
        top_hessian_eigenvalue(lambda x: x, F.cross_entropy, X, y)
    model, _, _ = tiny_problem(0)
    with pytest.raises(ValueError, match="loss_fn"):
        top_hessian_eigenvalue(model, "cross_entropy", X, y)
