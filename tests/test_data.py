"""Tests for course_lib.data. Nothing here may touch the network: an autouse
fixture makes every socket connection fail, so a missing monkeypatch shows up
as an error instead of a download."""

import collections
import os
import pickle
import random
import socket
import struct
import urllib.error
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from course_lib.data import (
    DatasetUnavailableError,
    Splits,
    Standardizer,
    Whitener,
    cache_dir,
    load_dataset,
    load_torchvision,
    make_2d,
    make_loader,
    make_loaders,
    sort_by_label,
    standardize,
    whiten,
)

SPLIT_NAMES = ("train", "val", "test")


def _block_network(mp):
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests/test_data.py")

    for name in ("connect", "connect_ex"):
        mp.setattr(socket.socket, name, refuse)
    mp.setattr(socket, "getaddrinfo", refuse)
    mp.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    _block_network(monkeypatch)


@pytest.fixture(scope="module")
def mnist1d_run(tmp_path_factory):
    """Generate MNIST-1D once for the module into a fresh cache, recording the
    calls made to mnist1d, the files written and the global RNG state."""
    import mnist1d
    import mnist1d.data

    cache, cwd = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("cwd")
    made, real_make = [], mnist1d.data.make_dataset

    def counting_make(*args, **kwargs):
        made.append(real_make(*args, **kwargs))
        return made[-1]

    def no_get_dataset(*args, **kwargs):
        raise AssertionError("get_dataset downloads and writes into the cwd")

    with pytest.MonkeyPatch.context() as mp:
        _block_network(mp)
        mp.setattr(mnist1d.data, "make_dataset", counting_make)
        mp.setattr(mnist1d.data, "get_dataset", no_get_dataset)
        mp.setattr(mnist1d, "get_dataset", no_get_dataset)
        mp.chdir(cwd)
        np.random.seed(123)
        random.seed(123)
        rng_before = (pickle.dumps(np.random.get_state()), random.getstate())
        splits = load_dataset("mnist1d", cache_dir=cache)
        rng_after = (pickle.dumps(np.random.get_state()), random.getstate())
    return SimpleNamespace(
        splits=splits,
        raw=made[0],
        calls=len(made),
        cache=cache,
        cwd_files=sorted(os.listdir(cwd)),
        rng_before=rng_before,
        rng_after=rng_after,
    )


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _rows(X, y):
    """Multiset of (row bytes, label): compares splits up to order."""
    X = np.asarray(X, dtype=np.float32)
    return collections.Counter(
        (row.tobytes(), int(label)) for row, label in zip(X, np.asarray(y), strict=True)
    )


def _split(splits, part):
    return getattr(splits, f"X_{part}"), getattr(splits, f"y_{part}")


def _assert_splits_equal(a, b):
    for part in SPLIT_NAMES:
        for got, want in zip(_split(a, part), _split(b, part), strict=True):
            assert torch.equal(got, want)


def _assert_disjoint(splits):
    rows = {part: set(_rows(*_split(splits, part))) for part in SPLIT_NAMES}
    assert not rows["train"] & rows["val"]
    assert not rows["train"] & rows["test"]
    assert not rows["val"] & rows["test"]


# ----------------------------------------------------------------- digits


def test_digits_default_splits(digits):
    assert (len(digits.y_train), len(digits.y_val), len(digits.y_test)) == (
        1077,
        360,
        360,
    )
    assert digits.num_classes == 10 and digits.num_features == 64
    for part in SPLIT_NAMES:
        X, y = _split(digits, part)
        assert X.dtype == torch.float32 and y.dtype == torch.int64
        assert X.shape == (len(y), 64)
        assert set(y.tolist()) == set(range(10))
    # raw pixel values 0..16, not scaled
    assert digits.X_train.min() == 0 and digits.X_train.max() == 16
    assert torch.equal(digits.X_train, digits.X_train.round())


def test_digits_splits_are_disjoint_and_cover_the_data(digits):
    from sklearn.datasets import load_digits

    _assert_disjoint(digits)
    bundled = load_digits()
    union = sum((_rows(*_split(digits, p)) for p in SPLIT_NAMES), collections.Counter())
    assert union == _rows(bundled.data, bundled.target)


