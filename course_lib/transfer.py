r"""Transfer learning: reuse a trained network on a new task.

A network trained on a *source* task is split into a body, which turns an input
into features :math:`h(x)`, and a head, a linear layer :math:`W h(x) + b` that
turns features into logits. On a *target* task with classes of its own the
head is replaced (:func:`replace_head`) and then one of three things is
trained:

- **linear probe**: the head only. The body is frozen
  (``requires_grad_(False)``), so training is logistic regression on the
  fixed features :math:`h(x)`, a convex problem
  (:func:`head_inputs` computes those features once);
- **fine-tune the last k layers**: the head and the last ``k - 1``
  parameterised layers before it (:func:`train_last`);
- **fine-tune everything**: all layers, usually with smaller learning rates
  for the early ones (:func:`param_groups` gives layer :math:`i`, counted from
  the head, :math:`\eta_i = \eta\,\gamma^i`).

:func:`parameter_counts` says how many weights each choice trains.

Where the pretrained network comes from:

- default, offline: :func:`pretrained_mnist1d` trains the book's own network
  (:class:`course_lib.models.MNIST1DCNN`) on MNIST-1D digits 0-4 (the
  *similar* source) or on the same signals with their 40 positions shuffled
  by one fixed permutation (the *different* source), and caches it under
  :func:`course_lib.data.cache_dir`. The target task (:func:`target_task`)
  is digits 5-9: other classes, drawn from the same generator;
- online: :func:`pretrained_resnet18` is torchvision's ResNet-18 with its
  ImageNet weights (``ResNet18_Weights.DEFAULT``), downloaded once into
  ``$TORCH_HOME/hub/checkpoints``.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._args import (
    check_bool,
    check_choice,
    check_int,
    check_int_sequence,
    check_real,
    require,
)
from ._util import cached_weights
from .data import Splits, load_dataset, make_loader
from .device import generator, shifted_seed
from .models import MNIST1DCNN

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
SOURCES = ("similar", "different")
_PERMUTATION_SEED = 0  # fixed: the "different" source is one dataset, not a family


class PretrainedUnavailableError(RuntimeError):
    """torchvision's pretrained weights are not on disk and could not be fetched."""


class ParameterCount(NamedTuple):
    """How many parameters a model has, and how many of them will be trained."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        """``trainable / total`` (0 for a model without parameters)."""
        return self.trainable / self.total if self.total else 0.0


def parameter_counts(model: nn.Module) -> ParameterCount:
    """Trainable (``requires_grad``) and total numbers of scalar parameters."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return ParameterCount(trainable, sum(p.numel() for p in params))


def freeze(module: nn.Module) -> nn.Module:
    """``module.requires_grad_(False)``: its parameters get no gradient.

    A frozen batch-norm layer still updates its running statistics in train
    mode; call its ``.eval()`` after ``model.train()`` to keep them fixed.
    Returns ``module``.
    """
    return module.requires_grad_(False)


def unfreeze(module: nn.Module) -> nn.Module:
    """``module.requires_grad_(True)``; returns ``module``."""
    return module.requires_grad_(True)


