"""Tests for course_lib.pruning: global and layer-wise magnitude masks equal to
torch.nn.utils.prune's (global_unstructured with L1Unstructured, l1_unstructured)
on several shapes and sparsities, fresh and on top of earlier masks; ties at the
threshold; pruned weights staying zero through SGD with momentum and weight
decay and through AdamW; rewinding; random masks; iterative magnitude pruning."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from course_lib import pruning as P

F64 = torch.float64
SPARSITIES = [0.0, 0.1, 0.37, 0.5, 0.8, 0.97, 1.0]


class Mixed(nn.Module):
    """Layers of several shapes: conv 2-D, conv 1-D, two linears."""

    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(2, 3, 3)
        self.conv1 = nn.Conv1d(3, 4, 5)
        self.fc1 = nn.Linear(48, 7)
        self.fc2 = nn.Linear(7, 1)

    def forward(self, x):  # (B, 2, 6, 6)
        h = torch.relu(self.conv2(x)).flatten(2)  # (B, 3, 16)
        h = torch.relu(self.conv1(h)).flatten(1)  # (B, 4 * 12)
        return self.fc2(torch.relu(self.fc1(h)))  # (B, 1)


def mixed(seed=0):
    torch.manual_seed(seed)
    return Mixed().double()


def torch_global(model, amount):
    prune.global_unstructured(
        P.prunable_weights(model), pruning_method=prune.L1Unstructured, amount=amount
    )
    return [m.weight_mask.bool() for m, _ in P.prunable_weights(model)]


def refresh(model):
    """Recompute torch's `weight = weight_orig * weight_mask`, as a forward does."""
    for m, _ in P.prunable_weights(model):
        for hook in m._forward_pre_hooks.values():
            hook(m, None)


def same(masks_a, masks_b):
    return all(torch.equal(a, b) for a, b in zip(masks_a, masks_b, strict=True))


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_global_masks_equal_torch_global_unstructured(sparsity, seed):
    ours_model, theirs_model = mixed(seed), mixed(seed)
    ours = P.global_magnitude_masks(P.prunable_weights(ours_model), sparsity)
    assert same(ours, torch_global(theirs_model, sparsity))
    n = sum(m.numel() for m in ours)
    assert sum(int((~m).sum()) for m in ours) == round(sparsity * n)


def test_global_masks_share_one_threshold_across_layers():
    model = mixed()
    with torch.no_grad():
        model.fc1.weight.mul_(0.01)  # a layer of small weights loses most
    masks = P.global_magnitude_masks(P.prunable_weights(model), 0.5)
    kept = [model.conv2.weight, model.conv1.weight, model.fc1.weight, model.fc2.weight]
    largest_pruned = max(
        w[~m].abs().max() for w, m in zip(kept, masks, strict=True) if (~m).any()
    )
    smallest_kept = min(
        w[m].abs().min() for w, m in zip(kept, masks, strict=True) if m.any()
    )
    assert largest_pruned <= smallest_kept
    pruned = sum(int((~m).sum()) for m in masks)
    assert int((~masks[2]).sum()) >= 0.95 * pruned  # nearly all from fc1
    assert (~masks[0]).float().mean() < 0.1  # the layer-wise rule would take half


@pytest.mark.parametrize(("first", "second"), [(0.2, 0.36), (0.5, 0.9), (0.3, 0.3)])
def test_global_masks_on_top_of_earlier_masks_equal_torch(first, second):
    ours_model, theirs_model = mixed(3), mixed(3)
    ours_pairs = P.prunable_weights(ours_model)
    P.apply_masks(ours_pairs, P.global_magnitude_masks(ours_pairs, first))
    torch_global(theirs_model, first)
    with torch.no_grad():  # move the weights so the second ranking is new
        for a, b in zip(
            ours_model.parameters(), theirs_model.parameters(), strict=True
        ):
            noise = torch.randn_like(a)
            a.add_(noise)
            b.add_(noise)
    refresh(theirs_model)
    n = sum(w.numel() for w in ours_model.parameters() if w.dim() > 1)
    k1, k2 = round(first * n), round(second * n)
    ours = P.global_magnitude_masks(ours_pairs, second)
    theirs = torch_global(theirs_model, (k2 - k1) / (n - k1))
    assert same(ours, theirs)
    earlier = P.current_masks(ours_pairs)
    assert all(
        not (o & ~e).any() for o, e in zip(ours, earlier, strict=True)
    )  # pruned stay