@pytest.mark.parametrize("val_size, train_size", [(0, 1437), (100, 1337), (1436, 1)])
def test_digits_custom_val_size_keeps_the_test_split(digits, val_size, train_size):
    splits = load_dataset("digits", val_size=val_size)
    assert (len(splits.y_train), len(splits.y_val)) == (train_size, val_size)
    assert splits.X_val.shape == (val_size, 64)
    assert torch.equal(splits.X_test, digits.X_test)
    assert _rows(splits.X_train, splits.y_train) + _rows(
        splits.X_val, splits.y_val
    ) == _rows(digits.X_train, digits.y_train) + _rows(digits.X_val, digits.y_val)


def test_digits_split_ignores_and_keeps_the_global_rng(digits):
    for seed in (1, 2):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        torch_state = torch.get_rng_state()
        np_state, py_state = pickle.dumps(np.random.get_state()), random.getstate()
        splits = load_dataset("digits")
        _assert_splits_equal(splits, digits)
        assert torch.equal(torch.get_rng_state(), torch_state)
        assert pickle.dumps(np.random.get_state()) == np_state
        assert random.getstate() == py_state


@pytest.mark.parametrize("val_size", [-1, 2.5, True, "10", 1437, 5000])
def test_bad_val_size_is_rejected(val_size):
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("digits", val_size=val_size)


def test_unknown_dataset_name_lists_the_accepted_ones():
    with pytest.raises(
        ValueError, match=r"name must be .*digits.*mnist1d.*got 'mnist'"
    ):
        load_dataset("mnist")


def test_splits_repr_is_short_and_frozen(digits):
    text = repr(digits)
    assert "train=1077" in text and "val=360" in text and "test=360" in text
    assert "tensor" not in text and len(text) < 120
    with pytest.raises(AttributeError):
        digits.name = "other"
    assert isinstance(digits, Splits)


# ---------------------------------------------------------------- mnist1d


def test_mnist1d_default_splits_come_from_the_package(mnist1d_run):
    splits, raw = mnist1d_run.splits, mnist1d_run.raw
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (
        3500,
        500,
        1000,
    )
    assert splits.num_classes == 10 and splits.num_features == 40
    for part in SPLIT_NAMES:
        X, y = _split(splits, part)
        assert X.dtype == torch.float32 and y.dtype == torch.int64
        assert X.shape == (len(y), 40)
    _assert_disjoint(splits)
    # test is the package's own test split, in its order
    assert torch.equal(splits.X_test, torch.from_numpy(raw["x_test"]).float())
    assert torch.equal(splits.y_test, torch.from_numpy(raw["y_test"]))
    pool = _rows(splits.X_train, splits.y_train) + _rows(splits.X_val, splits.y_val)
    assert pool == _rows(raw["x"], raw["y"])


def test_mnist1d_val_size(mnist1d_run):
    empty = load_dataset("mnist1d", val_size=0, cache_dir=mnist1d_run.cache)
    assert empty.X_val.shape == (0, 40) and empty.y_val.shape == (0,)
    assert torch.equal(empty.X_train, torch.from_numpy(mnist1d_run.raw["x"]).float())
    small = load_dataset("mnist1d", val_size=200, cache_dir=mnist1d_run.cache)
    assert (len(small.y_train), len(small.y_val)) == (3800, 200)
    # a smaller validation set is part of the default one (nested draws)
    assert set(_rows(small.X_val, small.y_val)) <= set(
        _rows(mnist1d_run.splits.X_val, mnist1d_run.splits.y_val)
    )
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("mnist1d", val_size=4000, cache_dir=mnist1d_run.cache)


def test_mnist1d_generation_is_clean(mnist1d_run):
    assert mnist1d_run.calls == 1
    assert mnist1d_run.cwd_files == []  # nothing written into the cwd
    cached = sorted(p.name for p in mnist1d_run.cache.iterdir())
    assert len(cached) == 1 and cached[0].endswith(".npz")  # no temp file left
    # make_dataset reseeds numpy's and Python's global RNGs; ours restores them
    assert mnist1d_run.rng_before == mnist1d_run.rng_after


