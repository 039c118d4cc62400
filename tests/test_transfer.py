"""Tests for course_lib.transfer: freezing, heads, layer groups, sources, ResNet-18.

The torchvision path is tested on a weights file written here in torchvision's
own format (a ``state_dict`` saved with ``torch.save`` under the name torchvision
expects in ``$TORCH_HOME/hub/checkpoints``), with the download function replaced
by one that fails: no test touches the network.
"""

from __future__ import annotations

import math
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import transfer as T
from course_lib.data import Splits
from course_lib.models import MLP, MNIST1DCNN

torchvision = pytest.importorskip("torchvision")


def cnn(seed=0, num_classes=5, dtype=torch.float32):
    torch.manual_seed(seed)
    return MNIST1DCNN(num_classes=num_classes).to(dtype)


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    """COURSE_LIB_CACHE in one temporary folder for the whole session (MNIST-1D
    is generated there once), so nothing is written under the home folder."""
    folder = tmp_path_factory.getbasetemp() / "transfer-cache"
    monkeypatch.setenv("COURSE_LIB_CACHE", str(folder))
    return folder


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """An empty TORCH_HOME and a download that fails as it does offline."""
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return calls


# ------------------------------------------------------ counting


def test_parameter_counts_follow_requires_grad():
    model = cnn()
    total = sum(p.numel() for p in model.parameters())
    assert T.parameter_counts(model) == (total, total)
    T.freeze(model.features)
    head = model.head.weight.numel() + model.head.bias.numel()
    counts = T.parameter_counts(model)
    assert counts == T.ParameterCount(head, total)
    assert counts.fraction == pytest.approx(head / total)
    assert T.parameter_counts(nn.ReLU()).fraction == 0.0


def test_freeze_is_requires_grad_false_and_frozen_weights_do_not_move():
    model, reference = cnn(), cnn()
    assert T.freeze(model.features) is model.features
    reference.features.requires_grad_(False)
    X, y = torch.randn(16, 40), torch.randint(0, 5, (16,))
    for m in (model, reference):
        before = [p.clone() for p in m.features.parameters()]
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(m(X), y).backward()
            opt.step()
        assert all(p.grad is None for p in m.features.parameters())
        assert all(
            torch.equal(a, b)
            for a, b in zip(before, m.features.parameters(), strict=True)
        )
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
    T.unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())


# ------------------------------------------------------ layers and heads


def test_layer_names_in_forward_order():
    assert T.layer_names(cnn()) == ("features.0", "features.2", "features.4", "head")
    assert T.layer_names(MLP(4, [8], 2)) == ("0", "2")
    resnet = T.layer_names(torchvision.models.resnet18())
    assert resnet[0] == "conv1" and resnet[-1] == "fc" and resnet[-2] == "layer4.1.bn2"
    assert len(resnet) == 20 + 20 + 1 + 0  # 20 convs (3 downsample), 20 BNs, fc


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_replace_head_matches_torch_default_init_drawn_from_the_seed(dtype):
    model = cnn(dtype=dtype)
    T.freeze(model)
    new = T.replace_head(model, 3, seed=7)
    assert model.head is new and new.weight.dtype == dtype
    assert new.weight.shape == (3, 125) and all(
        p.requires_grad for p in new.parameters()
    )
    # torch's own nn.Linear.reset_parameters, fed the same generator
    ref = nn.Linear(125, 3)
    g = torch.Generator().manual_seed(7)
    nn.init.kaiming_uniform_(ref.weight, a=math.sqrt(5), generator=g)
    nn.init.uniform_(ref.bias, -(125**-0.5), 125**-0.5, generator=g)
    torch.testing.assert_close(new.weight, ref.weight.to(dtype), rtol=0, atol=1e-7)
    torch.testing.assert_close(new.bias, ref.bias.to(dtype), rtol=0, atol=1e-7)
    assert model(torch.randn(2, 40, dtype=dtype)).shape == (2, 3)


