"""Datasets, fixed splits, normalisation statistics and loaders.

The default path is offline: scikit-learn's bundled digits, MNIST-1D generated
by the ``mnist1d`` package (cached on disk so it is made once) and synthetic 2-D
problems. CIFAR-10 and Fashion-MNIST go through the real torchvision classes and
need their files (or the network) to be there.

Shapes: ``X`` is ``(N, D)`` float32, ``y`` is ``(N,)`` int64 class indices.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from ._args import check_bool, check_choice, check_int, check_real
from .device import generator

DATASETS = ("digits", "mnist1d")
PROBLEMS_2D = ("moons", "circles", "spirals", "blobs")
# name -> (torchvision class, folder under root where it keeps its files)
TORCHVISION_DATASETS = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "fashion_mnist": ("FashionMNIST", os.path.join("FashionMNIST", "raw")),
}

# Fixed, so every chapter and lab sees the same split whatever the global seed.
_SPLIT_SEED = 0
_DIGITS_TEST_SIZE = 360
_DEFAULT_VAL_SIZE = {"digits": 360, "mnist1d": 500}
_MNIST1D_KEYS = ("x", "y", "x_test", "y_test", "t")


class DatasetUnavailableError(RuntimeError):
    """A dataset's files are missing and could not be downloaded."""


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tensors is elementwise
class Splits:
    """Fixed, disjoint train / validation / test splits of one dataset.

    ``X_*`` are ``(N_*, num_features)`` float32, ``y_*`` are ``(N_*,)`` int64.
    """

    X_train: Tensor
    y_train: Tensor
    X_val: Tensor
    y_val: Tensor
    X_test: Tensor
    y_test: Tensor
    num_classes: int
    name: str

    @property
    def num_features(self) -> int:
        return self.X_train.shape[1]

    def __repr__(self) -> str:
        return (
            f"Splits(name={self.name!r}, train={len(self.y_train)}, "
            f"val={len(self.y_val)}, test={len(self.y_test)}, "
            f"num_features={self.num_features}, num_classes={self.num_classes})"
        )


def cache_dir() -> Path:
    """Where generated data is cached: ``$COURSE_LIB_CACHE``, else
    ``~/.cache/course_lib``. The folder is created on first write."""
    return _default_cache_dir()


