r"""Generalisation puzzles: randomised data sets and double descent.

**Memorisation** (Zhang et al. 2017). :func:`random_labels` replaces each
label, with probability ``fraction``, by a class drawn uniformly at random;
:func:`random_inputs` replaces the inputs by noise that keeps some of their
statistics. :func:`randomized_splits` does either to the *training* split of
a :class:`~course_lib.data.Splits` and leaves validation and test real, so
their accuracy says what the corrupted training set taught about real data.
:func:`epochs_to_accuracy` reads from a learning curve how long a fit took.

**Double descent** (Belkin et al. 2019). A random-features model fixes a
random first layer :math:`W \in \mathbb{R}^{p \times d}` and fits only the
linear read-out :math:`\beta \in \mathbb{R}^{p \times C}` on the features

.. math:: \Phi = \max(0, X W^\top) \in \mathbb{R}^{n \times p},
    \qquad W_{ij} \sim \mathcal{N}(0, 1/d).

For :math:`p < n` least squares has one solution; for :math:`p \ge n` it
has many that fit the :math:`n` targets exactly, and
:func:`min_norm_least_squares` picks the one of least norm,
:math:`\beta = \Phi^{+} Y`. Near :math:`p = n` the smallest singular values
of :math:`\Phi` approach zero and :math:`\Phi^+` blows the noise in
:math:`Y` up: test error peaks there and falls again beyond.
:func:`ridge_regression` adds :math:`\alpha \|\beta\|^2`, which caps
:math:`1/\sigma` at :math:`\sigma/(\sigma^2 + \alpha)` and flattens the peak.
:func:`random_features_curve` runs the whole sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ._args import (
    check_choice,
    check_generator,
    check_int,
    check_int_sequence,
    check_real,
    require,
)
from .data import Splits
from .device import generator as seeded_generator

__all__ = [
    "random_labels", "random_inputs", "randomized_splits", "epochs_to_accuracy",
    "random_relu_weights", "relu_features", "min_norm_least_squares",
    "ridge_regression", "DoubleDescentCurve", "random_features_curve",
]  # fmt: skip

INPUT_KINDS = ("gaussian", "shuffled_pixels", "random_pixels")


def _check_labels(y: Tensor, num_classes: int) -> None:
    ok = isinstance(y, Tensor) and y.dim() == 1 and not y.is_floating_point()
    require(ok, "y", "a 1-D integer tensor of class indices", y)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"y must lie in [0, {num_classes - 1}], got values outside")


def random_labels(
    y: Tensor,
    num_classes: int,
    *,
    fraction: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``y`` with each label, independently with probability ``fraction``,
    replaced by a class drawn uniformly from ``num_classes`` (it may draw the
    true one), as Zhang et al. (2017) corrupt labels. ``fraction=1`` gives
    labels independent of the inputs. A new tensor; ``y`` is not changed.
    """
    num_classes = check_int("num_classes", num_classes, low=1)
    fraction = check_real("fraction", fraction, "[0, 1]")
    check_generator(generator)
    _check_labels(y, num_classes)
    corrupt = torch.rand(len(y), generator=generator) < fraction  # (N,)
    drawn = torch.randint(num_classes, (len(y),), generator=generator)  # (N,)
    return torch.where(corrupt, drawn, y.cpu()).to(y.device, y.dtype)


def random_inputs(
    X: Tensor, kind: str = "gaussian", *, generator: torch.Generator | None = None
) -> Tensor:
    """Inputs carrying none of the structure of ``X`` (N, D), as Zhang et al.:

    - ``"gaussian"``: each feature drawn from a normal with that feature's
      mean and standard deviation over ``X``;
    - ``"shuffled_pixels"``: one random permutation of the D features,
      the same for every sample (local structure gone, a fixed code kept);
    - ``"random_pixels"``: a different permutation for every sample.
    """
    check_choice("kind", kind, INPUT_KINDS)
    check_generator(generator)
    require(isinstance(X, Tensor) and X.dim() == 2 and X.is_floating_point(),
            "X", "a 2-D float tensor (N, D)", X)  # fmt: skip
    n, d = X.shape
    Xc = X.cpu()
    if kind == "gaussian":
        noise = torch.randn(n, d, generator=generator, dtype=X.dtype)  # (N, D)
        out = Xc.mean(0) + Xc.std(0) * noise
    elif kind == "shuffled_pixels":
        out = Xc[:, torch.randperm(d, generator=generator)]
    else:  # an independent permutation per row: argsort of uniform noise
        perms = torch.rand(n, d, generator=generator).argsort(dim=1)  # (N, D)
        out = torch.gather(Xc, 1, perms)
    return out.to(X.device)


