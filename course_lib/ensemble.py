r"""Ensembles and weight averaging: many models, or many weights, for one prediction.

*Ensembles* average the predicted class distributions of :math:`M` models,

.. math::
    \bar p(y \mid x) = \frac{1}{M} \sum_{m=1}^{M} \mathrm{softmax}(f_m(x))_y,
    \qquad \hat y = \arg\max_y \bar p(y \mid x),

whether the members were trained independently (:func:`ensemble_predict`) or
are snapshots of one run with a cyclic cosine learning rate
(:func:`snapshot_ensemble`, Huang et al. 2017). Test-time augmentation averages
the same way over transformed copies of the input (:func:`tta_predict`).

*Weight averages* keep one model whose weights are a running average of the
iterates :math:`\theta_1, \theta_2, \dots` of training: :class:`EMA`
(exponential moving average) and :class:`SWA` (the equal-weight Polyak / SWA
average). Both update as ``torch.optim.swa_utils.AveragedModel`` does, step
for step (``tests/test_ensemble.py`` checks it), buffers included, and
:func:`update_bn` recomputes batch-norm statistics for averaged weights as
``swa_utils.update_bn`` does.

Test-time cost, for a network of :math:`P` parameters: an ensemble of
:math:`M` members needs :math:`M` forward passes and :math:`MP` parameters; TTA
with :math:`V` views :math:`V` passes and :math:`P` parameters; an EMA or SWA
model one pass and :math:`P` parameters (one extra copy kept during training).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from ._args import (
    check_bool,
    check_callable,
    check_choice,
    check_generator,
    check_int,
    check_int_sequence,
    check_real,
    require,
)
from .schedules import CosineRestarts
from .train import History, LossFn, fit

__all__ = [
    "average_probabilities", "member_probabilities", "ensemble_predict",
    "accuracy", "accuracy_by_size", "snapshot_ensemble", "WeightAverage",
    "EMA", "SWA", "update_bn", "shifted_views", "random_views", "tta_predict",
]  # fmt: skip

_SHIFT_MODES = ("circular", "zeros")


# ----------------------------------------------------------- averaging outputs


def _check_models(models) -> list[nn.Module]:
    ok = isinstance(models, Sequence) and len(models) > 0
    ok = ok and all(isinstance(m, nn.Module) for m in models)
    require(ok, "models", "a non-empty sequence of nn.Module", models)
    return list(models)


def average_probabilities(logits) -> Tensor:
    r"""Mean of the members' softmax probabilities: logits ``(M, N, C)`` (or a
    sequence of :math:`M` tensors ``(N, C)``) -> ``(N, C)``.

    .. math:: \bar p_{nc} = \frac{1}{M} \sum_m \mathrm{softmax}(z_{mn})_c

    The average is taken over probabilities, not logits: averaging logits
    gives a different model (a product of experts, up to normalisation).
    """
    accepted = "a float tensor (M, N, C) or a non-empty list of (N, C) tensors"
    if isinstance(logits, (list, tuple)):
        shapes = {getattr(z, "shape", None) for z in logits}
        ok = len(shapes) == 1 and all(isinstance(z, Tensor) for z in logits)
        require(ok, "logits", accepted + " of one shape", shapes or logits)
        logits = torch.stack(logits)  # (M, N, C)
    ok = isinstance(logits, Tensor) and logits.ndim == 3 and logits.is_floating_point()
    require(ok, "logits", accepted, getattr(logits, "shape", logits))
    return logits.softmax(dim=-1).mean(dim=0)  # (N, C)


@torch.no_grad()
def _logits(model: nn.Module, X: Tensor) -> Tensor:
    """``model(X)`` in eval mode, on the model's device; training mode restored."""
    was_training = model.training
    model.eval()
    first = next(model.parameters(), None)
    device = X.device if first is None else first.device
    out = model(X.to(device))  # (N, C)
    model.train(was_training)
    return out