def layer_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the modules that own parameters directly, in registration order.

    For :class:`course_lib.models.MNIST1DCNN` these are its three
    convolutions and the head, ``('features.0', 'features.2', 'features.4',
    'head')``; for torchvision's ResNet-18 every convolution, batch norm and
    finally ``'fc'``. Registration order is the order of the forward pass for
    the sequential networks of this book (and for ResNets); "the last ``k``
    layers" means the last ``k`` names.
    """
    return tuple(
        name
        for name, module in model.named_modules()
        if next(module.parameters(recurse=False), None) is not None
    )


def _submodule(model: nn.Module, name: str, argument: str) -> nn.Module:
    names = [n for n, _ in model.named_modules() if n]
    require(name in names, argument, f"the name of a submodule of {names}", name)
    return model.get_submodule(name)


def replace_head(
    model: nn.Module, num_classes: int, *, head: str = "head", seed: int = 0
) -> nn.Linear:
    """Put a fresh ``nn.Linear(in_features, num_classes)`` in place of ``head``.

    ``head`` names the model's last linear layer (``"head"`` in this book's
    models, ``"fc"`` in torchvision's ResNets, ``"classifier.6"`` in VGG). The
    new layer has PyTorch's default initialisation (uniform in
    :math:`\\pm 1/\\sqrt{\\text{in\\_features}}`) drawn from
    ``course_lib.device.generator(seed)``, on the old head's device and dtype,
    and is trainable whatever was frozen before. Returns the new layer.
    """
    num_classes = check_int("num_classes", num_classes, low=1)
    old = _submodule(model, head, "head")
    if not isinstance(old, nn.Linear):
        raise TypeError(f"head must name an nn.Linear, got {type(old).__name__}")
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    bound = old.in_features**-0.5
    with torch.no_grad():
        g = generator(seed)
        new.weight.uniform_(-bound, bound, generator=g)
        if new.bias is not None:
            new.bias.uniform_(-bound, bound, generator=g)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent, _, attr = head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    return new


def train_last(model: nn.Module, k: int | None) -> tuple[str, ...]:
    """Freeze ``model``, then unfreeze its last ``k`` layers (``None``: all).

    Layers are those of :func:`layer_names`; ``k=1`` is the linear probe (the
    head alone). Returns the names of the trainable layers.
    """
    names = layer_names(model)
    if k is None:
        k = len(names)
    k = check_int("k", k, low=1, high=len(names))
    freeze(model)
    for name in names[-k:]:
        for p in model.get_submodule(name).parameters(recurse=False):
            p.requires_grad_(True)
    return names[-k:]


def prepare(
    model: nn.Module,
    num_classes: int,
    mode: str,
    *,
    k: int = 2,
    head: str = "head",
    seed: int = 0,
) -> ParameterCount:
    """Set ``model`` up for a target task with ``num_classes`` classes, in place.

    Replaces the head (:func:`replace_head`), then ``mode`` decides what
    trains: ``"probe"`` the head only, ``"last"`` the last ``k`` layers (the
    head counts as one), ``"all"`` everything. Returns
    :func:`parameter_counts` of the result.
    """
    mode = check_choice("mode", mode, ("probe", "last", "all"))
    k = check_int("k", k, low=1)
    replace_head(model, num_classes, head=head, seed=seed)
    train_last(model, {"probe": 1, "last": k, "all": None}[mode])
    return parameter_counts(model)


def param_groups(
    model: nn.Module, lr: float, *, layer_decay: float = 1.0
) -> list[dict]:
    r"""Optimizer parameter groups, one per layer that has trainable weights.

    Layer :math:`i` of :func:`layer_names`, counted from the last (the head
    is :math:`i = 0`), gets

    .. math:: \eta_i = \eta\, \gamma^{\,i}, \qquad \gamma = \text{layer\_decay},

    so with :math:`\gamma < 1` early, general layers move less than late,
    task-specific ones (the "discriminative" rates of Howard & Ruder 2018);
    :math:`\gamma = 1` is one rate for all. Frozen parameters are left out,
    so the optimizer neither updates them nor decays them. Each group is
    ``{"params": [...], "lr": eta_i, "name": layer}``, ready for any
    ``torch.optim`` optimizer (which keeps the extra ``"name"`` key).
    """
    lr = check_real("lr", lr, "[0, inf)")
    layer_decay = check_real("layer_decay", layer_decay, "(0, inf)")
    names = layer_names(model)
    groups = []
    for i, name in enumerate(reversed(names)):
        layer = model.get_submodule(name)
        params = [p for p in layer.parameters(recurse=False) if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr * layer_decay**i, "name": name})
    if not groups:
        raise ValueError("model has no trainable parameters: unfreeze some first")
    return groups[::-1]  # input side first, as the layers run


@torch.no_grad()
def head_inputs(
    model: nn.Module, X: torch.Tensor, *, head: str = "head", batch_size: int = 1000
) -> torch.Tensor:
    """The features the head sees, ``(N, in_features)``, in eval mode.

    A forward hook on ``head`` records its input, so this works for any
    model whose head is called once on a flat feature vector. A linear probe
    can then be trained on these once-computed features instead of running
    the frozen body at every step: the same numbers, far less compute.
    """
    batch_size = check_int("batch_size", batch_size, low=1)
    module = _submodule(model, head, "head")
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(X), batch_size):
            model(X[start : start + batch_size])
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured).flatten(1)  # (N, in_features)


def select_classes(splits: Splits, classes) -> Splits:
    """Only the samples of ``classes``, relabelled ``0 .. len(classes) - 1``.

    ``classes`` is a sequence of distinct labels of ``splits``; class
    ``classes[j]`` becomes label ``j``.
    """
    high = splits.num_classes - 1
    classes = check_int_sequence("classes", classes, low=0, high=high, nonempty=True)
    require(len(set(classes)) == len(classes), "classes", "distinct", classes)
    new_label = torch.full((splits.num_classes,), -1, dtype=torch.long)
    new_label[list(classes)] = torch.arange(len(classes))
    parts = {}
    for part in ("train", "val", "test"):
        X, y = getattr(splits, f"X_{part}"), getattr(splits, f"y_{part}")
        keep = new_label[y] >= 0
        parts[f"X_{part}"], parts[f"y_{part}"] = X[keep], new_label[y[keep]]
    return replace(splits, num_classes=len(classes), **parts)


def permute_positions(splits: Splits, seed: int = _PERMUTATION_SEED) -> Splits:
    """Every split with its features reordered by one fixed random permutation.

    The permutation comes from ``torch.Generator().manual_seed(seed)`` (not
    shifted by ``COURSE_LIB_SEED_SHIFT``: it defines a dataset). The labels
    and the information in each sample stay the same, but neighbouring
    positions of a signal are no longer neighbours: the local shapes a
    convolution learns on the original signals are gone.
    """
    seed = check_int("seed", seed, low=0)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(splits.num_features, generator=g)
    parts = ("X_train", "X_val", "X_test")
    return replace(splits, **{part: getattr(splits, part)[:, perm] for part in parts})


def source_task(source: str = "similar") -> Splits:
    """MNIST-1D digits 0-4 (``"similar"``), or those with shuffled positions
    (``"different"``, :func:`permute_positions`); labels 0-4."""
    source = check_choice("source", source, SOURCES)
    splits = select_classes(load_dataset("mnist1d"), SOURCE_CLASSES)
    return splits if source == "similar" else permute_positions(splits)


def target_task() -> Splits:
    """MNIST-1D digits 5-9, relabelled 0-4: the task transferred to."""
    return select_classes(load_dataset("mnist1d"), TARGET_CLASSES)


def labelled_subset(
    X: torch.Tensor, y: torch.Tensor, per_class: int, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random samples of every class of ``y``: ``(k * per_class, D)``
    and ``(k * per_class,)``, drawn with ``course_lib.device.generator(seed)``.

    Subsets of one seed are nested: the first ``m`` per class of a larger draw
    are the draw of size ``m``.
    """
    per_class = check_int("per_class", per_class, low=1)
    g = generator(seed)
    chosen = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        require(
            len(idx) >= per_class, "per_class", f"<= {len(idx)} (class {c})", per_class
        )
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    order = torch.cat(chosen).sort().values
    return X[order], y[order]


