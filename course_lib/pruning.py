r"""Magnitude pruning, rewinding and the lottery-ticket procedure.

A *mask* is a boolean tensor the shape of a weight, ``True`` where the weight
is kept. Pruning with sparsity :math:`s` zeroes the fraction :math:`s` of
weights with the smallest magnitude :math:`|w|`:

- :func:`global_magnitude_masks` ranks every weight of every listed layer
  together (one threshold for the whole network), as
  ``prune.global_unstructured(..., pruning_method=prune.L1Unstructured)``;
- :func:`layerwise_magnitude_masks` gives each layer the same sparsity, as
  ``prune.l1_unstructured`` layer by layer.

Layers are named as ``torch.nn.utils.prune`` names them, by a list of
``(module, "weight")`` pairs (:func:`prunable_weights` lists the weights of
a model's ``Linear`` and ``Conv`` layers; biases are not pruned). The
number pruned is ``round(s * n)``, as torch computes it. Ties at the
threshold are broken by position (the earlier flat index is pruned first);
``torch.topk``, which torch uses, breaks them in no documented order, so
with tied magnitudes at the threshold the two masks agree everywhere except
which of the tied weights go (``tests/test_pruning.py``).

:func:`apply_masks` hands the masks to ``prune.custom_from_mask``: the layer
keeps ``weight_orig`` (the trained parameter) and a ``weight_mask`` buffer,
and a forward pre-hook computes ``weight = weight_orig * weight_mask``. The
gradient reaching ``weight_orig`` through the product is zero where the mask
is, so the pruned weights are exactly zero however the optimizer moves
``weight_orig`` (momentum, weight decay). :func:`remove_masks` makes the
zeros permanent (``prune.remove``). A mask does not make a dense layer any
faster: the zeros are still multiplied.

The lottery ticket (Frankle and Carbin 2019): train, prune the smallest
weights, *rewind* the survivors to their initial values (:func:`rewind_`),
retrain, and repeat (:func:`iterative_magnitude_pruning`). Its controls are
the same masks with new random weights (rewind to another initialisation)
and random masks with the same per-layer sparsity (:func:`random_masks_like`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from ._args import check_callable, check_generator, check_int, check_real, require

__all__ = [
    "prunable_weights", "effective_weight", "current_masks",
    "global_magnitude_masks", "layerwise_magnitude_masks", "random_masks_like",
    "apply_masks", "remove_masks", "sparsity", "snapshot", "rewind_",
    "IMPResult", "iterative_magnitude_pruning",
]  # fmt: skip

Pairs = Sequence[tuple[nn.Module, str]]
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` for every Linear and Conv layer of ``model``."""
    require(isinstance(model, nn.Module), "model", "an nn.Module", model)
    return [(m, "weight") for m in model.modules() if isinstance(m, _PRUNABLE)]


def _check_pairs(parameters: Pairs) -> list[tuple[nn.Module, str]]:
    pairs = list(parameters) if isinstance(parameters, (list, tuple)) else None
    ok = bool(pairs) and all(
        isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], nn.Module)
        and isinstance(p[1], str) and _has_weight(*p)
        for p in pairs
    )  # fmt: skip
    accepted = "a non-empty list of (module, name) pairs naming weights"
    require(ok, "parameters", accepted, parameters)
    return pairs


def _has_weight(module: nn.Module, name: str) -> bool:
    return isinstance(getattr(module, name + "_orig", getattr(module, name, None)),
                      torch.Tensor)  # fmt: skip


def effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The weight the layer uses: ``weight_orig * weight_mask`` once pruned.

    Computed afresh, so it is right after an optimizer step too (the
    ``weight`` attribute of a pruned layer is only refreshed by a forward).
    """
    if hasattr(module, name + "_mask"):
        orig, mask = getattr(module, name + "_orig"), getattr(module, name + "_mask")
        return (orig * mask).detach()
    return getattr(module, name).detach()


def current_masks(parameters: Pairs) -> list[torch.Tensor]:
    """The masks in place (``weight_mask != 0``), all ``True`` where unpruned."""
    masks = []
    for module, name in _check_pairs(parameters):
        mask = getattr(module, name + "_mask", None)
        weight = effective_weight(module, name)
        masks.append(torch.ones_like(weight, dtype=torch.bool) if mask is None
                     else mask != 0)  # fmt: skip
    return masks


def _prune_smallest(scores: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask: the dead entries and then the ``k - dead`` smallest alive go.

    ``scores`` and ``alive`` are flat, ``(n,)``. A stable sort on magnitude,
    with the dead entries put first (-1 < any magnitude), so ties are broken
    by position.
    """
    key = torch.where(alive, scores.abs(), torch.full_like(scores, -1.0))  # (n,)
    order = torch.sort(key, stable=True).indices
    keep = torch.ones_like(alive)
    keep[order[:k]] = False
    return keep