def randomized_splits(
    splits: Splits,
    *,
    label_fraction: float = 0.0,
    inputs: str | None = None,
    seed: int = 0,
) -> Splits:
    """``splits`` with its training split corrupted, validation and test real.

    ``label_fraction`` goes to :func:`random_labels`, ``inputs`` (None keeps
    the real inputs) to :func:`random_inputs`; randomness from
    :func:`course_lib.device.generator` of ``seed`` (so it follows the seed
    shift). The ``name`` records what was done, e.g. ``"digits/labels=1.0"``.
    """
    require(isinstance(splits, Splits), "splits", "a course_lib.data.Splits", splits)
    label_fraction = check_real("label_fraction", label_fraction, "[0, 1]")
    if inputs is not None:
        check_choice("inputs", inputs, INPUT_KINDS)
    gen = seeded_generator(seed)
    X, y, name = splits.X_train, splits.y_train, splits.name
    if inputs is not None:
        X, name = random_inputs(X, inputs, generator=gen), f"{name}/inputs={inputs}"
    if label_fraction > 0:
        y = random_labels(y, splits.num_classes, fraction=label_fraction, generator=gen)
        name = f"{name}/labels={label_fraction}"
    return replace(splits, X_train=X, y_train=y, name=name)


def epochs_to_accuracy(accuracies: Sequence[float], target: float) -> int | None:
    """The first epoch (1-based) whose accuracy is >= ``target``; None if none."""
    target = check_real("target", target, "[0, 1]")
    for epoch, acc in enumerate(accuracies, start=1):
        if acc >= target:
            return epoch
    return None