def test_replace_head_with_a_nested_name_and_bad_names():
    model = nn.Sequential(nn.Linear(4, 6), nn.Sequential(nn.ReLU(), nn.Linear(6, 2)))
    T.replace_head(model, 9, head="1.1")
    assert model(torch.randn(5, 4)).shape == (5, 9)
    with pytest.raises(ValueError, match="head must be the name of a submodule"):
        T.replace_head(model, 2, head="fc")
    with pytest.raises(TypeError, match="head must name an nn.Linear, got ReLU"):
        T.replace_head(model, 2, head="1.0")
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        T.replace_head(model, 0, head="0")


def test_train_last_unfreezes_exactly_the_last_k_layers():
    model = cnn()
    assert T.train_last(model, 1) == ("head",)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "head.weight",
        "head.bias",
    ]
    assert T.train_last(model, 2) == ("features.4", "head")
    expected = sum(
        p.numel() for p in [*model.features[4].parameters(), *model.head.parameters()]
    )
    assert T.parameter_counts(model).trainable == expected
    assert T.train_last(model, None) == T.layer_names(model)
    assert all(p.requires_grad for p in model.parameters())
    for bad in (0, 5, 1.0, True):
        with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\]"):
            T.train_last(model, bad)


@pytest.mark.parametrize(("mode", "layers"), [("probe", 1), ("last", 3), ("all", 4)])
def test_prepare_counts_the_layers_it_trains(mode, layers):
    model = cnn()
    counts = T.prepare(model, 2, mode, k=3, seed=1)
    names = T.layer_names(model)[-layers:]
    expected = sum(
        p.numel() for n in names for p in model.get_submodule(n).parameters()
    )
    assert counts == (expected, sum(p.numel() for p in model.parameters()))
    assert model.head.out_features == 2
    with pytest.raises(
        ValueError, match=r"mode must be one of \('probe', 'last', 'all'\)"
    ):
        T.prepare(model, 2, "head")


# ------------------------------------------------------ parameter groups