def member_probabilities(models: Sequence[nn.Module], X: Tensor) -> Tensor:
    """Each member's softmax probabilities on ``X``: ``(M, N, C)``, in eval mode."""
    models = _check_models(models)
    return torch.stack([_logits(m, X).softmax(dim=-1) for m in models])


def ensemble_predict(models: Sequence[nn.Module], X: Tensor) -> Tensor:
    """The ensemble's averaged probabilities on ``X``: ``(N, C)`` (argmax: labels).

    One forward pass per member, each in eval mode (dropout off, batch norm on
    its running statistics); see :func:`average_probabilities`.
    """
    models = _check_models(models)
    return average_probabilities([_logits(m, X) for m in models])


def accuracy(probs: Tensor, y: Tensor) -> float:
    """Fraction of rows of ``probs`` (``(N, C)``) whose argmax is ``y`` (``(N,)``)."""
    ok = probs.ndim == 2 and y.shape == probs.shape[:1]
    require(ok, "probs and y", "shapes (N, C) and (N,)", (probs.shape, y.shape))
    return (probs.argmax(dim=1) == y.to(probs.device)).float().mean().item()


def accuracy_by_size(member_probs: Tensor, y: Tensor) -> list[float]:
    r"""Accuracy of the ensemble of the first :math:`k` members, for
    :math:`k = 1, \dots, M`, from ``member_probs`` ``(M, N, C)``."""
    ok = isinstance(member_probs, Tensor) and member_probs.ndim == 3
    shape = getattr(member_probs, "shape", member_probs)
    require(ok, "member_probs", "a tensor (M, N, C)", shape)
    running = member_probs.cumsum(dim=0)  # (M, N, C): sums of the first k
    return [accuracy(running[k], y) for k in range(len(member_probs))]


# ----------------------------------------------------------- snapshot ensembles


def snapshot_ensemble(
    model: nn.Module,
    train_loader,
    optimizer: torch.optim.Optimizer,
    *,
    num_cycles: int,
    epochs_per_cycle: int,
    min_factor: float = 0.0,
    loss_fn: LossFn = F.cross_entropy,
    val_loader=None,
    device=None,
    progress: bool = True,
) -> tuple[list[nn.Module], list[History]]:
    r"""Train ``model`` with a restarted cosine lr; keep a copy after each cycle.

    The learning rate of Huang et al. (2017) is
    :class:`course_lib.schedules.CosineRestarts` with period :math:`T`
    = ``epochs_per_cycle * len(train_loader)`` steps: within each cycle it falls
    from the optimizer's lr to nearly ``min_factor`` times it, the model
    settles into a minimum, is copied (a *snapshot*), and the jump back to the
    full lr sends it on to the next. The cost is that of one run of
    ``num_cycles * epochs_per_cycle`` epochs. Returns ``(snapshots,
    histories)``: ``num_cycles`` deep copies (fewer if the loss became
    non-finite) and one :class:`course_lib.train.History` per cycle.
    """
    num_cycles = check_int("num_cycles", num_cycles, low=1)
    epochs = check_int("epochs_per_cycle", epochs_per_cycle, low=1)
    period = epochs * len(train_loader)
    scheduler = LambdaLR(optimizer, CosineRestarts(period, min_factor=min_factor))
    snapshots, histories = [], []
    for _ in range(num_cycles):
        history = fit(
            model, train_loader, optimizer, num_epochs=epochs, loss_fn=loss_fn,
            val_loader=val_loader, schedule=scheduler, device=device,
            progress=progress,
        )  # fmt: skip
        histories.append(history)
        if history.stopped is not None:
            break
        snapshots.append(copy.deepcopy(model))
    return snapshots, histories


# ------------------------------------------------------------- weight averages


def _tensors(module: nn.Module, use_buffers: bool) -> list[Tensor]:
    tensors = list(module.parameters())
    return tensors + list(module.buffers()) if use_buffers else tensors