def _default_cache_dir() -> Path:
    # A separate name because load_dataset's `cache_dir` argument hides cache_dir().
    env = os.environ.get("COURSE_LIB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "course_lib"


def load_dataset(
    name: str,
    *,
    val_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Splits:
    """Load an offline dataset as fixed train / val / test splits.

    - ``"digits"``: scikit-learn's 1,797 8x8 digit images, ``X`` is ``(N, 64)``
      with the raw pixel values 0..16 (not scaled: see :func:`standardize`).
      Test is 360 samples, val ``val_size`` (default 360), train the rest.
    - ``"mnist1d"``: the 5,000 MNIST-1D signals, ``X`` is ``(N, 40)``. Test is
      the package's own 1,000 test samples; val is ``val_size`` (default 500)
      drawn from its 4,000 training samples, train the rest.

    The split uses a fixed internal seed, so it does not depend on (or change)
    the global random state; the test split does not depend on ``val_size``.
    ``cache_dir`` is where MNIST-1D is cached (default :func:`cache_dir`).
    """
    check_choice("name", name, DATASETS)
    if name == "digits":
        X_pool, y_pool, X_test, y_test = _digits_arrays()
    else:
        folder = _default_cache_dir() if cache_dir is None else Path(cache_dir)
        arrays = _mnist1d_arrays(folder)
        X_pool, y_pool = arrays["x"], arrays["y"]
        X_test, y_test = arrays["x_test"], arrays["y_test"]
    # at most the pool less one sample, so that a training set is left
    if val_size is None:
        val_size = _DEFAULT_VAL_SIZE[name]
    val_size = check_int("val_size", val_size, low=0, high=len(y_pool) - 1)
    X_train, y_train, X_val, y_val = _split_off(X_pool, y_pool, val_size)
    return Splits(
        *_to_torch(X_train, y_train),
        *_to_torch(X_val, y_val),
        *_to_torch(X_test, y_test),
        num_classes=10,
        name=name,
    )


def _split_off(X: np.ndarray, y: np.ndarray, n: int):
    """Draw ``n`` samples out of ``(X, y)`` with the fixed seed.

    Returns ``(X_rest, y_rest, X_drawn, y_drawn)``; both parts keep the original
    order, so ``n == 0`` returns the input unchanged.
    """
    perm = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    drawn, rest = np.sort(perm[:n]), np.sort(perm[n:])
    return X[rest], y[rest], X[drawn], y[drawn]


def _to_torch(X: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
    """``(N, D)`` and ``(N,)`` arrays -> float32 ``X`` and int64 ``y`` tensors."""
    X = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    return X, torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))


def _digits_arrays():
    """Returns ``(X_pool, y_pool, X_test, y_test)``; ``X`` is ``(N, 64)``."""
    from sklearn.datasets import load_digits  # slow import, needed only here

    digits = load_digits()
    return _split_off(digits.data, digits.target, _DIGITS_TEST_SIZE)


def _mnist1d_arrays(folder: Path) -> dict[str, np.ndarray]:
    """MNIST-1D arrays from the cache in ``folder``, generated on a miss."""
    import mnist1d.data  # imports matplotlib; needed only here

    args = mnist1d.data.get_dataset_args()
    path = folder / _mnist1d_cache_name(args)
    try:
        with np.load(path) as cached:
            return {key: cached[key] for key in _MNIST1D_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # missing or unreadable: it is only a cache, so make it again
    arrays = _generate_mnist1d(args)
    try:
        _save_npz_atomic(path, arrays)
    except OSError as err:  # e.g. a read-only home: still usable, just slower
        warnings.warn(f"could not cache MNIST-1D at {path}: {err}", stacklevel=3)
    return arrays


def _mnist1d_cache_name(args) -> str:
    """A file name that changes when the generator's settings or version do."""
    from importlib.metadata import version

    spec = {k: v for k, v in vars(args).items() if k != "url"}
    spec["mnist1d_version"] = version("mnist1d")
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return f"mnist1d-{digest[:12]}.npz"


def _generate_mnist1d(args) -> dict[str, np.ndarray]:
    # Never mnist1d's get_dataset: it downloads and writes a pickle into the cwd.
    import mnist1d.data

    # make_dataset reseeds the global `random` and `np.random` generators; put
    # them back so loading data never changes the reader's random stream.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = mnist1d.data.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {key: np.asarray(data[key]) for key in _MNIST1D_KEYS}


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temporary file, then rename: a reader (or a second process
    writing the same file) never sees a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # only left over if something failed


@dataclass(frozen=True, eq=False)
class Standardizer:
    """``X -> (X - mean) / std`` with statistics fitted on one split.

    ``mean`` and ``std`` are ``(D,)`` per feature, or scalars (``()``) when
    fitted with ``per_feature=False``.
    """

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, X: Tensor, per_feature: bool = True, eps: float = 1e-8):
        """Statistics of ``X`` (``(N, D)``; pass the *training* split).

        ``std`` is the population standard deviation (as scikit-learn's
        ``StandardScaler``), so the fitted split gets std exactly 1. A std
        below ``eps`` (a constant feature, e.g. an always-blank pixel) is
        replaced by 1: that feature is only centred instead of divided by ~0,
        which would turn it into inf/nan.
        """
        if not X.is_floating_point() or X.ndim == 0 or len(X) == 0:
            raise ValueError(f"X must be a non-empty float tensor, got {X.dtype}")
        per_feature = check_bool("per_feature", per_feature)
        eps = check_real("eps", eps, "[0, inf)")
        if per_feature:
            mean, std = X.mean(dim=0), X.std(dim=0, correction=0)
        else:
            mean, std = X.mean(), X.std(correction=0)
        return cls(mean, torch.where(std < eps, torch.ones_like(std), std))

    def __call__(self, X: Tensor) -> Tensor:
        return (X - self.mean) / self.std


def standardize(splits: Splits, per_feature: bool = True) -> Splits:
    """Standardise all three splits with statistics of ``X_train`` only.

    Fitting on val or test (or on all the data) leaks information about the
    held-out samples into training, and the validation score then flatters
    the model; at deployment there are no test statistics to fit on either.
    """
    scale = Standardizer.fit(splits.X_train, per_feature=per_feature)
    return replace(
        splits,
        X_train=scale(splits.X_train),
        X_val=scale(splits.X_val),
        X_test=scale(splits.X_test),
    )


WHITENING_METHODS = ("pca", "zca")


@dataclass(frozen=True, eq=False)
class Whitener:
    r"""PCA or ZCA whitening with statistics fitted on one split.

    With the mean :math:`\mu` and covariance of the fitted split,

    .. math::
        \Sigma = \frac{1}{N - 1} \sum_{n=1}^N (x_n - \mu)(x_n - \mu)^\top
        = U \Lambda U^\top,

    (eigendecomposition: the columns of the orthogonal :math:`U` are the
    principal directions, :math:`\Lambda = \mathrm{diag}(\lambda_1 \ge \dots
    \ge \lambda_D)` their variances), ``transform`` maps ``x`` to
    :math:`z = W (x - \mu)` with

    .. math::
        W_\text{pca} = (\Lambda + \epsilon I)^{-1/2} U^\top, \qquad
        W_\text{zca} = U (\Lambda + \epsilon I)^{-1/2} U^\top.

    At :math:`\epsilon = 0` both give :math:`W \Sigma W^\top = I`: the fitted
    split comes out uncorrelated with unit variance. PCA whitening expresses
    each sample in the principal axes, largest variance first. ZCA rotates
    back into the input's own coordinates; it is the symmetric one, and of all
    whitening matrices (every :math:`Q W_\text{pca}` with :math:`Q`
    orthogonal) the one whose output is closest to its input, minimising
    :math:`\mathbb{E}\|z - (x - \mu)\|^2` (Kessy, Lewin & Strimmer 2018):
    whitened images still look like images, with their edges enhanced.

    ``eps`` is added to every eigenvalue. A direction of variance
    :math:`\lambda \ll \epsilon` (pixel noise, or exactly 0 for a constant
    pixel) is then scaled by about :math:`1/\sqrt{\epsilon}` instead of
    :math:`1/\sqrt{\lambda}`, which would blow noise up (or divide by 0); its
    whitened variance is :math:`\lambda / (\lambda + \epsilon) < 1`. It is in
    the units of the data's variance (pixels in 0..16 for the digits).

    ``num_components=k`` keeps the ``k`` largest directions: PCA output is
    ``(N, k)``, ZCA's :math:`U_k (\Lambda_k + \epsilon I)^{-1/2} U_k^\top` is
    ``(D, D)`` of rank ``k``, and ``inverse_transform`` returns the projection
    onto those directions (as scikit-learn's ``PCA.inverse_transform``); with
    all ``D`` it is the exact inverse.

    The covariance has the :math:`N - 1` of ``torch.cov`` and scikit-learn's
    ``PCA``, to which the PCA output (at ``eps=0``) is equal up to the sign of
    each component. The signs are fixed as scikit-learn fixes them: the
    largest-magnitude entry of each eigenvector is positive.

    Statistics are float64 (``mean`` ``(D,)``, ``eigenvalues`` ``(k,)``
    descending, ``eigenvectors`` ``(D, k)`` in columns); ``transform``
    computes in float64 and returns the input's dtype.
    """

    mean: Tensor
    eigenvalues: Tensor
    eigenvectors: Tensor
    method: str
    eps: float

    @classmethod
    def fit(
        cls,
        X: Tensor,
        method: str = "zca",
        eps: float = 1e-5,
        num_components: int | None = None,
    ):
        """Mean and covariance eigendecomposition of ``X`` (``(N, D)``, N >= 2;
        pass the *training* split). ``method`` is ``"pca"`` or ``"zca"``."""
        if not X.is_floating_point() or X.ndim != 2 or len(X) < 2:
            raise ValueError(
                "X must be a float tensor of shape (N, D) with N >= 2, got a "
                f"{X.dtype} tensor of shape {tuple(X.shape)}"
            )
        method = check_choice("method", method, WHITENING_METHODS)
        eps = check_real("eps", eps, "[0, inf)")
        width = X.shape[1]
        if num_components is not None:
            num_components = check_int(
                "num_components", num_components, low=1, high=width
            )
        X = X.detach().double()
        cov = torch.cov(X.T).reshape(width, width)  # (D, D); D = 1 gives a scalar
        values, vectors = torch.linalg.eigh(cov)  # ascending
        values, vectors = values.flip(0), vectors.flip(1)  # descending
        values, vectors = values[:num_components], vectors[:, :num_components]
        # scikit-learn's sign rule: the largest |entry| of each direction is > 0
        biggest = vectors.gather(0, vectors.abs().argmax(0, keepdim=True))  # (1, k)
        vectors = vectors * torch.where(biggest < 0, -1.0, 1.0)
        values = values.clamp(min=0)  # round-off makes a zero variance ~ -1e-16
        if eps == 0 and values[-1] <= 0:
            raise ValueError(
                "eps must be > 0 when the covariance of X is singular (a constant "
                "feature, or fewer samples than features), got 0"
            )
        return cls(X.mean(0), values, vectors, method, eps)

    @property
    def num_features(self) -> int:
        """``D``, the width of the data fitted on."""
        return self.eigenvectors.shape[0]

    @property
    def matrix(self) -> Tensor:
        """:math:`W`: ``(k, D)`` for PCA, ``(D, D)`` for ZCA; ``z = W (x - mean)``."""
        scaled = self.eigenvectors / (self.eigenvalues + self.eps).sqrt()  # (D, k)
        return scaled.T if self.method == "pca" else scaled @ self.eigenvectors.T

    def transform(self, X: Tensor) -> Tensor:
        """``(N, D)`` -> ``(N, k)`` for PCA, ``(N, D)`` for ZCA."""
        _check_width("X", X, self.num_features)
        Z = (X.double() - self.mean) @ self.matrix.T
        return Z.to(X.dtype)

    def __call__(self, X: Tensor) -> Tensor:
        return self.transform(X)

    def inverse_transform(self, Z: Tensor) -> Tensor:
        r"""Back to the input space: :math:`x = U (\Lambda + \epsilon I)^{1/2} z
        + \mu` for PCA, with :math:`U^\top z` in place of :math:`z` for ZCA."""
        pca = self.method == "pca"
        _check_width("Z", Z, len(self.eigenvalues) if pca else self.num_features)
        unscale = self.eigenvectors * (self.eigenvalues + self.eps).sqrt()  # (D, k)
        back = unscale if pca else unscale @ self.eigenvectors.T
        return (Z.double() @ back.T + self.mean).to(Z.dtype)


def _check_width(name: str, X: Tensor, width: int) -> None:
    if not X.is_floating_point() or X.ndim != 2 or X.shape[1] != width:
        raise ValueError(
            f"{name} must be a float tensor of shape (N, {width}) (the width the "
            f"whitener was fitted for), got a {X.dtype} tensor of shape "
            f"{tuple(X.shape)}"
        )


def whiten(
    splits: Splits,
    method: str = "zca",
    eps: float = 1e-5,
    num_components: int | None = None,
) -> Splits:
    """Whiten all three splits with a :class:`Whitener` fitted on ``X_train``
    only (see :func:`standardize` for why)."""
    white = Whitener.fit(splits.X_train, method, eps, num_components)
    return replace(
        splits,
        X_train=white(splits.X_train),
        X_val=white(splits.X_val),
        X_test=white(splits.X_test),
    )


def sort_by_label(X: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(X, y)`` reordered by label, ties in their original order (stable).

    Fed to a loader with ``shuffle=False`` this gives the unshuffled-data
    pathology: every batch holds one class, and the loss cycles per epoch.
    """
    _check_same_length(X, y)
    order = torch.sort(y, stable=True).indices
    return X[order], y[order]


def make_loader(
    X: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A loader of ``[X_batch, y_batch]``: ``(B, ...)`` and ``(B,)`` tensors.

    Each batch is one fancy-index of the tensors rather than ``B`` single
    samples collated together, which is several times faster on CPU. The
    order comes from ``course_lib.device.generator(seed)``, not the global
    RNG: the first epoch is ``torch.randperm(N, generator=...)``, each later
    pass over the loader is a new permutation, and a loader rebuilt with the
    same seed replays the same epochs. Iterating never touches the global RNG.
    """
    batch_size = check_int("batch_size", batch_size, low=1)
    shuffle = check_bool("shuffle", shuffle)  # no silent coercion of "no" or 0
    drop_last = check_bool("drop_last", drop_last)
    _check_same_length(X, y)
    dataset = TensorDataset(X, y)
    order_rng = generator(seed)
    if shuffle:
        order = RandomSampler(dataset, generator=order_rng)
    else:
        order = SequentialSampler(dataset)
    batches = BatchSampler(order, batch_size, drop_last)
    # The loader draws a worker base seed per epoch; given no generator it takes
    # it from the global RNG, which would shift the reader's later random draws.
    base_seed_rng = generator(seed)
    return DataLoader(
        dataset, sampler=batches, batch_size=None, generator=base_seed_rng
    )


def make_loaders(
    splits: Splits,
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    eval_batch_size: int = 1000,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """``(train, val, test)`` loaders; only train is shuffled (per ``shuffle``)."""
    eval_batch_size = check_int("eval_batch_size", eval_batch_size, low=1)
    X, y = splits.X_train, splits.y_train
    train = make_loader(X, y, batch_size=batch_size, shuffle=shuffle, seed=seed)
    val = make_loader(
        splits.X_val, splits.y_val, batch_size=eval_batch_size, shuffle=False
    )
    test = make_loader(
        splits.X_test, splits.y_test, batch_size=eval_batch_size, shuffle=False
    )
    return train, val, test


def _check_same_length(X: Tensor, y: Tensor) -> None:
    if len(X) != len(y):
        raise ValueError(
            f"X and y must have the same first dimension, got {len(X)} and {len(y)}"
        )


def make_2d(
    name: str, *, n_samples: int = 500, noise: float = 0.1, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """A synthetic 2-D classification problem: ``X (n, 2)`` float32, ``y (n,)``.

    - ``"moons"``: two interleaved half circles (2 classes).
    - ``"circles"``: a circle inside another, radius ratio 0.5 (2 classes).
    - ``"spirals"``: three interleaved spiral arms (3 classes).
    - ``"blobs"``: three Gaussian blobs centred on the unit circle (3 classes).

    ``noise`` is the std of the Gaussian noise on each point, in the same
    units for all four (at noise 0.1 each lies within about [-1.5, 2.5]^2).
    """
    check_choice("name", name, PROBLEMS_2D)
    n = check_int("n_samples", n_samples, low=1)
    noise = check_real("noise", noise, "[0, inf)")
    seed = check_int("seed", seed, low=0)
    if name == "spirals":
        return _to_torch(*_spirals(n, noise, seed))
    return _to_torch(*_sklearn_2d(name, n, noise, seed))


def _sklearn_2d(name: str, n: int, noise: float, seed: int):
    from sklearn import datasets  # slow import, needed only here

    if name == "moons":
        return datasets.make_moons(n, noise=noise, random_state=seed)
    if name == "circles":
        return datasets.make_circles(n, noise=noise, factor=0.5, random_state=seed)
    angles = 2 * np.pi * np.arange(3) / 3  # blobs: centres on the unit circle
    centers = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (3, 2)
    return datasets.make_blobs(n, centers=centers, cluster_std=noise, random_state=seed)


def _spirals(n: int, noise: float, seed: int, num_arms: int = 3):
    """Arm ``k`` is ``r (cos t, sin t)`` with ``t = 2 pi k / num_arms + 2.5 pi r``:
    each arm turns 1.25 times, so the arms wind around each other."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_arms  # balanced classes
    r = rng.uniform(0.05, 1.0, n)
    t = 2 * np.pi * y / num_arms + 2.5 * np.pi * r
    X = r[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)  # (n, 2)
    X = X + noise * rng.standard_normal((n, 2))
    perm = rng.permutation(n)  # mixed order, like scikit-learn's generators
    return X[perm], y[perm]


def load_torchvision(
    name: str,
    root: str | os.PathLike,
    *,
    train: bool = True,
    download: bool = False,
    transform=None,
):
    """torchvision's own ``CIFAR10`` or ``FashionMNIST`` dataset under ``root``.

    Items are ``(image, label)`` with ``image`` a PIL image unless
    ``transform`` converts it. Raises :class:`DatasetUnavailableError`, naming
    the offline alternatives, when the files are missing and ``download`` is
    False, or when the download fails (e.g. no network).
    """
    check_choice("name", name, tuple(TORCHVISION_DATASETS))
    train = check_bool("train", train)
    download = check_bool("download", download)
    import torchvision  # optional and slow to import: only this path needs it

    class_name, folder = TORCHVISION_DATASETS[name]
    dataset_cls = getattr(torchvision.datasets, class_name)
    try:
        return dataset_cls(root, train=train, download=download, transform=transform)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        where = Path(root) / folder
        raise DatasetUnavailableError(_unavailable(name, where, download, err)) from err


def _unavailable(name: str, where: Path, download: bool, err: Exception) -> str:
    if download:
        what = f"downloading it into {where} failed ({type(err).__name__}: {err})"
    else:
        what = f"its files were not found (or failed their checksum) in {where}"
    return (
        f"{name} is not available: {what}. Pass download=True when online, or use "
        "an offline dataset: load_dataset('mnist1d') or load_dataset('digits')."
    )