def test_mnist1d_second_call_reads_the_cache(mnist1d_run, monkeypatch):
    import mnist1d.data

    calls = []
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda *a: calls.append(a))
    monkeypatch.setenv("COURSE_LIB_CACHE", str(mnist1d_run.cache))
    torch.manual_seed(5)
    np.random.seed(5)
    again = load_dataset("mnist1d")  # cache_dir from the environment
    assert calls == []
    _assert_splits_equal(again, mnist1d_run.splits)


def test_mnist1d_unreadable_cache_is_regenerated(mnist1d_run, tmp_path, monkeypatch):
    import mnist1d.data

    (name,) = [p.name for p in mnist1d_run.cache.iterdir()]
    (tmp_path / name).write_bytes(b"half a file")
    rng = np.random.default_rng(0)
    fake = {
        "x": rng.normal(size=(600, 40)),
        "y": np.arange(600) % 10,
        "x_test": rng.normal(size=(50, 40)),
        "y_test": np.arange(50) % 10,
        "t": np.linspace(0, 1, 40),
    }
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda args: fake)
    splits = load_dataset("mnist1d", cache_dir=tmp_path)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (
        100,
        500,
        50,
    )
    with np.load(tmp_path / name) as cached:
        assert np.array_equal(cached["x"], fake["x"])


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_LIB_CACHE", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"
    monkeypatch.delenv("COURSE_LIB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "course_lib"


# ------------------------------------------------------------ standardize


def test_standardize_uses_training_statistics_only(digits):
    z = standardize(digits)
    X_train = digits.X_train
    varying = X_train.std(dim=0) > 0
    assert (~varying).any()  # digits has always-blank pixels in train
    torch.testing.assert_close(
        z.X_train[:, varying].mean(0),
        torch.zeros(int(varying.sum())),
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(
        z.X_train[:, varying].std(0, correction=0),
        torch.ones(int(varying.sum())),
        atol=1e-4,
        rtol=0,
    )
    mean = X_train.mean(0)
    std = torch.where(varying, X_train.std(0, correction=0), torch.ones(64))
    for part in ("val", "test"):
        X = getattr(digits, f"X_{part}")
        torch.testing.assert_close(getattr(z, f"X_{part}"), (X - mean) / std)
    everything = torch.cat([digits.X_train, digits.X_val, digits.X_test])
    assert (everything.mean(0) - mean).abs().max() > 0.05  # the leak is real
    for part in SPLIT_NAMES:
        assert torch.isfinite(getattr(z, f"X_{part}")).all()
    assert torch.equal(z.y_train, digits.y_train) and z.name == digits.name


def test_standardize_matches_sklearn_standard_scaler(digits):
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(digits.X_train.double().numpy())
    ours = Standardizer.fit(digits.X_train.double())
    expected = scaler.transform(digits.X_test.double().numpy())
    torch.testing.assert_close(ours(digits.X_test.double()), torch.from_numpy(expected))


def test_standardizer_constant_feature_and_scalar_mode():
    X = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    scale = Standardizer.fit(X)
    assert torch.equal(scale.std[1], torch.tensor(1.0))
    assert torch.equal(scale(X)[:, 1], torch.zeros(3))
    scalar = Standardizer.fit(X, per_feature=False)
    assert scalar.mean.shape == () and scalar.std.shape == ()
    torch.testing.assert_close(scalar(X).mean(), torch.tensor(0.0))
    torch.testing.assert_close(scalar(X).std(correction=0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="float"):
        Standardizer.fit(torch.ones(3, 2, dtype=torch.int64))


# ---------------------------------------------------------------- loaders


def _toy(n=10):
    return torch.arange(3.0 * n).view(n, 3), torch.arange(n)


def _epoch(loader):
    """The labels of one pass, checking each X row still matches its y."""
    labels = []
    for X_batch, y_batch in loader:
        assert torch.equal(X_batch, _toy()[0][y_batch])
        labels.append(y_batch)
    return torch.cat(labels)


def test_loader_without_shuffle_keeps_order_and_shapes():
    X, y = _toy()
    loader = make_loader(X, y, batch_size=4, shuffle=False)
    batches = list(loader)
    assert [tuple(xb.shape) for xb, _ in batches] == [(4, 3), (4, 3), (2, 3)]
    assert [yb.dtype for _, yb in batches] == [torch.int64] * 3
    assert torch.equal(_epoch(loader), y)
    dropped = make_loader(X, y, batch_size=4, shuffle=False, drop_last=True)
    assert [len(yb) for _, yb in dropped] == [4, 4]


def test_shuffled_loader_is_seeded_and_moves_on_each_epoch():
    X, y = _toy()
    loader = make_loader(X, y, batch_size=3, shuffle=True, seed=7)
    first, second = _epoch(loader), _epoch(loader)
    for epoch in (first, second):
        assert torch.equal(epoch.sort().values, y)  # each sample exactly once
    assert not torch.equal(first, second)
    # the first epoch is randperm of the seeded generator, whatever the global RNG
    seeded = torch.Generator().manual_seed(7)
    assert torch.equal(first, torch.randperm(10, generator=seeded))
    torch.manual_seed(99)
    replay = make_loader(X, y, batch_size=3, shuffle=True, seed=7)
    assert torch.equal(_epoch(replay), first) and torch.equal(_epoch(replay), second)
    other = make_loader(X, y, batch_size=3, shuffle=True, seed=8)
    assert not torch.equal(_epoch(other), first)


def test_loader_leaves_the_global_rng_alone():
    X, y = _toy()
    state = torch.get_rng_state()
    for shuffle in (False, True):
        _epoch(make_loader(X, y, batch_size=4, shuffle=shuffle))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "4"])
def test_loader_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(*_toy(), batch_size=batch_size, shuffle=False)


@pytest.mark.parametrize("shuffle", ["yes", 1, None])
def test_loader_rejects_non_bool_shuffle(shuffle):
    with pytest.raises(ValueError, match="shuffle"):
        make_loader(*_toy(), batch_size=4, shuffle=shuffle)


def test_loader_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same first dimension"):
        make_loader(torch.zeros(5, 2), torch.zeros(4), batch_size=2, shuffle=False)


def test_make_loaders_shuffles_only_training(digits):
    train, val, test = make_loaders(digits, batch_size=64, seed=3, eval_batch_size=100)
    y_train = torch.cat([yb for _, yb in train])
    assert not torch.equal(y_train, digits.y_train)
    assert torch.equal(y_train.sort().values, digits.y_train.sort().values)
    assert [len(yb) for _, yb in val] == [100, 100, 100, 60]
    assert torch.equal(torch.cat([xb for xb, _ in test]), digits.X_test)
    ordered, _, _ = make_loaders(digits, batch_size=64, shuffle=False)
    assert torch.equal(torch.cat([yb for _, yb in ordered]), digits.y_train)
    no_val = load_dataset("digits", val_size=0)
    assert list(make_loaders(no_val, batch_size=64)[1]) == []


def test_sort_by_label_is_stable():
    X, y = torch.arange(5.0)[:, None], torch.tensor([2, 0, 1, 0, 2])
    X_sorted, y_sorted = sort_by_label(X, y)
    assert y_sorted.tolist() == [0, 0, 1, 2, 2]
    assert X_sorted[:, 0].tolist() == [1.0, 3.0, 2.0, 0.0, 4.0]
    # with many ties an unstable sort (torch.sort's default) scrambles them
    y = torch.randint(0, 3, (5000,), generator=torch.Generator().manual_seed(0))
    index_sorted, y_sorted = sort_by_label(torch.arange(5000), y)
    assert torch.equal(y_sorted, y.sort().values)
    for label in range(3):
        same = index_sorted[y_sorted == label]
        assert torch.equal(same, same.sort().values)


# ------------------------------------------------------------------- 2-D


@pytest.mark.parametrize(
    "name, num_classes", [("moons", 2), ("circles", 2), ("spirals", 3), ("blobs", 3)]
)
def test_make_2d_shapes_classes_and_seeds(name, num_classes):
    X, y = make_2d(name, n_samples=101, seed=1)
    assert X.shape == (101, 2) and X.dtype == torch.float32 and y.dtype == torch.int64
    counts = torch.bincount(y)
    assert len(counts) == num_classes and counts.max() - counts.min() <= 1
    torch.manual_seed(0)
    np.random.seed(0)
    X_again, y_again = make_2d(name, n_samples=101, seed=1)
    assert torch.equal(X, X_again) and torch.equal(y, y_again)
    assert not torch.equal(make_2d(name, n_samples=101, seed=2)[0], X)
    assert not torch.equal(y, y.sort().values)  # classes are mixed, not sorted


@pytest.mark.parametrize("name", ["moons", "circles", "spirals", "blobs"])
def test_make_2d_noise_is_the_std_of_the_added_noise(name):
    # the same seed draws the same numbers, so the difference is the noise alone
    clean, y_clean = make_2d(name, n_samples=2000, noise=0.0, seed=3)
    noisy, y = make_2d(name, n_samples=2000, noise=0.2, seed=3)
    assert torch.equal(y, y_clean)
    assert abs((noisy - clean).std().item() - 0.2) < 0.01


def test_spiral_points_lie_on_their_arm_without_noise():
    X, y = make_2d("spirals", n_samples=300, noise=0.0)
    r = X.double().norm(dim=1)
    angle = torch.atan2(X[:, 1].double(), X[:, 0].double())
    offset = angle - 2 * torch.pi * y / 3 - 2.5 * torch.pi * r
    wrapped = torch.remainder(offset + torch.pi, 2 * torch.pi) - torch.pi
    zeros = torch.zeros(300, dtype=torch.float64)
    torch.testing.assert_close(wrapped, zeros, atol=1e-5, rtol=0)


def test_make_2d_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"name must be .*moons.*spirals.*got 'swirl'"):
        make_2d("swirl")
    for n_samples in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_samples"):
            make_2d("moons", n_samples=n_samples)
    for noise in (-0.1, float("nan"), "a", True):
        with pytest.raises(ValueError, match="noise"):
            make_2d("moons", noise=noise)


