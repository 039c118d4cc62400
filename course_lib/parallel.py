r"""Data-parallel training with ``torch.distributed``, and what it stands for.

Data parallelism keeps a full copy of the model on each of :math:`K` workers,
gives each worker its own shard of every batch, and averages the gradients
before every step, so all copies take the same step:

.. math:: g = \frac{1}{K} \sum_{k=1}^{K} g_k, \qquad
    g_k = \nabla_\theta \frac{1}{B} \sum_{i \in \mathcal{B}_k} \ell_i(\theta)

With equal shards of size :math:`B` this is the gradient of the mean loss over
the global batch of :math:`KB` samples: :math:`K` workers on batches of
:math:`B` take the same steps as one worker on batches of :math:`KB`.

- :func:`launch` runs a function in ``world_size`` new processes joined in a
  process group (a notebook's way to run a small multi-process experiment);
  ``torchrun --nproc_per_node=2 -m course_lib.parallel`` is the production way
  (:func:`main`).
- :func:`average_gradients` is the all-reduce that ``DistributedDataParallel``
  does for us (DDP overlaps it with the backward pass, bucket by bucket).
- :func:`accumulate_gradients` is the single-device equivalent: micro-batches
  one after another instead of side by side.
- :func:`scaled_lr` and :func:`warmup_linear_scaling` are the linear scaling
  rule with gradual warm-up of Goyal et al. (2017).

Nothing is initialised at import time. The workers of :func:`launch` are fresh
interpreters (the ``spawn`` start method, the same on Linux, macOS and
Windows); the function and its arguments travel to them with ``cloudpickle``,
so a function defined in a notebook cell works as well as one from a module.
"""

from __future__ import annotations

import argparse
import os
import pickle
import queue
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import cloudpickle
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from course_lib._args import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_int_sequence,
    check_real,
    set_fields,
)
from course_lib.device import shifted_seed
from course_lib.schedules import Constant, Warmup

__all__ = [
    "AllReduceBatchNorm", "DDPConfig", "accumulate_gradients", "average_gradients",
    "backend_for", "launch", "main", "scaled_lr", "to_sync_batchnorm", "train_ddp",
    "warmup_linear_scaling", "WorkerError", "WorkerTimeout", "WorkerDied",
]  # fmt: skip

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def backend_for(device: torch.device | str) -> str:
    """The collective backend for ``device``: ``"nccl"`` for CUDA, else ``"gloo"``."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _default_device(local_rank: int, local_world_size: int) -> torch.device:
    # NCCL needs one GPU per process; with fewer GPUs than processes, use gloo
    if torch.cuda.is_available() and local_world_size <= torch.cuda.device_count():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _group_device() -> torch.device:
    """The device this process's group communicates on (set up by the caller)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------- launching


def _free_port() -> int:
    # Port 0 asks the OS for a free port; it could be taken again before the
    # workers bind it, a race that is harmless on a teaching machine.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# What the fork server imports once: torch, and the dynamo compiler that
# DistributedDataParallel imports when first built (3 s on its own, measured).
_PRELOAD = ["torch", "torch.distributed", "torch._dynamo", "cloudpickle", __name__]


def _context():
    """Where workers come from: forked from a server that imported torch once.

    A fork of that server starts in a fraction of a second, where a fresh
    interpreter spends seconds importing torch (measured: 0.15 s against 7 s
    for 2 workers on a loaded 2-core CPU). The server never runs torch code,
    so no threads or CUDA state are forked. Where the OS has no fork server
    (Windows), every worker is a fresh interpreter.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _worker(rank, world_size, port, payload, results) -> None:
    """Body of one spawned process: join the group, run ``fn``, report back."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # K processes share the cores; no oversubscription
    try:
        fn, args = pickle.loads(payload)  # cloudpickle's output is plain pickle
        device = _default_device(rank, world_size)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = backend_for(device)
        dist.init_process_group(backend, rank=rank, world_size=world_size)
        # Pickling here copies tensors into the message; the queue's own
        # pickler would share their memory, which dies with this process.
        message = ("ok", cloudpickle.dumps(fn(rank, world_size, *args)))
    except BaseException as err:  # noqa: B036 - report anything, the parent decides
        kind = (type(err).__name__, str(err)[:2000], traceback.format_exc())
        message = ("error", kind)
    results.put((rank, *message))  # before cleanup, which may block or fail
    results.close()
    results.join_thread()  # in the pipe before peers see this process go
    if dist.is_initialized():
        dist.destroy_process_group()