def test_global_masks_ties_at_the_threshold():
    model = mixed()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # magnitudes from {0, 1, 2, 3}: many ties
        for m, _ in P.prunable_weights(model):
            values = torch.randint(0, 4, m.weight.shape, generator=gen).to(F64)
            signs = torch.randint(0, 2, m.weight.shape, generator=gen) * 2 - 1
            m.weight.copy_(values * signs)
    ours = torch.cat(
        [
            m.reshape(-1)
            for m in P.global_magnitude_masks(P.prunable_weights(model), 0.4)
        ]
    )
    theirs = torch.cat([m.reshape(-1) for m in torch_global(copy.deepcopy(model), 0.4)])
    w = torch.cat([m.weight.reshape(-1) for m, _ in P.prunable_weights(model)]).abs()
    threshold = w[~ours].max()
    assert (w == threshold).sum() > (~ours & (w == threshold)).sum()  # a real tie
    assert int((~ours).sum()) == int((~theirs).sum()) == round(0.4 * len(w))
    untied = w != threshold
    assert torch.equal(ours[untied], theirs[untied])
    assert not ours[w < threshold].any() and ours[w > threshold].all()
    tied = torch.nonzero(w == threshold).squeeze(1)
    pruned_tied = tied[~ours[tied]]  # ours breaks ties by position
    assert torch.equal(pruned_tied, tied[: len(pruned_tied)])


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_layerwise_masks_equal_torch_l1_unstructured(sparsity):
    ours_model, theirs_model = mixed(5), mixed(5)
    ours = P.layerwise_magnitude_masks(P.prunable_weights(ours_model), sparsity)
    theirs = []
    for m, name in P.prunable_weights(theirs_model):
        prune.l1_unstructured(m, name, amount=sparsity)
        theirs.append(m.weight_mask.bool())
    assert same(ours, theirs)
    for mask in ours:
        assert int((~mask).sum()) == round(sparsity * mask.numel())


def test_layerwise_on_top_of_earlier_masks():
    model = mixed(6)
    pairs = P.prunable_weights(model)
    first = P.layerwise_magnitude_masks(pairs, 0.5)
    P.apply_masks(pairs, first)
    second = P.layerwise_magnitude_masks(pairs, 0.75)
    for f, s, (m, _) in zip(first, second, pairs, strict=True):
        assert not (s & ~f).any()
        assert int((~s).sum()) == round(0.75 * m.weight.numel())