def _count(sparsity: float, n: int, alive: torch.Tensor, what: str) -> int:
    k = round(sparsity * n)  # torch's _compute_nparams_toprune
    dead = n - int(alive.sum())
    if k < dead:
        raise ValueError(
            f"sparsity must be >= the sparsity already pruned ({dead}/{n} "
            f"{what}), got {sparsity!r}"
        )
    return k


def global_magnitude_masks(parameters: Pairs, sparsity: float) -> list[torch.Tensor]:
    r"""Masks pruning the fraction ``sparsity`` of all listed weights together.

    With :math:`w` all the weights in one vector of length :math:`n` and
    :math:`k = \mathrm{round}(s\,n)`, the :math:`k` entries with the smallest
    :math:`|w_i|` are pruned, wherever they are: one threshold for the whole
    network, so layers with small weights lose more. Weights already pruned
    (:func:`current_masks`) stay pruned and count towards :math:`k`, so
    ``sparsity`` is the total sparsity after this call, and must be at least
    the current one. Equal to ``prune.global_unstructured`` with
    ``L1Unstructured`` at ``amount = (k - \text{pruned}) / \text{unpruned}``
    (torch's amount is a fraction of the weights still unpruned).
    """
    pairs = _check_pairs(parameters)
    sparsity = check_real("sparsity", sparsity, "[0, 1]")
    weights = [effective_weight(m, name) for m, name in pairs]
    scores = torch.cat([w.reshape(-1) for w in weights])  # (n,)
    alive = torch.cat([m.reshape(-1) for m in current_masks(pairs)])  # (n,)
    keep = _prune_smallest(scores, alive, _count(sparsity, len(scores), alive, "all"))
    sizes = [w.numel() for w in weights]
    return [k.view_as(w) for k, w in zip(keep.split(sizes), weights, strict=True)]


def layerwise_magnitude_masks(parameters: Pairs, sparsity: float) -> list[torch.Tensor]:
    r"""Masks pruning the fraction ``sparsity`` of each listed weight separately.

    Each layer loses its own :math:`\mathrm{round}(s\,n_\ell)` smallest
    :math:`|w|`, so every layer ends with the same sparsity. On unpruned
    layers this is ``prune.l1_unstructured(module, name, amount=sparsity)``.
    """
    pairs = _check_pairs(parameters)
    sparsity = check_real("sparsity", sparsity, "[0, 1]")
    masks = []
    for (module, name), alive in zip(pairs, current_masks(pairs), strict=True):
        w = effective_weight(module, name).reshape(-1)  # (n_l,)
        k = _count(sparsity, len(w), alive.reshape(-1), "in a layer")
        masks.append(_prune_smallest(w, alive.reshape(-1), k).view_as(alive))
    return masks


