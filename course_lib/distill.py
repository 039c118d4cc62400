r"""Knowledge distillation (Hinton, Vinyals and Dean, 2015), written out.

A trained *teacher* gives, for every input, a whole distribution over the
classes; a *student* is trained to reproduce it. Dividing the logits by a
temperature :math:`T > 1` before the softmax (:func:`softened_probabilities`)
lifts the small probabilities of the wrong classes, which say which classes
the teacher finds alike ("dark knowledge"), so they weigh in the loss.

With student logits :math:`z`, teacher logits :math:`v`, :math:`C` classes and
:math:`p^T = \operatorname{softmax}(v/T)`, :math:`q^T = \operatorname{softmax}(z/T)`,
the loss of one sample (:func:`distillation_loss`) is

.. math::
    \mathcal{L} = \alpha\, T^2\, \mathrm{KL}\left(p^T \,\|\, q^T\right)
    + (1 - \alpha)\, \mathrm{CE}(z, y),
    \qquad \mathrm{KL}(p \,\|\, q) = \sum_c p_c (\log p_c - \log q_c),

averaged over the batch. The :math:`T^2` keeps the soft term's gradient the
same size whatever :math:`T`: :math:`\partial\, T^2\mathrm{KL} / \partial z_c
= T (q^T_c - p^T_c)`, and when :math:`T` is large next to the logits and both
have zero mean over the classes, :math:`q^T_c \approx (1 + z_c/T)/C`, so the
gradient tends to :math:`(z_c - v_c)/C`, which has no :math:`T` left in it.
Without the factor it would shrink like :math:`1/T^2` and a change of :math:`T`
would silently change the weight :math:`\alpha` was meant to set.

:func:`teacher_probabilities` runs a teacher, or the average of several (an
ensemble to be compressed into one model, as in section 3 of the paper), over
a transfer set once; :func:`distill` trains a student on those targets with
any optimizer and returns a :class:`course_lib.train.History`. In PyTorch the
soft term is usually written ``F.kl_div(F.log_softmax(z / T, 1),
F.log_softmax(v / T, 1), log_target=True, reduction="batchmean") * T**2``;
``tests/test_distill.py`` checks this module against that line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import device as _device
from ._args import check_bool, check_int, check_real, require
from ._util import cached_weights
from .data import load_dataset, make_loader
from .models import MNIST1DCNN
from .train import History, fit, minibatch_indices

__all__ = [
    "softened_probabilities",
    "soft_target_loss",
    "distillation_loss",
    "teacher_probabilities",
    "distill",
    "mnist1d_teacher",
]


def _check_temperature(temperature) -> float:
    return check_real("temperature", temperature, "(0, inf)")


def _check_logits(name: str, logits) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    ok = logits.dim() == 2 and logits.is_floating_point()
    require(ok, name, "a 2-D floating-point tensor (batch, classes)", logits.shape)
    return logits


def _check_same_shape(student: Tensor, name: str, other: Tensor) -> None:
    ok = other.shape == student.shape
    accepted = f"of the student logits' shape {tuple(student.shape)}"
    require(ok, name, accepted, tuple(other.shape))


def _check_targets(targets, logits: Tensor) -> Tensor:
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    ok = targets.dtype == torch.int64 and targets.shape == logits.shape[:1]
    accepted = f"an int64 tensor of shape ({len(logits)},) (class indices)"
    require(ok, "targets", accepted, f"{targets.dtype} {tuple(targets.shape)}")
    return targets


def softened_probabilities(logits: Tensor, temperature: float = 1.0) -> Tensor:
    r"""The softmax of ``logits / temperature`` over the last dimension.

    .. math:: p_c^T = \frac{\exp(v_c / T)}{\sum_k \exp(v_k / T)}

    :math:`T = 1` is the usual softmax; :math:`T \to \infty` tends to the
    uniform distribution and :math:`T \to 0` to the one-hot of the argmax.
    The order of the classes never changes, only how sharply they differ.
    """
    temperature = _check_temperature(temperature)
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits!r}")
    return torch.softmax(logits / temperature, dim=-1)


def soft_target_loss(
    student_logits: Tensor, teacher_probs: Tensor, temperature: float
) -> Tensor:
    r""":math:`T^2\, \mathrm{KL}(p \,\|\, q^T)` averaged over the batch.

    ``teacher_probs`` (``(B, C)``, rows summing to 1) are the soft targets
    :math:`p`, already at temperature ``T``: :func:`softened_probabilities` of
    one teacher's logits, or the mean of several teachers' (which is not a
    softmax of anything, hence probabilities rather than logits here).
    :math:`q^T` is the student's softmax at the same ``T``. Classes with
    :math:`p_c = 0` contribute 0 (:math:`0 \log 0 = 0`). The gradient with
    respect to the student logits is :math:`T (q^T - p) / B`.
    """
    temperature = _check_temperature(temperature)
    z = _check_logits("student_logits", student_logits)  # (B, C)
    p = _check_logits("teacher_probs", teacher_probs)  # (B, C)
    _check_same_shape(z, "teacher_probs", p)
    log_q = torch.log_softmax(z / temperature, dim=1)  # (B, C)
    kl = torch.xlogy(p, p) - p * log_q  # (B, C); xlogy(0, 0) = 0
    return temperature**2 * kl.sum() / len(z)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    r"""Hinton et al.'s loss: ``alpha`` soft targets at ``temperature``, the rest
    hard labels.

    .. math::
        \mathcal{L} = \frac{1}{B} \sum_{i=1}^{B} \Big[
        \alpha\, T^2 \sum_c p^T_{ic} \log \frac{p^T_{ic}}{q^T_{ic}}
        + (1 - \alpha)\, \big(-\log q^1_{i y_i}\big) \Big]

    with :math:`p^T = \operatorname{softmax}(v/T)` from ``teacher_logits``
    :math:`v` (``(B, C)``, detached: the teacher is not trained) and
    :math:`q^T = \operatorname{softmax}(z/T)` from ``student_logits``
    :math:`z`. The hard term is the plain cross-entropy at :math:`T = 1`.
    ``alpha = 1`` uses the teacher only and needs no ``targets``;
    ``alpha = 0`` is ordinary training. The soft term equals
    ``F.kl_div(F.log_softmax(z / T, 1), F.log_softmax(v / T, 1),
    log_target=True, reduction="batchmean") * T**2`` (:func:`soft_target_loss`).
    """
    temperature = _check_temperature(temperature)
    alpha = check_real("alpha", alpha, "[0, 1]")
    z = _check_logits("student_logits", student_logits)
    v = _check_logits("teacher_logits", teacher_logits)
    _check_same_shape(z, "teacher_logits", v)
    if targets is None:
        require(alpha == 1.0, "alpha", "1 when targets is None", alpha)
    else:
        targets = _check_targets(targets, z)
    p = torch.softmax(v.detach() / temperature, dim=1)  # (B, C)
    loss = alpha * soft_target_loss(z, p, temperature) if alpha > 0 else 0.0
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(z, targets)
    return loss


def _teacher_list(teacher) -> list[nn.Module]:
    if isinstance(teacher, nn.Module):
        return [teacher]
    ok = isinstance(teacher, Sequence) and len(teacher) > 0
    ok = ok and all(isinstance(m, nn.Module) for m in teacher)
    if not ok:
        accepted = "an nn.Module or a non-empty sequence of nn.Modules"
        raise TypeError(f"teacher must be {accepted}, got {teacher!r}")
    return list(teacher)


@torch.no_grad()
def _probs_of(model: nn.Module, X: Tensor, temperature: float, batch_size: int):
    """One model's softened probabilities over ``X``, in eval mode, batched."""
    was_training = model.training
    model.eval()
    where = next(model.parameters()).device
    try:
        parts = [
            softened_probabilities(model(xb.to(where)), temperature).to(X.device)
            for xb in X.split(batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(parts)  # (N, C)


def teacher_probabilities(
    teacher: nn.Module | Sequence[nn.Module],
    X: Tensor,
    temperature: float = 1.0,
    *,
    batch_size: int = 1000,
) -> Tensor:
    r"""The teacher's soft targets :math:`p^T` on ``X`` (``(N, C)``).

    ``teacher`` is one model or a sequence of :math:`M` models (an ensemble),
    whose soft targets are the mean of the members' softened probabilities,
    :math:`p^T = \frac{1}{M} \sum_m \operatorname{softmax}(f_m(x)/T)`: every
    member is softened first, then the distributions are averaged. Models
    run in eval mode (dropout off, batch-norm running statistics) without
    gradients, ``batch_size`` inputs at a time, each on the device of its own
    parameters; the result is on ``X``'s device. Each model's train/eval mode
    is put back afterwards.
    """
    models = _teacher_list(teacher)
    temperature = _check_temperature(temperature)
    batch_size = check_int("batch_size", batch_size, low=1)
    total = sum(_probs_of(m, X, temperature, batch_size) for m in models)
    return total / len(models)


def _soft_targets(teacher, X: Tensor, temperature: float) -> Tensor:
    """``teacher_probabilities`` of a model, or given probabilities, checked."""
    if not isinstance(teacher, Tensor):
        return teacher_probabilities(teacher, X, temperature)
    p = _check_logits("teacher", teacher)  # (N, C)
    ok = len(p) == len(X) and bool((p >= 0).all())
    ok = ok and bool(torch.allclose(p.sum(1), p.new_ones(len(p)), atol=1e-4))
    accepted = f"probabilities of shape ({len(X)}, C) with rows summing to 1"
    require(ok, "teacher", accepted, f"a tensor of shape {tuple(p.shape)}")
    return p.detach().to(X.device)


def _distill_epoch(student, X, p, y, optimizer, loss_terms, batch_size, rng, history):
    """One shuffled pass over ``X``; False once the loss is non-finite."""
    student.train()
    total, correct, count = 0.0, 0, 0
    for idx in minibatch_indices(len(X), batch_size, shuffle=True, generator=rng):
        idx = idx.to(X.device)  # (B,)
        logits = student(X[idx])  # (B, C)
        loss = loss_terms(logits, idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        history.step_lr.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        value = loss.item()
        history.step_loss.append(value)
        total, count = total + value * len(idx), count + len(idx)
        if y is not None:
            correct += (logits.argmax(1) == y[idx]).sum().item()
        if not math.isfinite(value):
            step = len(history.step_loss) - 1
            history.stopped = f"non-finite loss ({value}) at step {step}"
            break
    history.train_loss.append(total / count)
    history.train_acc.append(correct / count if y is not None else math.nan)
    return history.stopped is None


@torch.no_grad()
def _val_scores(student: nn.Module, X: Tensor, y: Tensor) -> tuple[float, float]:
    was_training = student.training
    student.eval()
    logits = torch.cat([student(xb) for xb in X.split(1000)])  # (N, C)
    student.train(was_training)
    accuracy = (logits.argmax(1) == y).float().mean().item()
    return F.cross_entropy(logits, y).item(), accuracy


def distill(
    student: nn.Module,
    teacher: nn.Module | Sequence[nn.Module] | Tensor | None,
    X: Tensor,
    y: Tensor | None = None,
    *,
    optimizer: torch.optim.Optimizer,
    num_epochs: int,
    batch_size: int = 128,
    temperature: float = 4.0,
    alpha: float = 0.9,
    val: tuple[Tensor, Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> History:
    r"""Train ``student`` in place on the transfer set ``X`` with
    :func:`distillation_loss`; return its :class:`course_lib.train.History`.

    The teacher (one model or an ensemble, see :func:`teacher_probabilities`)
    labels ``X`` once at ``temperature`` before training, as the paper's
    recipe says: run the teacher, keep its soft targets, train on them.
    ``teacher`` may also be those soft targets themselves, an ``(N, C)``
    tensor of probabilities at ``temperature`` (rows summing to 1), e.g.
    targets edited for a control experiment. Each step then minimises, on a
    mini-batch of indices :math:`B`,

    .. math::
        \alpha\, T^2\, \mathrm{KL}(p^T_B \,\|\, q^T_B)
        + (1 - \alpha)\, \mathrm{CE}(z_B, y_B).

    ``y`` (``(N,)`` int64) is needed unless ``alpha = 1``; ``teacher`` may be
    None only when ``alpha = 0``, which is plain training on ``y`` over the
    same batches, so the two can be compared with nothing else changed. The
    batch order comes from ``course_lib.device.generator(seed)``, as in
    :func:`course_lib.train.minibatch_sgd`. ``val = (X_val, y_val)`` records
    validation loss (cross-entropy at :math:`T = 1`) and accuracy per epoch.
    Training accuracy is against ``y`` (NaN without it).
    """
    alpha = check_real("alpha", alpha, "[0, 1]")
    temperature = _check_temperature(temperature)
    num_epochs = check_int("num_epochs", num_epochs, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    progress = check_bool("progress", progress)
    if not isinstance(optimizer, torch.optim.Optimizer):
        accepted = "a torch.optim.Optimizer"
        raise TypeError(f"optimizer must be {accepted}, got {optimizer!r}")
    require(teacher is not None or alpha == 0, "teacher", "a model if alpha > 0", None)
    require(y is not None or alpha == 1, "y", "given when alpha < 1", None)
    if y is not None and len(y) != len(X):
        lengths = f"{len(X)} and {len(y)}"
        raise ValueError(f"X and y must have the same length, got {lengths}")
    where = next(student.parameters()).device
    X = X.to(where)
    y = y.to(where) if y is not None else None
    p = None if alpha == 0 else _soft_targets(teacher, X, temperature)

    def loss_terms(logits, idx):
        soft = soft_target_loss(logits, p[idx], temperature) if alpha > 0 else 0.0
        hard = F.cross_entropy(logits, y[idx]) if alpha < 1 else 0.0
        return alpha * soft + (1 - alpha) * hard

    history = History(steps_per_epoch=math.ceil(len(X) / batch_size))
    rng = _device.generator(seed)
    for _ in tqdm(range(num_epochs), desc="epochs", disable=not progress, leave=False):
        finite = _distill_epoch(
            student, X, p, y, optimizer, loss_terms, batch_size, rng, history
        )
        if val is not None:
            scores = _val_scores(student, *(t.to(where) for t in val))
            history.val_loss.append(scores[0] if finite else math.nan)
            history.val_acc.append(scores[1] if finite else math.nan)
        if not finite:
            break
    return history


def mnist1d_teacher(
    *, num_epochs: int = 40, channels: int = 32, seed: int = 0, cache: bool = True
) -> MNIST1DCNN:
    """The book's teacher: a :class:`course_lib.models.MNIST1DCNN` trained on
    MNIST-1D's 3,500 training signals (about 90% test accuracy on a CPU).

    Adam with a one-cycle schedule peaking at 0.01, batches of 100, for
    ``num_epochs`` epochs; initialisation and batch order come from ``seed``
    (shifted by ``COURSE_LIB_SEED_SHIFT``). With ``cache`` the weights are
    kept in :func:`course_lib.data.cache_dir` under a name that changes with
    every setting, the shifted seed and the torch version, and read back
    instead of retrained (a failed write only warns). Returned on the CPU,
    in eval mode.
    """
    num_epochs = check_int("num_epochs", num_epochs, low=1)
    channels = check_int("channels", channels, low=1)
    cache = check_bool("cache", cache)
    shifted = _device.shifted_seed(seed)  # checks seed is an integer >= 0
    spec = [num_epochs, channels, shifted, torch.__version__]
    with torch.random.fork_rng(devices=[]):  # leave the reader's global RNG alone
        torch.manual_seed(shifted)
        model = MNIST1DCNN(channels=channels)
    return cached_weights(
        model, "distill-mnist1d-teacher", spec,
        lambda m: _train_teacher(m, num_epochs, seed), cache=cache, what="the teacher",
    ).eval()  # fmt: skip


def _train_teacher(model, num_epochs, seed):
    splits = load_dataset("mnist1d")
    loader = make_loader(  # make_loader shifts the seed itself
        splits.X_train, splits.y_train, batch_size=100, shuffle=True, seed=seed
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=1e-2, total_steps=num_epochs * len(loader)
    )
    fit(model, loader, optimizer, num_epochs=num_epochs, schedule=schedule,
        progress=False)  # fmt: skip


