"""Training loops: mini-batch SGD written out by hand, and the general ``fit``.

:func:`minibatch_sgd` is the algorithm of chapter 1 with nothing hidden: shuffle
and slice (:func:`minibatch_indices`), then compute the loss, back-propagate
and step (:func:`sgd_step`). ``tests/test_train.py``
shows it produces the same parameters as ``torch.optim.SGD`` driven by a
``DataLoader``. :func:`fit` is the loop the rest of the book uses: any
optimizer, an optional schedule, validation, callbacks and a
:class:`History` of everything a learning curve needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from tqdm.auto import tqdm

from . import device
from ._args import check_bool, check_callable, check_choice, check_int, check_real

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def minibatch_indices(
    n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator
) -> list[torch.Tensor]:
    """One epoch of batches: index tensors covering ``range(n)`` once each.

    With ``shuffle`` the order is ``torch.randperm(n, generator=generator)``,
    otherwise ``0, 1, ..., n-1``; consecutive runs of ``batch_size`` indices
    form the batches, and the last batch is smaller when ``batch_size`` does
    not divide ``n``.
    """
    n, batch_size = check_int("n", n, low=1), check_int("batch_size", batch_size, low=1)
    shuffle = check_bool("shuffle", shuffle)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(order.split(batch_size))  # (B,) each


def sgd_step(
    model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor, lr: float
) -> float:
    r"""One SGD step on the batch ``(X, y)``; returns the batch loss before the step.

    .. math:: \theta \leftarrow \theta - \eta\, \nabla_\theta\, \ell(f_\theta(X), y)

    Gradients are cleared first (``backward`` adds to ``.grad``, it does not
    overwrite it) and parameters without a gradient are left alone.
    """
    loss = loss_fn(model(X), y)  # mean over the batch
    model.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return loss.item()


def minibatch_sgd(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    num_epochs: int,
    loss_fn: LossFn = F.cross_entropy,
    shuffle: bool = True,
    seed: int = 0,
    schedule: Callable[[int], float] | None = None,
) -> list[float]:
    r"""Train ``model`` in place with plain mini-batch SGD; return the batch losses.

    Each epoch visits the ``n`` samples once, in a fresh random order when
    ``shuffle`` is true (:func:`minibatch_indices`), in batches :math:`B` of
    ``batch_size``, and takes one :func:`sgd_step` per batch:

    .. math::
        \theta \leftarrow \theta - \eta_t \nabla_\theta \frac{1}{|B|}
        \sum_{i \in B} \ell(f_\theta(x_i), y_i),
        \qquad \eta_t = \text{lr} \cdot \text{schedule}(t).

    Each epoch's order is one ``torch.randperm`` from a ``torch.Generator``
    seeded with ``seed``, as torch's ``SubsetRandomSampler`` draws it, so the
    run is reproducible and independent of the global random state. (The
    usual ``RandomSampler`` draws the first epoch the same way but makes one
    extra draw at the end of every epoch, so its later epochs differ.)
    """
    lr = check_real("lr", lr, "[0, inf)")
    num_epochs = check_int("num_epochs", num_epochs, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    shuffle = check_bool("shuffle", shuffle)
    if schedule is not None:
        check_callable("schedule", schedule)
    if len(X) != len(y):
        raise ValueError(
            f"X and y must have the same length, got {len(X)} and {len(y)}"
        )
    generator = device.generator(seed)
    losses: list[float] = []
    for _ in range(num_epochs):
        for idx in minibatch_indices(
            len(X), batch_size, shuffle=shuffle, generator=generator
        ):
            idx = idx.to(X.device)  # (B,)
            step_lr = lr * (schedule(len(losses)) if schedule is not None else 1.0)
            losses.append(sgd_step(model, loss_fn, X[idx], y[idx], step_lr))
    return losses


@dataclass
class History:
    """What a training run recorded.

    Per step: ``step_loss`` (the mini-batch loss) and ``step_lr`` (the first
    parameter group's learning rate used for that step). Per epoch:
    ``train_loss``/``train_acc`` (averaged over the epoch's batches, so they
    mix the weights of the whole epoch, as Keras and most logs do) and
    ``val_loss``/``val_acc`` (the model at the end of the epoch). A run that
    hit a non-finite loss stops and says so in ``stopped``.
    """

    steps_per_epoch: int
    step_loss: list[float] = field(default_factory=list)
    step_lr: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    stopped: str | None = None
    best_epoch: int | None = None

    @property
    def num_epochs(self) -> int:
        return len(self.train_loss)

    def as_dict(self) -> dict:
        """Plain lists and numbers (for JSON, or for handing to a student)."""
        return dict(self.__dict__)


class Callback:
    """Hooks :func:`fit` calls. ``on_epoch_end`` returns True to stop training."""

    def on_train_begin(self, model: nn.Module, history: History) -> None:
        pass

    def on_epoch_end(self, model: nn.Module, history: History) -> bool:
        return False

    def on_train_end(self, model: nn.Module, history: History) -> None:
        pass


_MONITORS = {"val_loss": min, "val_acc": max, "train_loss": min}


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience``
    epochs; with ``restore_best`` the model ends with the best epoch's weights.

    The best weights are copied to the CPU, so keeping them costs no GPU
    memory. ``history.best_epoch`` (0-based) records which epoch that was.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        restore_best: bool = True,
    ):
        self.monitor = check_choice("monitor", monitor, tuple(_MONITORS))
        self.patience = check_int("patience", patience, low=1)
        self.min_delta = check_real("min_delta", min_delta, "[0, inf)")
        self.restore_best = check_bool("restore_best", restore_best)
        self.sign = -1.0 if _MONITORS[monitor] is min else 1.0  # +: larger is better

    def on_train_begin(self, model, history):
        self.best, self.best_state, self.waited = -math.inf, None, 0

    def on_epoch_end(self, model, history):
        values = getattr(history, self.monitor)
        if not values:
            raise ValueError(f"monitor {self.monitor!r} has no values: pass val_loader")
        score = self.sign * values[-1]
        if score > self.best + self.min_delta:
            self.best, self.waited = score, 0
            history.best_epoch = len(values) - 1
            self.best_state = {
                k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            }
            return False
        self.waited += 1
        return self.waited >= self.patience

    def on_train_end(self, model, history):
        if self.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, loss_fn: LossFn = F.cross_entropy, device=None
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over ``loader`` (in eval mode)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for X, y in loader:
        X, y = X.to(device), y.to(device)
        logits = model(X)
        total_loss += loss_fn(logits, y).item() * len(y)
        correct += (logits.argmax(dim=1) == y).sum().item()
        count += len(y)
    model.train(was_training)
    if count == 0:
        raise ValueError("loader yielded no samples")
    return total_loss / count, correct / count


def _as_scheduler(optimizer, schedule) -> LRScheduler | None:
    if schedule is None or isinstance(schedule, LRScheduler):
        return schedule
    if callable(schedule):
        return LambdaLR(optimizer, schedule)
    raise ValueError(
        "schedule must be None, a function of the step (course_lib.schedules) "
        f"or a torch LRScheduler, got {schedule!r}"
    )


def _train_epoch(model, loader, optimizer, scheduler, loss_fn, device, history):
    """One pass over ``loader``; False if the loss became non-finite."""
    model.train()
    total_loss, correct, count = 0.0, 0, 0
    for X, y in loader:
        X, y = X.to(device), y.to(device)
        logits = model(X)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        history.step_lr.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        value = loss.item()
        history.step_loss.append(value)
        total_loss += value * len(y)
        correct += (logits.argmax(dim=1) == y).sum().item()
        count += len(y)
        if not math.isfinite(value):
            history.stopped = (
                f"non-finite loss ({value}) at step {len(history.step_loss) - 1}"
            )
            break
    history.train_loss.append(total_loss / count)
    history.train_acc.append(correct / count)
    return history.stopped is None


def fit(
    model: nn.Module,
    train_loader,
    optimizer: torch.optim.Optimizer,
    *,
    num_epochs: int,
    loss_fn: LossFn = F.cross_entropy,
    val_loader=None,
    schedule=None,
    callbacks: Sequence[Callback] = (),
    device: torch.device | str | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` for ``num_epochs`` epochs and return its :class:`History`.

    ``schedule`` is stepped after every optimizer step: a function of the step
    returning a factor (anything in :mod:`course_lib.schedules`, wrapped in
    ``LambdaLR``) or a ready ``torch.optim.lr_scheduler`` object. The model is
    moved to ``device`` (default: where its parameters are) and so is each
    batch, which is all it takes to run on a GPU. Training stops early when a
    callback asks to or the loss becomes NaN or infinite.
    """
    num_epochs = check_int("num_epochs", num_epochs, low=1)
    progress = check_bool("progress", progress)
    device = (
        torch.device(device) if device is not None else next(model.parameters()).device
    )
    model.to(device)
    scheduler = _as_scheduler(optimizer, schedule)
    history = History(steps_per_epoch=len(train_loader))
    for cb in callbacks:
        cb.on_train_begin(model, history)
    bar = tqdm(range(num_epochs), desc="epochs", disable=not progress, leave=False)
    for _ in bar:
        finite = _train_epoch(
            model, train_loader, optimizer, scheduler, loss_fn, device, history
        )
        if val_loader is not None:
            val = (
                evaluate(model, val_loader, loss_fn, device)
                if finite
                else (math.nan,) * 2
            )
            history.val_loss.append(val[0])
            history.val_acc.append(val[1])
        bar.set_postfix(train_loss=f"{history.train_loss[-1]:.3f}")
        stop = [cb.on_epoch_end(model, history) for cb in callbacks] if finite else []
        if not finite or any(stop):
            break
    bar.close()
    for cb in callbacks:
        cb.on_train_end(model, history)
    return history