def test_param_groups_decay_per_layer_and_leave_out_frozen_weights():
    model = cnn()
    T.train_last(model, 3)
    groups = T.param_groups(model, 0.1, layer_decay=0.5)
    assert [g["name"] for g in groups] == ["features.2", "features.4", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([0.025, 0.05, 0.1])
    assert groups[-1]["params"] == [model.head.weight, model.head.bias]
    optimizer = torch.optim.AdamW(groups)  # torch accepts them, "name" kept
    assert [g["name"] for g in optimizer.param_groups] == [
        "features.2",
        "features.4",
        "head",
    ]
    T.freeze(model)
    with pytest.raises(ValueError, match="no trainable parameters"):
        T.param_groups(model, 0.1)
    for bad in (0.0, -1.0, math.nan, True):
        with pytest.raises(ValueError, match=r"layer_decay must be a real number > 0"):
            T.param_groups(model, 0.1, layer_decay=bad)


def test_param_groups_step_as_one_torch_optimizer_per_layer():
    """SGD with momentum on our groups == a separate torch SGD per layer, each at
    the rate lr * decay**i, in float64 over several steps."""
    torch.manual_seed(0)
    X, y = torch.randn(32, 40, dtype=torch.float64), torch.randint(0, 5, (32,))
    ours, ref = cnn(3, dtype=torch.float64), cnn(3, dtype=torch.float64)
    optimizer = torch.optim.SGD(
        T.param_groups(ours, 0.2, layer_decay=0.3), momentum=0.9
    )
    names = T.layer_names(ref)[::-1]  # head first
    per_layer = [
        torch.optim.SGD(
            ref.get_submodule(n).parameters(), lr=0.2 * 0.3**i, momentum=0.9
        )
        for i, n in enumerate(names)
    ]
    for _ in range(5):
        for m, opts in ((ours, [optimizer]), (ref, per_layer)):
            for o in opts:
                o.zero_grad()
            F.cross_entropy(m(X), y).backward()
            for o in opts:
                o.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    first = next(ours.parameters())
    assert not torch.allclose(first, cnn(3, dtype=torch.float64).features[0].weight)


# ------------------------------------------------------ the linear probe


def test_head_inputs_are_the_flattened_body_output():
    model = cnn().train()
    X = torch.randn(25, 40)
    feats = T.head_inputs(model, X, batch_size=7)
    torch.testing.assert_close(feats, model.features(X.view(-1, 1, 40)).flatten(1))
    assert model.training and not model.head._forward_hooks


def test_linear_probe_is_logistic_regression_on_frozen_features():
    """Training the frozen network's head == training an nn.Linear on
    head_inputs, step for step in float64; the body never moves."""
    torch.manual_seed(1)
    X, y = torch.randn(40, 40, dtype=torch.float64), torch.randint(0, 3, (40,))
    model = cnn(2, dtype=torch.float64)
    T.prepare(model, 3, "probe", seed=4)
    body = [p.clone() for p in model.features.parameters()]
    feats = T.head_inputs(model, X)  # (40, 125), computed once
    linear = nn.Linear(125, 3).double()
    linear.load_state_dict(model.head.state_dict())
    opt_probe = torch.optim.Adam(T.param_groups(model, 0.05))
    opt_linear = torch.optim.Adam(linear.parameters(), lr=0.05)
    for step in range(8):
        idx = torch.arange(step * 5, step * 5 + 5)
        for m, x, o in ((model, X, opt_probe), (linear, feats, opt_linear)):
            o.zero_grad()
            F.cross_entropy(m(x[idx]), y[idx]).backward()
            o.step()
    torch.testing.assert_close(model.head.weight, linear.weight, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.head.bias, linear.bias, rtol=1e-10, atol=1e-12)
    assert all(
        torch.equal(a, b)
        for a, b in zip(body, model.features.parameters(), strict=True)
    )


# ------------------------------------------------------ tasks


def tiny_splits():
    X = torch.arange(60, dtype=torch.float32).view(12, 5)
    y = torch.tensor([0, 1, 2, 3] * 3)
    return Splits(X, y, X[:4], y[:4], X[4:], y[4:], num_classes=4, name="tiny")


def test_select_classes_keeps_and_relabels_in_the_order_given():
    s = T.select_classes(tiny_splits(), (3, 1))
    assert s.num_classes == 2 and s.y_train.tolist() == [1, 0] * 3
    torch.testing.assert_close(s.X_train, tiny_splits().X_train[[1, 3, 5, 7, 9, 11]])
    assert s.y_val.tolist() == [1, 0] and len(s.y_test) == 4
    for bad in ((), (4,), (-1,), "01", (1.0,), (True,)):
        with pytest.raises(ValueError, match=r"classes must be a non-empty sequence "):
            T.select_classes(tiny_splits(), bad)
    with pytest.raises(ValueError, match=r"classes must be distinct, got \(1, 1\)"):
        T.select_classes(tiny_splits(), (1, 1))


def test_permute_positions_is_one_fixed_permutation_of_every_split():
    s, p = tiny_splits(), T.permute_positions(tiny_splits(), seed=3)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(3))
    for a, b in ((s.X_train, p.X_train), (s.X_val, p.X_val), (s.X_test, p.X_test)):
        assert torch.equal(b, a[:, perm])
    assert torch.equal(p.y_train, s.y_train) and not torch.equal(p.X_train, s.X_train)


def test_labelled_subset_is_balanced_nested_and_seeded():
    y = torch.arange(100) % 4
    X = torch.arange(100.0).view(100, 1)
    X5, y5 = T.labelled_subset(X, y, 5, seed=2)
    assert torch.bincount(y5).tolist() == [5] * 4 and torch.equal(
        y[X5.long().flatten()], y5
    )
    X2, _ = T.labelled_subset(X, y, 2, seed=2)
    assert set(X2.flatten().tolist()) < set(X5.flatten().tolist())
    assert not torch.equal(X5, T.labelled_subset(X, y, 5, seed=3)[0])
    with pytest.raises(ValueError, match=r"per_class must be <= 25"):
        T.labelled_subset(X, y, 26)