def pretrained_mnist1d(
    source: str = "similar",
    *,
    num_epochs: int = 60,
    lr: float = 3e-3,
    seed: int = 0,
    cache: bool = True,
) -> MNIST1DCNN:
    """The book's "pretrained" network: an MNIST1DCNN trained on a source task.

    Adam (``lr``, batch 64) for ``num_epochs`` epochs on the training split of
    :func:`source_task`; initialisation and batch order come from ``seed``
    (shifted by ``COURSE_LIB_SEED_SHIFT``). With ``cache`` the weights are
    kept in :func:`course_lib.data.cache_dir` under a name that changes with
    every setting, the shifted seed and the torch version, and read back
    instead of retrained; a failed write only warns. The model returned is
    on the CPU, in train mode, with a 5-class head and nothing frozen.
    """
    source = check_choice("source", source, SOURCES)
    num_epochs = check_int("num_epochs", num_epochs, low=1)
    lr = check_real("lr", lr, "(0, inf)")
    seed = check_int("seed", seed, low=0)
    cache = check_bool("cache", cache)
    spec = [source, num_epochs, lr, shifted_seed(seed), torch.__version__]
    return cached_weights(
        _new_cnn(shifted_seed(seed)), f"transfer-mnist1d-{source}", spec,
        lambda model: _train_source(model, source_task(source), num_epochs, lr, seed),
        cache=cache, what="the source model",
    )  # fmt: skip


def _new_cnn(seed: int) -> MNIST1DCNN:
    with torch.random.fork_rng(devices=[]):  # leave the reader's global RNG alone
        torch.manual_seed(seed)
        return MNIST1DCNN(num_classes=len(SOURCE_CLASSES))


def _train_source(model, splits, num_epochs, lr, seed):
    loader = make_loader(  # make_loader shifts the seed itself
        splits.X_train, splits.y_train, batch_size=64, shuffle=True, seed=seed
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(num_epochs):
        for X, y in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(X), y).backward()
            optimizer.step()


def resnet18_weights_path() -> Path:
    """Where torchvision keeps ``ResNet18_Weights.DEFAULT``:
    ``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth`` (``torch.hub.get_dir``)."""
    from urllib.parse import urlparse

    from torchvision.models import ResNet18_Weights

    name = os.path.basename(urlparse(ResNet18_Weights.DEFAULT.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def pretrained_resnet18(num_classes: int | None = None, *, seed: int = 0) -> nn.Module:
    """torchvision's ResNet-18 with its ImageNet weights (``ResNet18_Weights.DEFAULT``).

    The weights are read from :func:`resnet18_weights_path`, and downloaded
    there first if missing. With ``num_classes`` the 1000-class ``fc`` head is
    replaced by a fresh one (:func:`replace_head`, ``seed``). Inputs are
    ``(B, 3, H, W)`` images normalised by ``ResNet18_Weights.DEFAULT.transforms()``.

    Raises :class:`PretrainedUnavailableError`, naming the offline path, when
    the file is missing and cannot be downloaded (no network) or cannot be read.
    """
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, low=1)
    from torchvision.models import ResNet18_Weights, resnet18

    try:
        model = resnet18(weights=ResNet18_Weights.DEFAULT)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        # URLError (no network) is an OSError; a truncated file fails to unpickle
        raise PretrainedUnavailableError(
            "torchvision's pretrained ResNet-18 weights could not be loaded from "
            f"{resnet18_weights_path()}, where they are downloaded on first use "
            f"({type(err).__name__}: {err}). Connect to the internet once (or "
            "copy the file there), or use the offline path: "
            "course_lib.transfer.pretrained_mnist1d(), the network this book "
            "pretrains itself on MNIST-1D."
        ) from err
    if num_classes is not None:
        replace_head(model, num_classes, head="fc", seed=seed)
    return model