def random_masks_like(
    masks: Sequence[torch.Tensor], *, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Random masks with the same number kept in each layer as ``masks``.

    Each mask's entries are permuted uniformly at random (``torch.randperm``
    with ``generator``): the control for "which weights" with "how many per
    layer" held fixed.
    """
    check_generator(generator)
    require(len(masks) > 0 and all(isinstance(m, torch.Tensor) for m in masks),
            "masks", "a non-empty sequence of tensors", masks)  # fmt: skip
    out = []
    for mask in masks:
        flat = mask.reshape(-1).bool()  # (n,)
        perm = torch.randperm(len(flat), generator=generator).to(flat.device)
        out.append(flat[perm].view_as(mask))
    return out


def _check_masks(pairs, masks) -> list[torch.Tensor]:
    masks = list(masks) if isinstance(masks, (list, tuple)) else None
    ok = masks is not None and len(masks) == len(pairs) and all(
        isinstance(m, torch.Tensor) and m.shape == effective_weight(*p).shape
        and (m.dtype == torch.bool or bool(((m == 0) | (m == 1)).all()))
        for m, p in zip(masks, pairs, strict=True)
    )  # fmt: skip
    accepted = "one tensor per weight, of its shape, boolean or 0/1"
    require(ok, "masks", accepted, masks)
    return masks


def apply_masks(parameters: Pairs, masks: Sequence[torch.Tensor]) -> None:
    """Prune each weight with its mask, through ``prune.custom_from_mask``.

    A layer pruned before keeps its old zeros too (torch multiplies the
    masks). The parameter object is kept (renamed ``weight_orig``), so an
    optimizer built earlier still updates it; its momentum and weight decay
    move ``weight_orig`` at pruned places, but the layer's weight stays zero.
    """
    pairs = _check_pairs(parameters)
    for (module, name), mask in zip(pairs, _check_masks(pairs, masks), strict=True):
        weight = effective_weight(module, name)  # a CPU mask may prune a GPU weight
        prune.custom_from_mask(module, name, mask=mask.to(weight.device, torch.bool))


def remove_masks(parameters: Pairs) -> None:
    """Make the pruning permanent (``prune.remove``): ``weight`` is a plain
    parameter again, with zeros where the mask was. Unpruned ones are skipped."""
    for module, name in _check_pairs(parameters):
        if hasattr(module, name + "_mask"):
            prune.remove(module, name)


def sparsity(parameters: Pairs) -> float:
    """Fraction of the listed weights that are exactly zero (as the layer uses them)."""
    weights = [effective_weight(m, name) for m, name in _check_pairs(parameters)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model.state_dict()``, e.g. the initial weights to rewind to."""
    require(isinstance(model, nn.Module), "model", "an nn.Module", model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def rewind_(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Set ``model``'s weights to ``state`` (from :func:`snapshot`), masks kept.

    A key ``"0.weight"`` of an unpruned snapshot goes to ``"0.weight_orig"``
    once that layer is pruned, so the surviving weights get their values of
    then and the pruned ones stay zero. ``state`` taken at initialisation is
    Frankle and Carbin's rewind; one taken after a few hundred steps is the
    "late rewinding" of Frankle et al. (2020); one from a differently seeded
    model is the re-randomised control.
    """
    current = model.state_dict()  # tensors share storage with the model's
    require(isinstance(state, dict), "state", "a dict from snapshot(model)", state)
    for key, value in state.items():
        if key.endswith("_mask"):
            continue  # a snapshot of a pruned model: keep today's masks
        target = key if key in current else key + "_orig"
        require(target in current, "state", f"keys of this model (no {key!r})", key)
        require(
            current[target].shape == value.shape,
            "state",
            f"{key} of shape {tuple(current[target].shape)}",
            tuple(value.shape),
        )
        current[target].copy_(value)
    return model


@dataclass
class IMPResult:
    """One iterative-magnitude-pruning run: round ``r`` has ``sparsities[r]``,
    ``scores[r]`` (what ``train`` returned) and ``masks[r]`` (CPU, bool).
    Round 0 is the dense network."""

    sparsities: list[float]
    scores: list[float]
    masks: list[list[torch.Tensor]]


def iterative_magnitude_pruning(
    model: nn.Module,
    train: Callable[[nn.Module], float],
    *,
    rounds: int,
    rate: float = 0.2,
    parameters: Pairs | None = None,
    rewind_to: dict[str, torch.Tensor] | None = None,
) -> IMPResult:
    r"""Train, prune ``rate`` of the surviving weights globally, rewind, repeat.

    Round :math:`r` has sparsity :math:`1 - (1 - \text{rate})^r`:

    1. ``train(model)`` (it builds its own optimizer from
       ``model.parameters()`` and returns a score, e.g. test accuracy);
    2. :func:`global_magnitude_masks` of the trained weights at the next
       sparsity, :func:`rewind_` to ``rewind_to`` (default: ``model``'s
       weights when this is called, its initialisation) and
       :func:`apply_masks`;

    for ``rounds`` rounds after the dense one. ``model`` ends pruned, rewound
    and trained at the last sparsity.
    """
    check_callable("train", train)
    rounds = check_int("rounds", rounds, low=0)
    rate = check_real("rate", rate, "(0, 1)")
    pairs = prunable_weights(model) if parameters is None else _check_pairs(parameters)
    start = snapshot(model) if rewind_to is None else rewind_to
    result = IMPResult([], [], [])
    for r in range(rounds + 1):
        if r > 0:
            target = 1 - (1 - rate) ** r
            masks = global_magnitude_masks(pairs, target)
            rewind_(model, start)
            apply_masks(pairs, masks)
        result.scores.append(float(train(model)))
        masks = [m.cpu() for m in current_masks(pairs)]
        kept = sum(int(m.sum()) for m in masks)
        result.sparsities.append(1 - kept / sum(m.numel() for m in masks))
        result.masks.append(masks)
    return result