class WeightAverage(nn.Module):
    r"""A copy of ``model`` whose weights are a running average of ``model``'s.

    :meth:`update_parameters` (call it after each optimizer step) copies the
    weights the first time and then moves each averaged tensor towards the
    model's, :math:`\bar\theta \leftarrow \bar\theta + w_n(\theta - \bar\theta)`,
    :math:`n` the number of updates so far, :math:`w_n` set by the subclass
    (:class:`EMA`: :math:`1 - d`; :class:`SWA`: :math:`1/(n+1)`).
    With ``use_buffers`` the buffers (batch-norm statistics) are averaged too;
    otherwise they are copied from ``model`` at every update, as in
    ``swa_utils.AveragedModel``. Integer buffers (``num_batches_tracked``) are
    averaged in floating point and truncated at every update, as there (so
    an averaged ``num_batches_tracked`` keeps its first value). Calling the object
    runs the averaged copy, ``self.module``.
    """

    def __init__(self, model: nn.Module, *, use_buffers: bool = False):
        super().__init__()
        require(isinstance(model, nn.Module), "model", "an nn.Module", model)
        self.use_buffers = check_bool("use_buffers", use_buffers)
        self.module = copy.deepcopy(model)
        # a buffer, as in AveragedModel: saved by state_dict, same keys
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _average(self, avg: Tensor, new: Tensor, n: int) -> Tensor:
        """The new average after ``n`` >= 1 updates (the subclass's rule)."""
        raise NotImplementedError

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Fold the weights of ``model`` (same architecture) into the average."""
        require(isinstance(model, nn.Module), "model", "an nn.Module", model)
        mine = _tensors(self.module, self.use_buffers)
        theirs = _tensors(model, self.use_buffers)
        same = [t.shape for t in mine] == [t.shape for t in theirs]
        require(same, "model", "of the architecture being averaged", type(model))
        n = int(self.n_averaged)
        for avg, new in zip(mine, theirs, strict=True):
            new = new.detach().to(avg.device)
            # an integer buffer takes the float result truncated, as in torch
            avg.copy_(new if n == 0 else self._average(avg, new, n))
        if not self.use_buffers:
            pairs = zip(self.module.buffers(), model.buffers(), strict=True)
            for mine_b, theirs_b in pairs:
                mine_b.copy_(theirs_b.detach().to(mine_b.device))
        self.n_averaged += 1


class EMA(WeightAverage):
    r"""Exponential moving average of the weights, decay :math:`d \in [0, 1]`:

    .. math::
        \bar\theta_1 = \theta_1, \qquad
        \bar\theta_{t+1} = d\,\bar\theta_t + (1 - d)\,\theta_{t+1},
        \qquad\text{so}\qquad
        \bar\theta_t = d^{\,t-1}\theta_1 + \sum_{s=2}^{t} (1 - d)\, d^{\,t-s}\theta_s:

    the weights decay geometrically into the past, over roughly the last
    :math:`1/(1-d)` iterates (``decay=0`` is the last iterate). Equal to
    ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d),
    use_buffers=...)`` update for update.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, use_buffers=False):
        self_decay = check_real("decay", decay, "[0, 1]")
        super().__init__(model, use_buffers=use_buffers)
        self.decay = self_decay

    def _average(self, avg, new, n):
        if avg.is_floating_point() or avg.is_complex():
            return avg.lerp(new, 1.0 - self.decay)  # avg + (1 - d)(new - avg)
        return avg * self.decay + new * (1 - self.decay)  # torch's integer rule


class SWA(WeightAverage):
    r"""The equal-weight (Polyak-Juditsky / SWA) average of all iterates so far:

    .. math::
        \bar\theta_n = \frac{1}{n} \sum_{s=1}^{n} \theta_s, \qquad
        \bar\theta_{n+1} = \bar\theta_n + \frac{\theta_{n+1} - \bar\theta_n}{n + 1}.

    Polyak and Juditsky (1992) average every SGD iterate; Izmailov et al.
    (2018) average once per epoch late in training, at a constant or cyclic
    lr. Equal to ``AveragedModel(model, use_buffers=...)`` update for update.
    """

    def _average(self, avg, new, n):
        return avg + (new - avg) / (n + 1)