def train_steps(model, optimizer, steps=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        X = torch.randn(16, 2, 6, 6, generator=gen, dtype=F64)
        loss = F.mse_loss(model(X), X[:, 0, 0, :1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "adamw"],
)
@pytest.mark.parametrize("before", [True, False], ids=["opt-before", "opt-after"])
def test_pruned_weights_stay_zero_through_training(make_opt, before):
    model = mixed(7)
    pairs = P.prunable_weights(model)
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    opt = make_opt(model.parameters()) if before else None
    if before:  # momentum already built up for every weight
        train_steps(model, opt, steps=5, seed=1)
    masks = P.global_magnitude_masks(pairs, 0.8)
    P.apply_masks(pairs, masks)
    opt = opt if before else make_opt(model.parameters())
    kept_before = [P.effective_weight(m).clone() for m, _ in pairs]
    train_steps(model, opt, steps=25, seed=2)
    for (m, _), mask, old in zip(pairs, masks, kept_before, strict=True):
        now = P.effective_weight(m)
        assert torch.all(now[~mask] == 0)
        assert not torch.allclose(now[mask], old[mask])  # the kept ones trained
        assert (m.weight_orig[~mask] != 0).any()  # the optimizer moved the orig
    model(torch.zeros(1, 2, 6, 6, dtype=F64))
    assert all(
        torch.all(m.weight[~k] == 0) for (m, _), k in zip(pairs, masks, strict=True)
    )
    assert P.sparsity(pairs) == pytest.approx(0.8, abs=1e-3)
    P.remove_masks(pairs)
    for (m, _), mask in zip(pairs, masks, strict=True):
        assert isinstance(m.weight, nn.Parameter) and not hasattr(m, "weight_mask")
        assert torch.all(m.weight[~mask] == 0)


def test_effective_weight_is_fresh_after_a_step():
    model = mixed(8)
    pairs = P.prunable_weights(model)
    P.apply_masks(pairs, P.global_magnitude_masks(pairs, 0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train_steps(model, opt, steps=1)  # torch's `weight` is from before the step
    m = model.fc1
    assert torch.equal(P.effective_weight(m), m.weight_orig.detach() * m.weight_mask)
    assert not torch.equal(P.effective_weight(m), m.weight.detach())


def test_rewind_restores_initial_values_and_keeps_masks():
    model = mixed(9)
    init = P.snapshot(model)
    pairs = P.prunable_weights(model)
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    masks = P.global_magnitude_masks(pairs, 0.7)
    P.apply_masks(pairs, masks)
    P.rewind_(model, init)
    names = {id(m): n for n, m in model.named_modules()}
    for (m, _), mask in zip(pairs, masks, strict=True):
        start = init[names[id(m)] + ".weight"]
        assert torch.equal(P.effective_weight(m), start * mask)
        assert torch.equal(m.bias.detach(), init[names[id(m)] + ".bias"])
    # a snapshot of the pruned model rewinds it too (its masks are skipped)
    later = P.snapshot(model)
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1))
    P.rewind_(model, later)
    assert torch.equal(model.fc1.weight_orig.detach(), later["fc1.weight_orig"])


def test_rewind_to_another_initialisation_is_the_rerandomised_control():
    model, other = mixed(10), mixed(11)
    pairs = P.prunable_weights(model)
    masks = P.global_magnitude_masks(pairs, 0.6)
    P.apply_masks(pairs, masks)
    P.rewind_(model, P.snapshot(other))
    assert torch.equal(P.effective_weight(model.fc1), other.fc1.weight * masks[2])


def test_random_masks_like_keep_per_layer_counts():
    pairs = P.prunable_weights(mixed(12))
    masks = P.global_magnitude_masks(pairs, 0.8)
    a = P.random_masks_like(masks, generator=torch.Generator().manual_seed(0))
    b = P.random_masks_like(masks, generator=torch.Generator().manual_seed(0))
    c = P.random_masks_like(masks, generator=torch.Generator().manual_seed(1))
    assert same(a, b) and not same(a, c) and not same(a, masks)
    for m, r in zip(masks, a, strict=True):
        assert r.shape == m.shape and r.dtype == torch.bool
        assert int(r.sum()) == int(m.sum())


def test_iterative_magnitude_pruning_rewinds_and_nests_masks():
    model = mixed(13)
    init = P.snapshot(model)
    starts = []

    def train(net):
        starts.append(P.effective_weight(net.fc1).clone())
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        train_steps(net, opt, steps=10)
        return float(len(starts))

    result = P.iterative_magnitude_pruning(model, train, rounds=3, rate=0.5)
    assert result.scores == [1.0, 2.0, 3.0, 4.0]
    n = sum(m.numel() for m in result.masks[0])
    for r, s in enumerate(result.sparsities):
        assert s == pytest.approx(round((1 - 0.5**r) * n) / n)
    for earlier, later in itertools.pairwise(result.masks):
        assert all(not (b & ~a).any() for a, b in zip(earlier, later, strict=True))
    for start, masks in zip(
        starts, result.masks, strict=True
    ):  # every round starts at init
        assert torch.equal(start, init["fc1.weight"] * masks[2])


def test_imp_masks_are_global_magnitude_masks_of_the_trained_weights():
    model = mixed(14)
    expected = []

    def train(net):
        train_steps(net, torch.optim.SGD(net.parameters(), lr=0.05), steps=5)
        if not expected:  # the dense round: what round 1 must prune
            expected.extend(P.global_magnitude_masks(P.prunable_weights(net), 0.3))
        return 0.0

    result = P.iterative_magnitude_pruning(model, train, rounds=1, rate=0.3)
    assert same(result.masks[1], expected)


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, float("nan"), "0.5"])
def test_bad_sparsity(bad):
    pairs = P.prunable_weights(mixed())
    with pytest.raises(ValueError, match="sparsity must be a real number in"):
        P.global_magnitude_masks(pairs, bad)
    with pytest.raises(ValueError, match="sparsity"):
        P.layerwise_magnitude_masks(pairs, bad)


def test_bad_arguments():
    model = mixed()
    pairs = P.prunable_weights(model)
    with pytest.raises(ValueError, match="parameters must be a non-empty list"):
        P.global_magnitude_masks([], 0.5)
    with pytest.raises(ValueError, match="parameters must be"):
        P.global_magnitude_masks([(model.fc1, "nope")], 0.5)
    with pytest.raises(ValueError, match="masks must be one tensor per weight"):
        P.apply_masks(pairs, [torch.ones(3, dtype=torch.bool)] * len(pairs))
    halves = [torch.full_like(P.effective_weight(m), 0.5) for m, _ in pairs]
    with pytest.raises(ValueError, match="masks must be one tensor .* boolean or 0/1"):
        P.apply_masks(pairs, halves)
    P.apply_masks(pairs, [(h > 0).double() for h in halves])  # torch's 0/1 floats
    assert P.sparsity(pairs) == 0
    P.apply_masks(pairs, P.global_magnitude_masks(pairs, 0.5))
    with pytest.raises(ValueError, match="sparsity must be >= the sparsity already"):
        P.global_magnitude_masks(pairs, 0.3)
    with pytest.raises(ValueError, match="rate must be a real number in"):
        P.iterative_magnitude_pruning(mixed(), lambda m: 0.0, rounds=1, rate=1.0)
    with pytest.raises(ValueError, match="rounds must be a non-negative integer"):
        P.iterative_magnitude_pruning(mixed(), lambda m: 0.0, rounds=-1)
    with pytest.raises(ValueError, match="state must be keys of this model"):
        P.rewind_(mixed(), {"missing.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="state must be fc2.weight of shape"):
        P.rewind_(mixed(), {"fc2.weight": torch.zeros(3)})
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        P.random_masks_like(P.current_masks(pairs), generator=0)
    with pytest.raises(ValueError, match="model must be an nn.Module"):
        P.prunable_weights("model")