def _stop(processes) -> None:
    """Terminate, then kill, every process that is still alive, and reap it."""
    processes = [p for p in processes if p.pid is not None]  # started ones
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()


class WorkerError(RuntimeError):
    """A worker of :func:`launch` raised: which rank, what it raised, where.

    ``rank``; ``type_name`` and ``message``, the worker's exception type and
    text (e.g. ``"NotImplementedError"``); ``traceback``, its formatted
    traceback; ``others``, the ranks that failed after it (usually because
    their peer was gone).
    """

    def __init__(self, rank: int, type_name: str, message: str, traceback: str,
                 others: tuple = ()):  # fmt: skip
        also = f" (then rank {', '.join(map(str, others))})" if others else ""
        super().__init__(
            f"launch: worker rank {rank} failed{also}: {type_name}: {message}\n"
            f"{traceback}"
        )
        self.rank, self.type_name, self.message = rank, type_name, message
        self.traceback, self.others = traceback, tuple(others)


class WorkerTimeout(WorkerError):
    """A worker had not finished after ``launch``'s ``timeout`` seconds."""


class WorkerDied(WorkerError):
    """A worker exited without reporting (segfault, out of memory, os._exit)."""


def _died_silently(processes, done: dict, errors: dict) -> dict:
    # A worker that reported has flushed its message before exiting, so a dead
    # worker without a message died hard (segfault, out of memory, os._exit).
    return {
        rank: ("WorkerDied", f"exited with code {p.exitcode} without reporting", "")
        for rank, p in enumerate(processes)
        if rank not in done and rank not in errors and p.exitcode not in (None, 0)
    }


def _collect(processes, results, timeout: float) -> tuple[dict, dict]:
    """Wait for every rank's message; stop at the first error or the timeout.

    Errors come back in order of likely cause: workers that died without a
    word, then the reported errors in order of arrival (a worker that raises
    reports before its peers notice it is gone).
    """
    done, errors = {}, {}
    deadline = time.monotonic() + timeout
    while len(done) < len(processes) and not errors:
        try:
            rank, status, payload = results.get(timeout=0.05)
            (done if status == "ok" else errors)[rank] = payload
            continue
        except queue.Empty:
            pass
        if results.empty():
            errors.update(_died_silently(processes, done, errors))
        if time.monotonic() > deadline:
            late = [r for r in range(len(processes)) if r not in done]
            errors.update(
                {r: ("WorkerTimeout", f"timed out after {timeout} s", "") for r in late}
            )
    # Once one worker fails its peers fail too ("connection reset by peer"):
    # give the cause a moment to arrive or to show as a dead process.
    time.sleep(0.2 if errors else 0)
    while not results.empty():
        rank, status, payload = results.get()
        if status == "error":
            errors[rank] = payload
    return done, {**_died_silently(processes, done, errors), **errors}