@torch.no_grad()
def update_bn(loader, model: nn.Module, device=None) -> None:
    r"""Recompute every batch norm's running statistics with one pass over ``loader``.

    Averaged weights were never run through the network, so the statistics
    collected during training belong to other weights. Each batch-norm layer
    is reset and, over the :math:`K` batches (tensors, or tuples whose first
    item is the input), accumulates the equal-weight mean of the per-batch
    statistics (``momentum=None``):

    .. math::
        \mu = \frac{1}{K} \sum_{k} \mu_k, \qquad
        \sigma^2 = \frac{1}{K} \sum_{k} \sigma_k^2 \ (\text{unbiased}),

    every batch counting the same whatever its size. Momenta and the training
    flag are restored. Equal to ``torch.optim.swa_utils.update_bn``.
    """
    batch_norm = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d/3d, SyncBatchNorm
    norms = [m for m in model.modules() if isinstance(m, batch_norm)]
    if not norms:
        return
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: factor 1 / num_batches_tracked
    was_training = model.training
    model.train()
    for batch in loader:
        X = batch[0] if isinstance(batch, (list, tuple)) else batch
        model(X if device is None else X.to(device))
    for bn, momentum in zip(norms, momenta, strict=True):
        bn.momentum = momentum
    model.train(was_training)


# ------------------------------------------------------ test-time augmentation


def _check_signals(x) -> None:
    ok = isinstance(x, Tensor) and x.is_floating_point() and x.ndim in (2, 3)
    accepted = "a float tensor of shape (N, L) or (N, C, L)"
    require(ok, "X", accepted, getattr(x, "shape", x))


def shifted_views(X: Tensor, shifts: Sequence[int], *, mode: str = "circular"):
    r"""One copy of the signals ``X`` (``(N, L)`` or ``(N, C, L)``) per shift
    :math:`s`: :math:`\tilde x_t = x_{t-s}`, the deterministic counterpart of
    :func:`course_lib.augment.random_shift` (same ``mode``\ s). Returns a list."""
    _check_signals(X)
    length = X.shape[-1]
    shifts = check_int_sequence("shifts", shifts, low=1 - length, high=length - 1,
                                nonempty=True)  # fmt: skip
    mode = check_choice("mode", mode, _SHIFT_MODES)
    views = []
    for s in shifts:
        view = torch.roll(X, s, dims=-1)
        if mode == "zeros" and s > 0:
            view[..., :s] = 0.0  # what came round from the end
        elif mode == "zeros" and s < 0:
            view[..., s:] = 0.0
        views.append(view)
    return views


def random_views(
    X: Tensor, augment: Callable, num_views: int, *, generator=None
) -> list[Tensor]:
    """``num_views`` copies ``augment(X, generator=generator)``, e.g. with a
    :class:`course_lib.augment.SignalAugment`; one generator drives them all."""
    _check_signals(X)
    check_callable("augment", augment, "a callable augment(X, generator=...)")
    num_views = check_int("num_views", num_views, low=1)
    generator = check_generator(generator)
    return [augment(X, generator=generator) for _ in range(num_views)]


def tta_predict(model: nn.Module, views: Sequence[Tensor]) -> Tensor:
    """Test-time augmentation: ``model``'s probabilities averaged over ``views``
    (from :func:`shifted_views` or :func:`random_views`; put ``X`` itself in the
    list to include the original), ``(N, C)``. One forward pass per view."""
    ok = isinstance(views, (list, tuple)) and len(views) > 0
    require(ok and all(isinstance(v, Tensor) for v in views), "views",
            "a non-empty list of input tensors", type(views))  # fmt: skip
    return average_probabilities([_logits(model, v) for v in views])
