"""The sharpness of a loss: the largest Hessian eigenvalue, without the Hessian.

A network with :math:`P` parameters has a :math:`P \\times P` Hessian, far too
large to build for any real model. A Hessian-vector product :math:`Hv` costs
about two backward passes (differentiate :math:`\\nabla L \\cdot v` once more),
and power iteration needs nothing else: repeat :math:`v \\leftarrow Hv /
\\lVert Hv \\rVert` and the Rayleigh quotient :math:`v^\\top H v` approaches
the eigenvalue of largest magnitude.

Gradient descent with learning rate :math:`\\eta` is stable on a quadratic
only where every curvature is below :math:`2/\\eta` (with heavy-ball momentum
:math:`\\beta`, below :math:`2(1 + \\beta)/\\eta`), which is why this number is
compared with the learning rate (Cohen et al., 2021).
"""

from __future__ import annotations

import torch
from torch import nn

from ._args import check_callable, check_int, require
from .device import generator as seeded_generator


def top_hessian_eigenvalue(
    model: nn.Module, loss_fn, X: torch.Tensor, y: torch.Tensor,
    *, iterations: int = 20, seed: int = 0,
) -> float:  # fmt: skip
    r"""Largest-magnitude eigenvalue of the Hessian of ``loss_fn(model(X), y)``.

    Power iteration on Hessian-vector products from a random unit vector
    (seeded through :func:`course_lib.device.generator`, so the seed shift
    moves it): :math:`v_{k+1} = Hv_k / \lVert Hv_k\rVert`, and the estimate is
    the Rayleigh quotient :math:`\lambda = v_k^\top H v_k`. The gradient graph is
    built once and reused by every iteration. After ``iterations`` products
    the estimate is a lower bound on :math:`|\lambda_{\max}|` that is usually
    within a few percent; it converges slowly when the top two eigenvalues
    are close. Gradients of ``model`` are not touched (``torch.autograd.grad``).
    """
    require(isinstance(model, nn.Module), "model", "an nn.Module", model)
    check_callable("loss_fn", loss_fn)
    iterations = check_int("iterations", iterations, low=1)
    params = [p for p in model.parameters() if p.requires_grad]
    size = sum(p.numel() for p in params)
    v = torch.randn(size, generator=seeded_generator(seed), dtype=torch.float64)
    v = (v / v.norm()).to(params[0])
    loss = loss_fn(model(X), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.flatten() for g in grads])  # (P,)
    eigenvalue = 0.0
    for _ in range(iterations):
        pieces = torch.autograd.grad(flat @ v, params, retain_graph=True)
        hv = torch.cat([h.flatten() for h in pieces])  # (P,) = H v
        eigenvalue = torch.dot(v, hv).item()  # Rayleigh quotient, |v| = 1
        norm = hv.norm()
        if norm == 0:
            break  # v is in the null space; the Hessian may be zero
        v = hv / norm
    return eigenvalue