def launch(fn: Callable, world_size: int, *args, timeout: float = 120) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new processes.

    Each worker sets ``MASTER_ADDR``/``MASTER_PORT`` (a free port on this
    machine), calls ``dist.init_process_group`` (NCCL with one GPU per rank
    when there are enough GPUs, otherwise gloo on CPU), runs ``fn``, and
    destroys the group.
    Returns ``[result of rank 0, ..., result of rank world_size - 1]``; the
    results travel back pickled, so they must be picklable (tensors are).

    If a worker raises, or has not finished after ``timeout`` seconds, every
    worker is stopped at once (its peers may be blocked in a collective that
    will never complete) and a :class:`WorkerError` (a ``RuntimeError``;
    :class:`WorkerTimeout` or :class:`WorkerDied` for those cases) gives the
    failing rank, its exception type and message, and its traceback. No
    process outlives the call. ``fn`` may be defined in a
    notebook: ``cloudpickle`` sends functions of ``__main__`` by value (with
    the globals they use) and functions of modules by name; the module must
    then be importable in the workers.
    """
    world_size = check_int("world_size", world_size, low=1)
    timeout = check_real("timeout", timeout, "(0, inf]")  # inf: wait for ever
    check_callable("fn", fn)
    payload = cloudpickle.dumps((fn, args))
    ctx = _context()
    results = ctx.Queue()
    port = _free_port()
    processes = [
        ctx.Process(target=_worker, args=(r, world_size, port, payload, results))
        for r in range(world_size)
    ]
    try:
        for p in processes:
            p.start()
        done, errors = _collect(processes, results, timeout)
    finally:
        _stop(processes)
        results.close()
        results.join_thread()
    if errors:  # the first is the likely cause
        first, *others = errors
        type_name, message, trace = errors[first]
        kind = {"WorkerTimeout": WorkerTimeout, "WorkerDied": WorkerDied}
        raise kind.get(type_name, WorkerError)(
            first, type_name, message, trace, tuple(others)
        )
    return [pickle.loads(done[r]) for r in range(world_size)]


# ------------------------------------------------------- gradient arithmetic


def average_gradients(model: nn.Module) -> None:
    r"""Average every parameter's gradient over the workers, in place.

    .. math:: g \leftarrow \frac{1}{K} \sum_{k=1}^{K} g_k

    One ``all_reduce`` (sum) per parameter, then a division by :math:`K`, the
    world size: what ``DistributedDataParallel`` does during ``backward``,
    written out after it. Call it between ``loss.backward()`` and
    ``optimizer.step()`` on every worker; every worker must hold gradients for
    the same parameters, or the collectives do not match up and hang.
    """
    world_size = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world_size


def accumulate_gradients(
    model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor,
    micro_batches: int,
) -> float:  # fmt: skip
    r"""Back-propagate the batch in ``micro_batches`` pieces; return its mean loss.

    The batch of :math:`N` samples is split into chunks :math:`C_j` as equal as
    ``torch.tensor_split`` makes them, and each chunk's mean loss is scaled by
    :math:`|C_j| / N` before ``backward``, so the accumulated gradient is that
    of the mean loss over the whole batch, even when the sizes differ:

    .. math:: \sum_j \frac{|C_j|}{N} \nabla \frac{1}{|C_j|} \sum_{i \in C_j}
        \ell_i = \nabla \frac{1}{N} \sum_{i=1}^{N} \ell_i

    Memory holds one chunk's activations at a time. ``loss_fn`` must return
    the *mean* loss of its chunk (the default reduction). Gradients are added
    to ``.grad``: the caller zeroes them before and steps the optimizer after.
    Under DDP, wrap all but the last chunk in ``model.no_sync()`` to all-reduce
    once per batch. Models with batch statistics (batch norm) see smaller
    batches, so they are not exactly equivalent.
    """
    n = len(X)  # at most one chunk per sample
    micro_batches = check_int("micro_batches", micro_batches, low=1, high=n)
    total = 0.0
    for X_chunk, y_chunk in zip(
        X.tensor_split(micro_batches), y.tensor_split(micro_batches), strict=True
    ):
        weight = len(X_chunk) / n
        loss = loss_fn(model(X_chunk), y_chunk)
        (loss * weight).backward()
        total += loss.item() * weight
    return total


# ------------------------------------------------ learning rate and batch size


def scaled_lr(base_lr: float, base_batch_size: int, batch_size: int) -> float:
    r"""The linear scaling rule (Goyal et al., 2017).

    .. math:: \eta = \eta_{\mathrm{base}} \cdot B / B_{\mathrm{base}}

    A batch :math:`k` times larger averages :math:`k` times as many gradients
    per step; taking :math:`k` times fewer steps, each :math:`k` times larger,
    approximately follows the small-batch trajectory while the gradient
    changes little over :math:`k` small steps, which fails early in training
    (hence warm-up) and for very large batches (the paper: beyond ~8k images).
    """
    base_lr = check_real("base_lr", base_lr, "(0, inf)")
    base_batch_size = check_int("base_batch_size", base_batch_size, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    return float(base_lr * batch_size / base_batch_size)


def warmup_linear_scaling(
    base_lr: float, base_batch_size: int, batch_size: int, warmup_steps: int,
    schedule: Callable[[int], float] | None = None,
) -> tuple[float, Warmup]:  # fmt: skip
    r"""Scaled lr and gradual warm-up to it: ``(lr, schedule)``.

    ``lr`` is :func:`scaled_lr`; the schedule starts at the factor
    :math:`B_{\mathrm{base}} / B`, that is at the small-batch rate
    :math:`\eta_{\mathrm{base}}`, rises linearly to 1 (the scaled rate) over
    ``warmup_steps`` steps, then follows ``schedule`` (default
    :class:`~course_lib.schedules.Constant`). Goyal et al. (2017) warm up over
    5 epochs. Use as ``LambdaLR(SGD(params, lr=lr), schedule)``.
    """
    lr = scaled_lr(base_lr, base_batch_size, batch_size)
    # warm-up rises from the base rate, so the batch may not be smaller
    check_int("batch_size", batch_size, low=base_batch_size)
    start = base_batch_size / batch_size
    return lr, Warmup(schedule or Constant(), warmup_steps, start_factor=start)


def to_sync_batchnorm(model: nn.Module, *, by_hand: bool = False) -> nn.Module:
    """Replace every ``BatchNorm*d`` by ``SyncBatchNorm``, which DDP then syncs.

    Under DDP each worker's batch norm normalises with the mean and variance of
    its *own* shard (B samples), not of the global batch (KB samples): with
    small per-worker batches the statistics are noisy and training differs
    from one process on the global batch. ``SyncBatchNorm`` all-reduces the
    statistics in every forward pass (a cost in communication) so they are
    those of the global batch. It matters when per-worker batches are small
    (detection, segmentation: a few images per GPU); with 32+ samples per
    worker the per-worker statistics are usually fine (Goyal et al. keep them
    per worker on purpose). Convert before wrapping in DDP.

    torch's ``SyncBatchNorm`` only runs on GPUs (on CPU it raises a
    ``ValueError`` in training). ``by_hand=True`` converts to
    :class:`AllReduceBatchNorm` instead, which computes the same statistics
    with two differentiable all-reduces and runs on any backend.
    """
    if not check_bool("by_hand", by_hand):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, _BatchNorm) and not isinstance(model, AllReduceBatchNorm):
        return AllReduceBatchNorm.from_batchnorm(model)
    for name, child in model.named_children():
        model.add_module(name, to_sync_batchnorm(child, by_hand=True))
    return model


class _AllReduceSum(torch.autograd.Function):
    r"""``all_reduce`` (sum) that autograd can differentiate.

    Forward: :math:`s = \sum_k t_k` on every worker. Each worker's loss
    depends on :math:`s`, and the total loss is :math:`\sum_j L_j`, so
    :math:`\partial L / \partial t_k = \sum_j \partial L_j / \partial s`:
    the backward pass is an all-reduce (sum) of the incoming gradients.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