def test_source_and_target_tasks_split_mnist1d_by_class(cache):
    target, similar = T.target_task(), T.source_task("similar")
    different = T.source_task("different")
    assert target.num_classes == similar.num_classes == 5
    assert set(target.y_train.tolist()) == set(range(5))
    assert len(target.y_train) + len(similar.y_train) == 3500
    assert torch.equal(different.y_train, similar.y_train)
    assert torch.equal(different.X_train.sort(1).values, similar.X_train.sort(1).values)
    assert not torch.equal(different.X_train, similar.X_train)
    with pytest.raises(
        ValueError, match=r"source must be one of \('similar', 'different'\)"
    ):
        T.source_task("same")


# ------------------------------------------------------ the book's pretrained net


def test_pretrained_mnist1d_learns_the_source_and_is_cached(cache, monkeypatch):
    state = torch.random.get_rng_state()
    model = T.pretrained_mnist1d("similar", num_epochs=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    source = T.source_task("similar")
    with torch.no_grad():
        acc = (model(source.X_test).argmax(1) == source.y_test).float().mean()
    assert acc > 0.5  # chance is 0.2
    files = list(cache.glob("transfer-mnist1d-similar-*.pt"))
    assert len(files) == 1

    def no_training(*args):
        raise AssertionError("trained again despite the cache")

    monkeypatch.setattr(T, "_train_source", no_training)
    again = T.pretrained_mnist1d("similar", num_epochs=3)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(AssertionError, match="trained again"):
        T.pretrained_mnist1d("similar", num_epochs=3, seed=1)  # another seed: a miss
    files[0].write_bytes(b"not a checkpoint")
    with pytest.raises(AssertionError, match="trained again"):  # unreadable: retrain
        T.pretrained_mnist1d("similar", num_epochs=3)


def test_pretrained_mnist1d_seed_shift_changes_the_network(cache, monkeypatch):
    a = T.pretrained_mnist1d("different", num_epochs=1, cache=False)
    monkeypatch.setenv("COURSE_LIB_SEED_SHIFT", "1000")
    b = T.pretrained_mnist1d("different", num_epochs=1, cache=False)
    assert not torch.equal(a.head.weight, b.head.weight)
    assert not list(cache.glob("transfer-mnist1d-different-*.pt"))  # cache=False


def test_pretrained_mnist1d_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"source must be one of"):
        T.pretrained_mnist1d("imagenet")
    with pytest.raises(ValueError, match="num_epochs must be a positive integer"):
        T.pretrained_mnist1d(num_epochs=0)
    with pytest.raises(ValueError, match="cache must be True or False"):
        T.pretrained_mnist1d(cache=1)


# ------------------------------------------------------ torchvision's ResNet-18


def test_resnet18_weights_path_is_where_torchvision_looks(no_download, tmp_path):
    path = T.resnet18_weights_path()
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"


def test_pretrained_resnet18_offline_names_the_offline_path(no_download):
    with pytest.raises(T.PretrainedUnavailableError) as info:
        T.pretrained_resnet18()
    message = str(info.value)
    assert "pretrained_mnist1d" in message and "resnet18-f37072fd.pth" in message
    assert "URLError" in message and len(no_download) == 1


def test_pretrained_resnet18_loads_a_local_file_in_torchvision_format(no_download):
    torch.manual_seed(5)
    written = torchvision.models.resnet18().state_dict()
    path = T.resnet18_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(written, path)
    model = T.pretrained_resnet18()
    assert no_download == []  # never asked for the network
    for name, value in model.state_dict().items():
        assert torch.equal(value, written[name]), name
    head = T.pretrained_resnet18(num_classes=3, seed=2)
    assert head.fc.out_features == 3 and torch.equal(
        head.conv1.weight, written["conv1.weight"]
    )
    assert head.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    T.prepare(head, 3, "probe", head="fc")
    assert T.parameter_counts(head).trainable == 512 * 3 + 3
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        T.pretrained_resnet18(num_classes=0)


def test_pretrained_resnet18_with_a_corrupt_file_says_so(no_download):
    path = T.resnet18_weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated")
    with pytest.raises(T.PretrainedUnavailableError, match="pretrained_mnist1d"):
        T.pretrained_resnet18()
    assert no_download == []
