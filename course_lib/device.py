"""Device choice, seeding and determinism.

Every notebook starts with ``device = get_device()`` and ``seed_everything(0)``.
On a laptop or CI machine that gives the CPU; on Colab with a GPU runtime it
gives CUDA, and the same code runs unchanged.

Set the environment variable ``COURSE_LIB_REQUIRE_CUDA=1`` (``make test-gpu``
does) to turn a silent fallback to the CPU into an error, so that a GPU test
run cannot pass without touching the GPU.

Every seed a chapter uses goes through :func:`seed_everything` or
:func:`generator`, which add ``COURSE_LIB_SEED_SHIFT`` (default 0) to it. So
``COURSE_LIB_SEED_SHIFT=1000`` reruns a whole notebook on other seeds
(initialisation, batch order, noise draws; the dataset splits stay fixed), and
``make test-seeds`` does that for every chapter: a hidden check that fails
there had a margin the data do not support.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ._args import check_bool, check_choice, check_int

_DEVICE_CHOICES = ("auto", "cpu", "cuda")
SEED_SHIFT_VARIABLE = "COURSE_LIB_SEED_SHIFT"


def get_device(prefer: str = "auto") -> torch.device:
    """Return the device to train on.

    ``prefer="auto"`` picks CUDA when it is available and the CPU otherwise;
    ``"cpu"`` and ``"cuda"`` force a choice (``"cuda"`` raises if there is no
    GPU rather than quietly running on the CPU).
    """
    check_choice("prefer", prefer, _DEVICE_CHOICES)
    cuda_ok = torch.cuda.is_available()
    if os.environ.get("COURSE_LIB_REQUIRE_CUDA") == "1" and not cuda_ok:
        raise RuntimeError(
            "COURSE_LIB_REQUIRE_CUDA=1 is set but torch sees no CUDA device; "
            "unset it to run on the CPU."
        )
    if prefer == "cuda" and not cuda_ok:
        raise RuntimeError(
            "prefer='cuda' but torch sees no CUDA device; on Colab choose "
            "Runtime > Change runtime type > GPU, or use prefer='auto'."
        )
    if prefer == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if cuda_ok else "cpu")


def seed_shift() -> int:
    """The offset added to every seed: ``$COURSE_LIB_SEED_SHIFT``, default 0."""
    text = os.environ.get(SEED_SHIFT_VARIABLE, "0").strip() or "0"
    try:
        shift = int(text)
    except ValueError:
        shift = -1
    if shift < 0:
        raise ValueError(
            f"{SEED_SHIFT_VARIABLE} must be a non-negative integer, got {text!r}"
        )
    return shift


def shifted_seed(seed: int) -> int:
    """``seed`` plus :func:`seed_shift`; ``seed`` must be a non-negative int."""
    return check_int("seed", seed, low=0) + seed_shift()


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators.

    Returns a fresh ``torch.Generator`` seeded the same way, for code that
    takes an explicit generator (the course prefers those: they make a run's
    randomness independent of what other cells did before). The seed used is
    :func:`shifted_seed` of ``seed``.
    """
    seed = shifted_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`shifted_seed` of ``seed``."""
    return torch.Generator().manual_seed(shifted_seed(seed))


def set_deterministic(enabled: bool = True) -> None:
    """Ask torch for bitwise-reproducible kernels (slower on GPU).

    On CPU our runs are already deterministic for a fixed seed and thread
    count. On CUDA, cuDNN autotuning and atomics in some kernels make results
    vary from run to run; this switches those off. cuBLAS needs the workspace
    setting below *before* its first use, so call this early.
    """
    enabled = check_bool("enabled", enabled)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def describe_environment() -> str:
    """One line naming what produced a result: torch version, device, threads."""
    device = get_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"torch {torch.__version__}, {name}, {torch.get_num_threads()} CPU thread(s)"