class AllReduceBatchNorm(_BatchNorm):
    r"""Batch norm over the global batch, with the statistics all-reduced by hand.

    In training, with a process group of :math:`K > 1` workers, the mean and
    variance of channel :math:`c` are those of all :math:`N = \sum_k n_k`
    samples (and positions) of the global batch:

    .. math:: \mu_c = \frac{1}{N} \sum_k \sum_{i \in k} x_{ic}, \qquad
        \sigma_c^2 = \frac{1}{N} \sum_k \sum_{i \in k} (x_{ic} - \mu_c)^2

    Each sum is one ``all_reduce`` of a vector of :math:`C` numbers (plus the
    count), made differentiable by ``_AllReduceSum``: the backward pass
    all-reduces the gradients of the sums, so every worker's input gradient is
    that of the global batch. This is
    what ``nn.SyncBatchNorm`` does with fused CUDA kernels; the result is the
    output of one process running ``BatchNorm`` on the concatenated batch.
    Outside training, or without a group of several workers, it is plain
    batch norm. Inputs are ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``, ...
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected input of 2 or more dims, got {input.dim()}")

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm) -> AllReduceBatchNorm:
        """A copy of ``bn`` (settings, parameters, running statistics)."""
        new = cls(
            bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats
        )
        like = bn.weight if bn.weight is not None else bn.running_mean
        if like is not None:
            new = new.to(like.device, like.dtype)
        new.load_state_dict(bn.state_dict())
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        synced = (
            self.training and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1
        )  # fmt: skip
        if not synced:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]  # every dim but the channels
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = input.new_tensor([input.numel() / input.shape[1]])
        # two passes (mean, then squared deviations): stabler than E[x^2] - mu^2
        sums = _AllReduceSum.apply(torch.cat([input.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = input - mean.reshape(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.item())
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean, var, n: float) -> None:
        self.num_batches_tracked += 1
        factor = self.momentum
        if factor is None:  # a cumulative average, as in torch
            factor = 1.0 / self.num_batches_tracked.item()
        unbiased = var * n / max(n - 1, 1)
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(unbiased, factor)


# ------------------------------------------------------- training with DDP


@dataclass(frozen=True)
class DDPConfig:
    """Settings for :func:`train_ddp`; ``batch_size`` is per worker.

    The global batch is ``batch_size * world_size``.
    """

    dataset: str = "mnist1d"
    hidden: tuple[int, ...] = (100,)
    batch_size: int = 32
    lr: float = 0.1
    epochs: int = 1
    seed: int = 0
    float64: bool = False
    checkpoint: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        from course_lib.data import DATASETS  # keeps import of this module light

        set_fields(
            self, dataset=check_choice("dataset", self.dataset, DATASETS),
            hidden=check_int_sequence("hidden", self.hidden, low=1),
            batch_size=check_int("batch_size", self.batch_size, low=1),
            lr=check_real("lr", self.lr, "(0, inf)"),
            epochs=check_int("epochs", self.epochs, low=1),
            seed=check_int("seed", self.seed, low=0),
            float64=check_bool("float64", self.float64),
        )  # fmt: skip


def _shard_loader(X, y, rank, world_size, config: DDPConfig):
    # Rank r gets samples r, r + K, r + 2K, ... of each epoch's permutation, so
    # batch b on the K ranks together is block b of that permutation: exactly
    # batch b of one process with batch_size * K and the same permutation.
    sampler = DistributedSampler(
        TensorDataset(X, y), num_replicas=world_size, rank=rank,
        shuffle=True, seed=shifted_seed(config.seed), drop_last=True,
    )  # fmt: skip
    return sampler, DataLoader(sampler.dataset, config.batch_size, sampler=sampler)


def train_ddp(rank: int, world_size: int, config: DDPConfig) -> dict | None:
    """Train an MLP with ``DistributedDataParallel`` on this rank's shard.

    Call it in a process group that is already initialised (:func:`launch`,
    :func:`main`). All ranks start from the same seed (DDP also broadcasts
    rank 0's parameters). Plain SGD on the mean cross-entropy. Rank 0 prints
    the mean batch loss of its own shard per epoch, saves ``config.checkpoint``
    (``{"model": state_dict, "config": dict}``) if given, and returns
    ``{"losses": [...], "state_dict": ...}``; the other ranks return ``None``.
    """
    from course_lib.data import load_dataset  # keeps import of this module light
    from course_lib.models import MLP

    device = _group_device()
    dtype = torch.float64 if config.float64 else torch.float32
    splits = load_dataset(config.dataset, cache_dir=config.cache_dir)
    torch.manual_seed(shifted_seed(config.seed))
    model = MLP(splits.num_features, list(config.hidden), splits.num_classes)
    model = model.to(device, dtype)
    device_ids = None if device.type == "cpu" else [device.index]
    ddp = DistributedDataParallel(model, device_ids=device_ids)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=config.lr)
    sampler, loader = _shard_loader(
        splits.X_train.to(dtype), splits.y_train, rank, world_size, config
    )
    losses = []
    for epoch in range(config.epochs):
        sampler.set_epoch(epoch)  # a new permutation per epoch, the same on all
        losses.append(_ddp_epoch(ddp, loader, optimizer, device))
        if rank == 0:
            print(f"epoch {epoch + 1}: train loss {losses[-1]:.4f}", flush=True)
    if rank != 0:
        return None
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    if config.checkpoint:
        torch.save({"model": state, "config": asdict(config)}, config.checkpoint)
    return {"losses": losses, "state_dict": state}


def _ddp_epoch(ddp, loader, optimizer, device) -> float:
    """One epoch; returns this rank's mean batch loss."""
    total = 0.0
    for X, y in loader:  # (B, D), (B,) on each rank
        optimizer.zero_grad()
        loss = F.cross_entropy(ddp(X.to(device)), y.to(device))
        loss.backward()  # DDP all-reduces the gradients here
        optimizer.step()
        total += loss.item()
    return total / len(loader)


def _parse_args(argv: Sequence[str] | None) -> DDPConfig:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.parallel",
        description="Train an MLP on MNIST-1D with DDP; run it under torchrun.",
    )
    parser.add_argument("--dataset", default="mnist1d", choices=["mnist1d", "digits"])
    parser.add_argument("--hidden", type=int, nargs="+", default=[100])
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--checkpoint", help="rank 0 saves the model here")
    parser.add_argument("--cache-dir", help="where MNIST-1D is cached")
    ns = parser.parse_args(argv)
    return DDPConfig(**{**vars(ns), "hidden": tuple(ns.hidden)})


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point for ``torchrun --nproc_per_node=K -m course_lib.parallel``.

    torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; the group is joined through them (``env://``), on NCCL
    when there is a GPU for every local process and gloo otherwise.
    """
    config = _parse_args(argv)
    if "RANK" not in os.environ:
        raise SystemExit("run me under torchrun: torchrun --nproc_per_node=2 -m ...")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    device = _default_device(int(os.environ["LOCAL_RANK"]), local_world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), init_method="env://")
    try:
        train_ddp(rank, world_size, config)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
