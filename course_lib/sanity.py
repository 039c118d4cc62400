r"""Sanity checks to run on a training set-up before trusting its numbers.

Each check looks for one kind of silent mistake, one that raises no error and
only makes the run worse or its score too good, and returns a :class:`Check`:
a verdict, a message that describes what was seen, and the numbers behind it.

- :func:`initial_loss_check`: the loss at initialisation against
  :math:`\log C`, and a softmax fed to ``cross_entropy``;
- :func:`label_check`: labels outside ``0..C-1``, shifted by one, or mapped so
  that a class never appears;
- :func:`shape_check`, :func:`shape_guard`: ``(B, 1)`` against ``(B,)``
  broadcasting to ``(B, B)`` inside a loss;
- :class:`StaleGradientProbe`: gradients summed over steps (no ``zero_grad``);
- :func:`frozen_parameters`: parameters that backprop does not reach (frozen,
  detached, dead) or that the optimizer does not hold;
- :func:`eval_mode_check`: dropout or batch norm left in training mode;
- :func:`split_overlap`: the same, or nearly the same, sample in two splits;
- :func:`check_fitted_on_train`, :func:`standardized_check`: normalisation
  statistics computed on data other than the training split.

Two more kinds of bug have their tools in :mod:`course_lib.monitor`: a loss
accumulator that keeps every iteration's autograd graph alive
(:class:`~course_lib.monitor.GraphProbe`) and the first module that produced
a NaN (:class:`~course_lib.monitor.find_nonfinite`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._args import check_bool, check_callable, check_int, check_real, require

#: Module types whose forward differs between ``train()`` and ``eval()``.
MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


@dataclass(frozen=True)
class Check:
    """The result of one check: ``ok``, a ``message`` saying what was seen, and
    ``details``, the numbers (and names) the verdict was read from."""

    name: str
    ok: bool
    message: str
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"[{'ok' if self.ok else 'FAILED'}] {self.name}: {self.message}"


def _tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _module(name: str, value) -> nn.Module:
    require(isinstance(value, nn.Module), name, "a torch.nn.Module", value)
    return value


def outputs_look_like_probabilities(outputs: torch.Tensor, atol: float = 1e-4) -> bool:
    """Whether every row of ``outputs`` (``(N, C)``) is a probability vector:
    entries in ``[0, 1]`` and a sum of 1, each within ``atol``.

    Logits are numbers of both signs, so an output that passes came through a
    softmax; ``cross_entropy`` applies ``log_softmax`` itself, and a second
    softmax squashes the logits into ``[0, 1]``, capping the confidence.
    """
    outputs = _tensor("outputs", outputs)
    require(outputs.ndim == 2, "outputs", "a 2-D (N, C) tensor", tuple(outputs.shape))
    atol = check_real("atol", atol, "[0, inf)")
    out = outputs.detach().double()
    in_range = bool(((out >= -atol) & (out <= 1 + atol)).all())
    return in_range and bool(((out.sum(dim=1) - 1).abs() <= atol).all())


def label_check(y: torch.Tensor, num_classes: int) -> Check:
    """Class labels for ``cross_entropy``: an integer ``(N,)`` tensor in ``0..C-1``.

    Fails on float labels, on labels outside the range (naming a shift by
    one when they run ``1..C`` or ``-1..C-2``), and, with at least 10 samples
    per class, on a class that never appears (a wrong mapping, not chance).
    """
    y = _tensor("y", y)
    require(y.numel() > 0, "y", "a non-empty tensor", tuple(y.shape))
    C = check_int("num_classes", num_classes, low=1)
    if y.is_floating_point() or y.dtype == torch.bool or y.ndim != 1:
        return Check("labels", False, f"labels must be an integer (N,) tensor, got "
                     f"{y.dtype} of shape {tuple(y.shape)}")  # fmt: skip
    low, high = int(y.min()), int(y.max())
    counts = torch.bincount(y.clamp(0, C - 1), minlength=C)
    missing = [c for c in range(C) if counts[c] == 0]
    details = {"min": low, "max": high, "missing": missing}
    if low < 0 or high >= C:
        hint = ""
        if (low, high) == (1, C) or (low, high) == (-1, C - 2):
            hint = f"; they look shifted by one (they run {low}..{high})"
        return Check("labels", False, f"labels run {low}..{high}, outside "
                     f"0..{C - 1} for {C} classes{hint}", details)  # fmt: skip
    if missing and len(y) >= 10 * C:
        return Check("labels", False, f"classes {missing} never appear in "
                     f"{len(y)} labels", details)  # fmt: skip
    return Check("labels", True, f"labels in 0..{C - 1}, every class present", details)


@torch.no_grad()
def initial_loss_check(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, num_classes: int,
    loss_fn=F.cross_entropy, rtol: float = 0.1,
) -> Check:  # fmt: skip
    r"""The loss of a freshly initialised classifier, against :math:`\log C`.

    A network that knows nothing gives the :math:`C` classes about the same
    probability, so its cross-entropy is :math:`-\log(1/C) = \log C` (2.303
    for 10 classes); far from it, the initial logits are over-confident (too
    large an initialisation) or the loss is not the one intended. Passes when
    :math:`|\ell - \log C| \le \text{rtol}\cdot\log C`, the labels pass
    :func:`label_check`, the outputs are ``(N, C)`` and they are not already
    probabilities (:func:`outputs_look_like_probabilities`): a softmax fed to
    ``cross_entropy`` also starts near :math:`\log C`, so the loss alone
    cannot tell. The model runs under ``no_grad`` in its current mode.
    """
    _module("model", model)
    X, y = _tensor("X", X), _tensor("y", y)
    check_callable("loss_fn", loss_fn)
    rtol = check_real("rtol", rtol, "(0, inf)")
    labels = label_check(y, num_classes)
    if not labels.ok:
        return Check("initial_loss", False, labels.message, labels.details)
    out = model(X)  # (N, C) logits
    if tuple(out.shape) != (len(X), num_classes):
        return Check("initial_loss", False, f"outputs have shape {tuple(out.shape)}, "
                     f"expected (N, C) = {(len(X), num_classes)}")  # fmt: skip
    expected = math.log(num_classes)
    loss = float(loss_fn(out, y))
    details = {"loss": loss, "expected": expected}
    if outputs_look_like_probabilities(out):
        return Check("initial_loss", False, "the outputs are already probabilities "
                     "(rows >= 0 summing to 1): the loss applies log_softmax to "
                     "what it is given, so it gets a softmax of a softmax", details)
    ratio = loss / expected
    ok = abs(ratio - 1) <= rtol
    verdict = "within" if ok else "outside"
    return Check("initial_loss", ok, f"initial loss {loss:.4g} is {ratio:.3f} x "
                 f"log C = {expected:.4g}, {verdict} {rtol:.0%}", details)  # fmt: skip


def shape_check(prediction: torch.Tensor, target: torch.Tensor) -> Check:
    """Whether an element-wise loss of ``prediction`` and ``target`` pairs each
    prediction with its own target.

    Broadcasting aligns shapes from the right and stretches size-1 axes, so
    ``(B, 1) - (B,)`` is a ``(B, B)`` matrix of every prediction minus every
    target, and its mean is a loss of the wrong pairs, without any error.
    Passes only when the shapes are equal.
    """
    a, b = _tensor("prediction", prediction), _tensor("target", target)
    shapes = {"prediction": tuple(a.shape), "target": tuple(b.shape)}
    if a.shape == b.shape:
        return Check("shapes", True, f"both {tuple(a.shape)}", shapes)
    try:
        joint = tuple(torch.broadcast_shapes(a.shape, b.shape))
    except RuntimeError:
        return Check("shapes", False, f"{shapes['prediction']} and "
                     f"{shapes['target']} do not broadcast", shapes)  # fmt: skip
    pairs = f"{math.prod(joint)} pairs instead of {max(a.numel(), b.numel())}"
    return Check("shapes", False, f"prediction {shapes['prediction']} and target "
                 f"{shapes['target']} broadcast to {joint}: {pairs}",
                 {**shapes, "broadcast": joint})  # fmt: skip


def shape_guard(loss_fn):
    """Wrap an element-wise loss ``loss_fn(prediction, target)`` so that it
    raises ``ValueError`` when the shapes differ (:func:`shape_check`)
    instead of broadcasting: ``mse = shape_guard(F.mse_loss)``."""
    check_callable("loss_fn", loss_fn)

    @functools.wraps(loss_fn)
    def guarded(prediction, target, *args, **kwargs):
        result = shape_check(prediction, target)
        if not result.ok:
            name = getattr(loss_fn, "__name__", "loss_fn")
            raise ValueError(f"{name}: {result.message}")
        return loss_fn(prediction, target, *args, **kwargs)

    return guarded


class StaleGradientProbe:
    """Catch gradients that are summed over optimizer steps (no ``zero_grad``).

    ``backward`` adds to ``.grad``; it never overwrites it. A hook on every
    parameter that requires a gradient runs as each new gradient arrives,
    before it is added, and counts it as stale when ``.grad`` still holds a
    non-zero gradient *from before the last* ``optimizer.step()`` (so
    accumulating over micro-batches between steps, on purpose, is not
    counted). Without an ``optimizer`` any non-zero ``.grad`` found counts.
    Use as a context manager around a training function it cannot edit::

        with StaleGradientProbe(model, optimizer) as probe:
            train(model, optimizer)
        print(probe.result())
    """

    def __init__(self, model: nn.Module, optimizer=None):
        self.model = _module("model", model)
        ok = optimizer is None or isinstance(optimizer, torch.optim.Optimizer)
        require(ok, "optimizer", "None or a torch.optim.Optimizer", optimizer)
        self.optimizer = optimizer
        self.gradients = self.stale = self.steps = 0
        self._handles: list = []

    def _hook(self, param: torch.Tensor, last_step: list[int]):
        def hook(grad):
            self.gradients += 1
            held = param.grad is not None and bool(param.grad.any())
            if held and (self.optimizer is None or self.steps > last_step[0]):
                self.stale += 1
            last_step[0] = self.steps

        return hook

    def _stepped(self, *args) -> None:
        self.steps += 1

    def __enter__(self) -> StaleGradientProbe:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._handles = [p.register_hook(self._hook(p, [0])) for p in params]
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_post_hook(self._stepped))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def result(self) -> Check:
        """Fails when any arriving gradient found a stale one in ``.grad``."""
        details = {"gradients": self.gradients, "stale": self.stale}
        if self.gradients == 0:
            return Check("stale_gradients", False, "no gradient arrived", details)
        ok = self.stale == 0
        words = "none" if ok else f"{self.stale} of {self.gradients}"
        return Check("stale_gradients", ok, f"{words} of the gradients arrived while "
                     ".grad held one from before the last step", details)  # fmt: skip


def frozen_parameters(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    frozen_ok: bool = False,
) -> Check:  # fmt: skip
    """Parameters that will not learn, read after a ``loss.backward()``.

    Lists, by qualified name: ``requires_grad_false`` (frozen; allowed with
    ``frozen_ok``), ``grad_none`` (backprop never reached them: a
    ``.detach()`` or a ``no_grad`` in the forward, or a module not used),
    ``grad_zero`` (reached, but every entry is 0: a dead layer) and
    ``not_in_optimizer`` (they get gradients the optimizer never applies).
    Passes when all four lists are empty.
    """
    _module("model", model)
    ok = optimizer is None or isinstance(optimizer, torch.optim.Optimizer)
    require(ok, "optimizer", "None or a torch.optim.Optimizer", optimizer)
    frozen_ok = check_bool("frozen_ok", frozen_ok)
    held = set()
    if optimizer is not None:
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    found = {"requires_grad_false": [], "grad_none": [], "grad_zero": [],
             "not_in_optimizer": []}  # fmt: skip
    for name, p in model.named_parameters():
        if not p.requires_grad:
            found["requires_grad_false"] += [] if frozen_ok else [name]
            continue
        if p.grad is None:
            found["grad_none"].append(name)
        elif not bool(p.grad.any()):
            found["grad_zero"].append(name)
        if optimizer is not None and id(p) not in held:
            found["not_in_optimizer"].append(name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if trainable and all(p.grad is None for p in trainable):
        return Check("frozen_parameters", False, "no parameter has a gradient: call "
                     "this after loss.backward()", found)  # fmt: skip
    bad = [f"{kind}: {', '.join(names)}" for kind, names in found.items() if names]
    message = "; ".join(bad) or "every parameter gets a gradient and is stepped"
    return Check("frozen_parameters", not bad, message, found)


@torch.no_grad()
def eval_mode_check(model: nn.Module, X: torch.Tensor, rtol: float = 1e-4) -> Check:
    """Whether ``model``'s predictions on ``X`` are fit to be evaluated.

    An evaluated model gives the same output for the same input twice (not
    with dropout active) whatever else is in the batch (not with batch norm
    in training mode, which uses the batch's statistics). The check runs
    ``model(X)`` twice and on the first half of ``X`` (at least 4 samples),
    in the model's current mode, and compares to ``rtol`` times the largest
    output; the global random state and the buffers (running statistics)
    are restored afterwards.
    """
    _module("model", model)
    X = _tensor("X", X)
    require(len(X) >= 4, "X", "a batch of at least 4 samples", tuple(X.shape))
    rtol = check_real("rtol", rtol, "[0, inf)")
    saved = [b.clone() for b in model.buffers()]
    devices = [X.device] if X.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        first, second, half = model(X), model(X), model(X[: len(X) // 2])
    for buffer, old in zip(model.buffers(), saved, strict=True):
        buffer.copy_(old)
    scale = rtol * (float(first.abs().max()) + 1e-12)
    repeat = float((first - second).abs().max())
    batch = float((first[: len(X) // 2] - half).abs().max())
    active = [name or "(model)" for name, m in model.named_modules()
              if m.training and isinstance(m, MODE_DEPENDENT)]  # fmt: skip
    details = {"repeat_diff": repeat, "batch_diff": batch, "train_mode": active}
    problems = []
    if repeat > scale:
        problems.append(f"two calls on the same inputs differ by up to {repeat:.3g}")
    if batch > scale:
        problems.append(f"a sample's output changes with its batch (up to {batch:.3g})")
    if not problems:
        return Check("eval_mode", True, "outputs repeat and are batch-independent",
                     details)  # fmt: skip
    where = f"; in training mode: {', '.join(active)}" if active else ""
    return Check("eval_mode", False, "; ".join(problems) + where, details)


def _rows(name: str, X) -> torch.Tensor:
    X = torch.as_tensor(X)
    require(X.ndim >= 2 and len(X) > 0, name, "a non-empty (N, ...) array", X.shape)
    return X.reshape(len(X), -1).double().cpu()  # (N, D)


def split_overlap(X_train, X_test, atol: float = 0.0, chunk: int = 1024) -> Check:
    """Rows of ``X_test`` that also appear in ``X_train``: exactly (``atol`` 0)
    or within Euclidean distance ``atol`` (near duplicates).

    A test sample seen in training is scored on memory, not generalisation.
    Distances are exact (no matrix-product shortcut: a copy is at distance
    0), in chunks of ``chunk`` test rows. ``details``: ``count``,
    ``fraction``, the overlapping test ``indices`` and ``median_nearest``
    (the median distance from a test row to its nearest training row, a
    scale for ``atol``). Takes tensors or NumPy arrays ``(N, ...)``.
    """
    A, B = _rows("X_train", X_train), _rows("X_test", X_test)
    require(A.shape[1] == B.shape[1], "X_test", f"rows of {A.shape[1]} values "
            "as X_train", tuple(B.shape))  # fmt: skip
    atol = check_real("atol", atol, "[0, inf)")
    chunk = check_int("chunk", chunk, low=1)
    nearest = torch.cat([
        torch.cdist(part, A, compute_mode="donot_use_mm_for_euclid_dist").amin(dim=1)
        for part in B.split(chunk)
    ])  # (N_test,)
    hits = torch.nonzero(nearest <= atol).flatten().tolist()
    details = {"count": len(hits), "fraction": len(hits) / len(B), "indices": hits,
               "median_nearest": float(nearest.median())}  # fmt: skip
    kind = "an exact copy" if atol == 0 else f"a copy within {atol:g}"
    return Check("split_overlap", not hits, f"{len(hits)} of {len(B)} test rows "
                 f"({len(hits) / len(B):.1%}) have {kind} in the training split",
                 details)  # fmt: skip


def _statistics(X: torch.Tensor, per_feature: bool):
    X = X.double()  # population std, as Standardizer and StandardScaler use
    if per_feature:
        return X.mean(dim=0), X.std(dim=0, correction=0)  # (D,) each
    return X.mean(), X.std(correction=0)


def _matches(stat: torch.Tensor, reference: torch.Tensor, tol: float) -> bool:
    return stat.shape == reference.shape and bool(
        ((stat - reference).abs() <= tol * (reference.abs() + 1)).all()
    )


def check_fitted_on_train(
    mean, std, X_train: torch.Tensor, X_other: torch.Tensor | None = None,
    rtol: float = 1e-4,
) -> Check:  # fmt: skip
    """Whether normalisation statistics (``mean``, ``std``; per feature ``(D,)``
    or scalars; ``std`` may be None) are those of ``X_train`` ``(N, D)``.

    Statistics fitted on all the data, test included, carry information
    about the held-out samples into training and make the test score
    flatter the model. Given ``X_other`` (the held-out data), a failure says
    whether the statistics are those of the training and other data
    together, or of the other data alone. ``std`` is compared as the
    population or the sample standard deviation, on features whose
    training std is not zero (normalisers replace a zero std by 1).
    """
    X_train = _tensor("X_train", X_train)
    mean = _tensor("mean", torch.as_tensor(mean)).double().cpu()
    std = None if std is None else torch.as_tensor(std).double().cpu()
    rtol = check_real("rtol", rtol, "(0, inf)")
    per_feature = mean.ndim > 0

    def fitted_on(X: torch.Tensor) -> bool:
        m, s = _statistics(X.cpu(), per_feature)
        if not _matches(mean, m, rtol):
            return False
        if std is None:
            return True
        s1 = s * math.sqrt(len(X) / max(len(X) - 1, 1))  # the sample std
        used = s > 1e-8
        return any(_matches(std[used], ref[used], rtol) for ref in (s, s1))

    if fitted_on(X_train):
        return Check("fitted_on_train", True, "the statistics are the training split's")
    source = "not the training split's"
    if X_other is not None:
        X_other = _tensor("X_other", X_other)
        if fitted_on(torch.cat([X_train, X_other])):
            source = "those of the training and held-out data together"
        elif fitted_on(X_other):
            source = "the held-out data's"
    return Check("fitted_on_train", False, f"the statistics are {source}")


def standardized_check(Z_train: torch.Tensor, atol: float = 1e-3) -> Check:
    """Whether a standardised training split ``(N, D)`` has, per feature, mean 0
    and standard deviation 1 (or 0, for a constant feature), within ``atol``.

    Standardising with the training split's own statistics gives exactly
    that; statistics taken from more data (test included) leave the
    training split off-centre by the gap between the splits' means, which
    this catches without seeing the statistics themselves.
    """
    Z = _tensor("Z_train", Z_train).double()
    require(Z.ndim == 2 and len(Z) > 1, "Z_train", "an (N, D) tensor, N > 1",
            tuple(Z.shape))  # fmt: skip
    atol = check_real("atol", atol, "(0, inf)")
    mean, std = _statistics(Z, per_feature=True)
    off_mean = float(mean.abs().max())
    off_std = float(torch.minimum((std - 1).abs(), std).max())
    ok = off_mean <= atol and off_std <= atol
    return Check("standardized", ok, f"per-feature means within {off_mean:.2g} of 0 "
                 f"and stds within {off_std:.2g} of 1 (tolerance {atol:g})",
                 {"mean_offset": off_mean, "std_offset": off_std})  # fmt: skip