# ------------------------------------------------------------- torchvision


def _write_idx(path, array):
    """IDX file as torchvision's MNIST reader parses it: big-endian magic
    0x00000800 | ndim (0x08 = unsigned byte), the dims, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(f">{1 + array.ndim}I", 0x0800 | array.ndim, *array.shape)
    path.write_bytes(header + array.tobytes())


def _write_fashion_mnist(root, rng):
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    written = {}
    for prefix, n in (("train", 5), ("t10k", 3)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written[prefix] = (images, labels)
    return written


@pytest.mark.parametrize("train, prefix", [(True, "train"), (False, "t10k")])
def test_fashion_mnist_reads_real_idx_files(tmp_path, train, prefix):
    images, labels = _write_fashion_mnist(tmp_path, np.random.default_rng(0))[prefix]
    dataset = load_torchvision("fashion_mnist", tmp_path, train=train)
    assert type(dataset).__name__ == "FashionMNIST" and len(dataset) == len(labels)
    for i, (image, label) in enumerate(dataset):
        assert np.array_equal(np.asarray(image), images[i]) and label == labels[i]


def _write_cifar(root, rng, per_batch=2):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        # (N, 3072): the R, G and B 32x32 planes of each image, row-major
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return written


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    """Our files are not the real ones, so only their md5 check is relaxed."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(
        torchvision.datasets.cifar,
        "check_integrity",
        lambda fpath, md5=None: os.path.isfile(fpath),
    )