def random_relu_weights(
    in_features: int,
    num_features: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""A random first layer ``(num_features, in_features)``, entries
    :math:`\mathcal{N}(0, 1/d)` with :math:`d` = ``in_features``, so that a
    standardised input gives pre-activations of variance about 1."""
    d = check_int("in_features", in_features, low=1)
    p = check_int("num_features", num_features, low=1)
    check_generator(generator)
    return torch.randn(p, d, generator=generator, dtype=dtype) / d**0.5


def relu_features(X: Tensor, W: Tensor) -> Tensor:
    r"""The random features :math:`\Phi = \max(0, X W^\top)`: ``(N, p)``."""
    require(X.dim() == 2 and W.dim() == 2 and X.shape[1] == W.shape[1],
            "W", f"a (p, {X.shape[-1]}) tensor for X of shape {tuple(X.shape)}",
            tuple(W.shape))  # fmt: skip
    return torch.relu(X.to(W.dtype) @ W.T)


def _check_system(A: Tensor, B: Tensor) -> None:
    require(isinstance(A, Tensor) and A.dim() == 2 and A.is_floating_point(),
            "A", "a 2-D float tensor (n, p)", A)  # fmt: skip
    ok = isinstance(B, Tensor) and B.dim() in (1, 2) and len(B) == len(A)
    require(ok, "B", f"a tensor (n,) or (n, C) with n = {len(A)}", B)


def min_norm_least_squares(A: Tensor, B: Tensor) -> Tensor:
    r"""The least-squares solution of least norm, :math:`\beta = A^{+} B`.

    Among the minimisers of :math:`\|A\beta - B\|^2` (one when ``A`` (n, p)
    has rank :math:`p`, a whole affine space otherwise) the one with the
    smallest :math:`\|\beta\|`, which lies in the row space of ``A``. On the
    CPU ``torch.linalg.lstsq(driver="gelsd")`` (an SVD; singular values below
    ``max(n, p) * eps`` times the largest are treated as zero); elsewhere
    ``torch.linalg.pinv`` (CUDA's lstsq only handles full-rank tall systems).
    Returns ``(p,)`` or ``(p, C)`` as ``B`` is ``(n,)`` or ``(n, C)``.
    """
    _check_system(A, B)
    B = B.to(A.dtype)
    if A.device.type == "cpu":
        rcond = max(A.shape) * torch.finfo(A.dtype).eps
        column = B.unsqueeze(1) if B.dim() == 1 else B  # (n, C)
        sol = torch.linalg.lstsq(A, column, rcond=rcond, driver="gelsd").solution
        return sol.squeeze(1) if B.dim() == 1 else sol
    return torch.linalg.pinv(A) @ B


def ridge_regression(A: Tensor, B: Tensor, alpha: float) -> Tensor:
    r"""The minimiser of :math:`\|A\beta - B\|^2 + \alpha \|\beta\|^2`, no intercept.

    .. math:: \beta = (A^\top A + \alpha I_p)^{-1} A^\top B
        = A^\top (A A^\top + \alpha I_n)^{-1} B,

    solved (``torch.linalg.solve``) in whichever of the two forms has the
    smaller matrix. As :math:`\alpha \to 0` it tends to
    :func:`min_norm_least_squares`; ``alpha`` must be > 0.
    """
    _check_system(A, B)
    alpha = check_real("alpha", alpha, "(0, inf)")
    B = B.to(A.dtype)
    n, p = A.shape
    if p <= n:
        gram = A.T @ A + alpha * torch.eye(p, dtype=A.dtype, device=A.device)
        return torch.linalg.solve(gram, A.T @ B)
    gram = A @ A.T + alpha * torch.eye(n, dtype=A.dtype, device=A.device)
    return A.T @ torch.linalg.solve(gram, B)


@dataclass
class DoubleDescentCurve:
    """Errors of random-features fits against the number of features ``p``:
    means over the draws of :math:`W` (``*_error``: classification error;
    ``*_mse``: mean squared error on the one-hot targets, per sample)."""

    num_features: list[int]
    train_error: list[float]
    test_error: list[float]
    train_mse: list[float]
    test_mse: list[float]
    num_train: int


def _errors(Phi: Tensor, beta: Tensor, y: Tensor, Y: Tensor) -> tuple[float, float]:
    out = Phi @ beta  # (N, C)
    err = (out.argmax(1) != y).double().mean().item()
    return err, ((out - Y) ** 2).sum(1).mean().item()


def random_features_curve(
    X_train: Tensor,
    y_train: Tensor,
    X_test: Tensor,
    y_test: Tensor,
    num_features: Sequence[int],
    *,
    num_classes: int,
    ridge: float = 0.0,
    num_draws: int = 1,
    seed: int = 0,
) -> DoubleDescentCurve:
    r"""Fit random ReLU features of each width in ``num_features`` and score them.

    For each width :math:`p` and each of ``num_draws`` draws of :math:`W`
    (:func:`random_relu_weights`, from :func:`course_lib.device.generator`
    of ``seed``), the read-out is fitted to the one-hot targets by
    :func:`min_norm_least_squares` (``ridge=0``) or :func:`ridge_regression`
    (``ridge`` = :math:`\alpha`), in float64. Inputs are used as given:
    standardise them first (:func:`course_lib.data.standardize`).
    """
    widths = check_int_sequence("num_features", num_features, low=1, nonempty=True)
    num_classes = check_int("num_classes", num_classes, low=1)
    ridge = check_real("ridge", ridge, "[0, inf)")
    num_draws = check_int("num_draws", num_draws, low=1)
    _check_labels(y_train, num_classes)
    _check_labels(y_test, num_classes)
    Xtr, Xte = X_train.double(), X_test.double()
    Ytr = F.one_hot(y_train, num_classes).double()  # (n, C)
    Yte = F.one_hot(y_test, num_classes).double()
    gen = seeded_generator(seed)
    rows = []
    for p in widths:
        scores = []
        for _ in range(num_draws):
            W = random_relu_weights(Xtr.shape[1], p, generator=gen).to(Xtr.device)
            Ptr, Pte = relu_features(Xtr, W), relu_features(Xte, W)  # (n, p)
            beta = (min_norm_least_squares(Ptr, Ytr) if ridge == 0
                    else ridge_regression(Ptr, Ytr, ridge))  # fmt: skip
            scores.append((*_errors(Ptr, beta, y_train, Ytr),
                           *_errors(Pte, beta, y_test, Yte)))  # fmt: skip
        rows.append(torch.tensor(scores, dtype=torch.float64).mean(0).tolist())
    tr_err, tr_mse, te_err, te_mse = (list(col) for col in zip(*rows, strict=True))
    return DoubleDescentCurve(list(widths), tr_err, te_err, tr_mse, te_mse, len(Xtr))