@pytest.mark.parametrize("train", [True, False])
def test_cifar10_reads_real_pickled_batches(tmp_path, skip_cifar_md5, train):
    written = _write_cifar(tmp_path, np.random.default_rng(1))
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    data = np.concatenate([written[n][0] for n in names])
    labels = [label for n in names for label in written[n][1]]
    dataset = load_torchvision("cifar10", tmp_path, train=train)
    assert type(dataset).__name__ == "CIFAR10" and len(dataset) == len(labels)
    assert dataset.classes[3] == "class3"
    for i, (image, label) in enumerate(dataset):
        hwc = data[i].reshape(3, 32, 32).transpose(1, 2, 0)  # planes -> (H, W, C)
        assert np.array_equal(np.asarray(image), hwc) and label == labels[i]


def test_cifar10_md5_check_is_real(tmp_path):
    _write_cifar(tmp_path, np.random.default_rng(1))
    with pytest.raises(DatasetUnavailableError, match="checksum"):
        load_torchvision("cifar10", tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_missing_files_name_the_offline_datasets(tmp_path, name):
    with pytest.raises(DatasetUnavailableError) as info:
        load_torchvision(name, tmp_path / "nowhere")
    message = str(info.value)
    assert "mnist1d" in message and "digits" in message
    assert str(tmp_path / "nowhere") in message and "download=True" in message
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize(
    "name, cls", [("cifar10", "CIFAR10"), ("fashion_mnist", "FashionMNIST")]
)
def test_failed_download_is_chained_from_url_error(tmp_path, monkeypatch, name, cls):
    import torchvision.datasets

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(getattr(torchvision.datasets, cls), "download", offline)
    with pytest.raises(DatasetUnavailableError, match="mnist1d") as info:
        load_torchvision(name, tmp_path, download=True)
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_cifar10_download_offline_through_torchvision(tmp_path):
    # Only the socket guard stands in for the missing network: torchvision's
    # own download code runs and fails with a URLError.
    with pytest.raises(DatasetUnavailableError, match="digits") as info:
        load_torchvision("cifar10", tmp_path, download=True)
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_fashion_mnist_download_offline_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.mnist

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    mnist = torchvision.datasets.mnist
    monkeypatch.setattr(mnist, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailableError, match="mnist1d") as info:
        load_torchvision("fashion_mnist", tmp_path, download=True)
    # torchvision tries each mirror, catches the URLErrors and raises its own
    # RuntimeError (unchained) that lists them
    assert type(info.value.__cause__) is RuntimeError
    assert "no network" in str(info.value.__cause__)


def test_unknown_torchvision_name(tmp_path):
    with pytest.raises(
        ValueError, match=r"name must be .*cifar10.*fashion_mnist.*'mnist'"
    ):
        load_torchvision("mnist", tmp_path)


def _loader(**changes):
    X, y = torch.arange(20.0).reshape(10, 2), torch.arange(10)
    args = dict(batch_size=4, shuffle=True, seed=0) | changes
    return [b.tolist() for b, _ in make_loader(X, y, **args)]


NUMPY_ARGUMENTS = [
    ("batch_size", lambda v: _loader(batch_size=v), np.int64(4)),
    ("seed", lambda v: _loader(seed=v), np.int64(3)),
    ("shuffle", lambda v: _loader(shuffle=v), np.bool_(True)),
    ("drop_last", lambda v: _loader(drop_last=v), np.bool_(True)),
    ("n_samples", lambda v: make_2d("moons", n_samples=v)[0].tolist(), np.int64(9)),
    ("noise", lambda v: make_2d("blobs", n_samples=9, noise=v)[0].tolist(),
     np.float64(0.2)),
    ("val_size", lambda v: len(load_dataset("digits", val_size=v).y_val),
     np.int64(100)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "call", "value"), NUMPY_ARGUMENTS)
def test_numpy_scalars_pass_bools_and_strings_do_not(name, call, value):
    assert call(value) == call(value.item())  # the same as the Python number
    for bad in (1, "yes") if isinstance(value, np.bool_) else (True, "3"):
        with pytest.raises(ValueError, match=rf"^{name} must be "):
            call(bad)


# ---------------------------------------------------------------- whitening


def _correlated(n=400, d=6, seed=0, dtype=torch.float64):
    """Gaussian samples with a random full-rank covariance and a non-zero mean."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=dtype)
    return torch.randn(n, d, generator=g, dtype=dtype) @ mix + 3.0


def _align_signs(ours, theirs):
    """``ours`` with each column's sign flipped to agree with ``theirs``."""
    return ours * torch.sign((ours * theirs).sum(0))


def _varying_pixels(digits):
    """Digits restricted to the pixels that vary on the training split, float64."""
    varying = digits.X_train.std(0) > 0
    return digits.X_train[:, varying].double(), digits.X_test[:, varying].double()


@pytest.mark.parametrize("num_components", [None, 3])
@pytest.mark.parametrize("data", ["gaussian", "digits"])
def test_pca_whitening_matches_sklearn_up_to_sign(data, num_components, digits):
    from sklearn.decomposition import PCA

    if data == "gaussian":
        X_train, X_test = _correlated(seed=1), _correlated(n=50, seed=2)
    else:
        X_train, X_test = _varying_pixels(digits)
    ours = Whitener.fit(X_train, method="pca", eps=0, num_components=num_components)
    pca = PCA(n_components=num_components, whiten=True).fit(X_train.numpy())
    expected = torch.from_numpy(pca.transform(X_test.numpy()))
    got = ours(X_test)
    assert got.shape == expected.shape and got.dtype == torch.float64
    torch.testing.assert_close(_align_signs(got, expected), expected)
    torch.testing.assert_close(
        ours.eigenvalues, torch.from_numpy(pca.explained_variance_)
    )
    U = ours.eigenvectors  # the documented sign rule: largest |entry| positive
    assert (U.gather(0, U.abs().argmax(0, keepdim=True)) > 0).all()


@pytest.mark.parametrize("method", ["pca", "zca"])
def test_whitened_training_data_has_identity_covariance(method):
    X = _correlated(seed=3)
    assert (torch.cov(X.T) - torch.eye(6)).abs().max() > 1  # far from white before
    Z = Whitener.fit(X, method=method, eps=0)(X)
    torch.testing.assert_close(torch.cov(Z.T), torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(Z.mean(0), torch.zeros(6, dtype=torch.float64))


def test_eps_shrinks_each_variance_to_lambda_over_lambda_plus_eps():
    X, eps = _correlated(seed=4), 0.5
    white = Whitener.fit(X, method="pca", eps=eps)
    lam = torch.linalg.eigvalsh(torch.cov(X.T)).flip(0)
    torch.testing.assert_close(white.eigenvalues, lam)
    torch.testing.assert_close(torch.cov(white(X).T), torch.diag(lam / (lam + eps)))
    # a constant feature: finite output, 0 in the whitened data along it
    X = torch.cat([X, torch.full((len(X), 1), 7.0, dtype=X.dtype)], dim=1)
    Z = Whitener.fit(X, method="pca", eps=1e-3)(X)
    assert torch.isfinite(Z).all() and Z[:, -1].abs().max() < 1e-10


def test_zca_is_symmetric_and_the_whitening_closest_to_its_input():
    X = _correlated(seed=5)
    Xc, cov = X - X.mean(0), torch.cov(X.T)
    zca = Whitener.fit(X, method="zca", eps=0)
    W = zca.matrix
    torch.testing.assert_close(W, W.T)
    torch.testing.assert_close(W @ W, torch.linalg.inv(cov))  # W = cov^(-1/2)
    torch.testing.assert_close(W @ cov @ W.T, torch.eye(6, dtype=torch.float64))

    def distance(matrix):  # mean squared distance between z and x - mu
        return ((Xc @ matrix.T - Xc) ** 2).sum(1).mean()

    best = distance(W)
    pca = Whitener.fit(X, method="pca", eps=0).matrix
    assert distance(pca) > best + 1e-6
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # every other whitening matrix is Q W for an orthogonal Q
        Q = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
        torch.testing.assert_close(
            (Q @ W) @ cov @ (Q @ W).T, torch.eye(6, dtype=torch.float64)
        )
        assert distance(Q @ W) > best + 1e-6


@pytest.mark.parametrize("method", ["pca", "zca"])
def test_inverse_transform_round_trip(method, digits):
    X = _correlated(seed=6)
    white = Whitener.fit(X, method=method, eps=1e-3)
    torch.testing.assert_close(white.inverse_transform(white(X)), X)
    # float32 digits with their constant pixels: back within float32 rounding
    white = Whitener.fit(digits.X_train, method=method)
    back = white.inverse_transform(white(digits.X_test))
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, digits.X_test, atol=1e-4, rtol=0)


def test_inverse_with_fewer_components_matches_sklearn():
    from sklearn.decomposition import PCA

    X = _correlated(seed=7)
    ours = Whitener.fit(X, method="pca", eps=0, num_components=2)
    pca = PCA(n_components=2, whiten=True).fit(X.numpy())
    Z = ours(X)
    expected = pca.inverse_transform(pca.transform(X.numpy()))
    torch.testing.assert_close(ours.inverse_transform(Z), torch.from_numpy(expected))
    zca = Whitener.fit(X, method="zca", eps=0, num_components=2)
    assert zca.matrix.shape == (6, 6)
    assert torch.linalg.matrix_rank(zca.matrix) == 2


def test_whiten_fits_on_the_training_split_only(digits):
    z = whiten(digits, method="zca", eps=0.1)
    white = Whitener.fit(digits.X_train, method="zca", eps=0.1)
    for part in SPLIT_NAMES:
        X = getattr(digits, f"X_{part}")
        torch.testing.assert_close(getattr(z, f"X_{part}"), white(X))
    everything = torch.cat([digits.X_train, digits.X_val, digits.X_test])
    leaky = Whitener.fit(everything, method="zca", eps=0.1)
    assert (leaky(digits.X_test) - z.X_test).abs().max() > 0.05
    pca = whiten(digits, method="pca", num_components=10)
    assert pca.num_features == 10 and pca.X_val.shape == (len(digits.y_val), 10)


def test_whitener_refuses_data_of_another_width():
    white = Whitener.fit(_correlated(seed=8), method="pca", num_components=4)
    with pytest.raises(
        ValueError, match=r"^X must be .*shape \(N, 6\).*got .*\(5, 5\)"
    ):
        white(torch.zeros(5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^X must be .*shape \(N, 6\)"):
        white.transform(torch.zeros(6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^Z must be .*shape \(N, 4\)"):
        white.inverse_transform(torch.zeros(3, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^X must be a float tensor"):
        white(torch.zeros(3, 6, dtype=torch.int64))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "pcaa"}, r"^method must be one of \('pca', 'zca'\), got 'pcaa'"),
        ({"method": None}, r"^method must be one of"),
        ({"eps": -1e-3}, r"^eps must be a real number >= 0, got -0.001"),
        ({"eps": float("nan")}, r"^eps must be a real number >= 0"),
        ({"eps": True}, r"^eps must be a real number >= 0"),
        ({"num_components": 0}, r"^num_components must be an integer in \[1, 6\]"),
        ({"num_components": 7}, r"^num_components must be an integer in \[1, 6\]"),
        ({"num_components": 2.0}, r"^num_components must be an integer"),
    ],
)
def test_whitener_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Whitener.fit(_correlated(seed=9), **kwargs)


def test_whitener_refuses_singular_covariance_without_eps_and_bad_x():
    X = _correlated(n=4, seed=10)  # 4 samples in 6-D: rank 3
    with pytest.raises(ValueError, match=r"^eps must be > 0 when the covariance"):
        Whitener.fit(X, eps=0)
    assert torch.isfinite(Whitener.fit(X, eps=1e-6)(X)).all()
    for bad in (
        torch.zeros(1, 3),
        torch.zeros(5),
        torch.zeros(5, 3, dtype=torch.int64),
    ):
        with pytest.raises(ValueError, match=r"^X must be a float tensor of shape"):
            Whitener.fit(bad)
