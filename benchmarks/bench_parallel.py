"""Data-parallel throughput: 1 process against 2 with DistributedDataParallel.

For each MLP, one SGD step on a global batch of 256 samples is timed in one
process (no DDP) and in 2 processes with DDP (128 samples each, gradients
all-reduced during ``backward``). Throughput is samples per second; the
scaling efficiency is ``throughput(2) / (2 * throughput(1))``, 1.0 being
perfect. Each worker also times a bare ``all_reduce`` of a flat tensor with
as many elements as the model has parameters: the communication of one step.

The workers use one thread each (``course_lib.parallel.launch``), so on a
machine with at least 2 cores the 2 processes do not compete for a core.
With 2 or more GPUs the 2 processes use NCCL, one GPU each; with one GPU the
single-process GPU throughput is reported and the 2-process run stays on
CPU with gloo (NCCL needs a GPU per process).

    python benchmarks/bench_parallel.py                 # CPU, and CUDA if present
    python benchmarks/bench_parallel.py --steps 100 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from course_lib.models import MLP, count_parameters
from course_lib.parallel import launch

MODELS = {"MLP 40-256-256-10": [256, 256], "MLP 40-1024-1024-10": [1024, 1024]}
GLOBAL_BATCH, FEATURES, CLASSES, WARMUP = 256, 40, 10, 5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_times(model, X, y, steps: int, device) -> list[float]:
    """Wall seconds of each of ``steps`` SGD steps, after WARMUP untimed ones."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for i in range(WARMUP + steps):
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
        _sync(device)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return times


def _data(batch: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, FEATURES, generator=g)
    return X.to(device), torch.randint(0, CLASSES, (batch,), generator=g).to(device)


def _one_process(rank, world_size, hidden, steps, device_name):
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = MLP(FEATURES, hidden, CLASSES).to(device)
    return _step_times(model, *_data(GLOBAL_BATCH, device), steps, device)


def _ddp_worker(rank, world_size, hidden, steps):
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    torch.manual_seed(0)
    model = MLP(FEATURES, hidden, CLASSES).to(device)
    ddp = DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None
    )
    X, y = _data(GLOBAL_BATCH // world_size, device, seed=rank)
    dist.barrier()
    step = _step_times(ddp, X, y, steps, device)
    flat = torch.zeros(count_parameters(model), device=device)
    reduce = []
    for i in range(WARMUP + steps):
        dist.barrier()
        _sync(device)
        start = time.perf_counter()
        dist.all_reduce(flat)
        _sync(device)
        if i >= WARMUP:
            reduce.append(time.perf_counter() - start)
    return step, reduce, dist.get_backend(), str(device)


def _slowest_rank_median(per_rank: list[list[float]]) -> float:
    """Median over steps of the slower rank's time: a step ends when both do."""
    return statistics.median(map(max, zip(*per_rank, strict=True)))


def run(device_name: str, steps: int) -> None:
    two_gpus = device_name == "cuda" and torch.cuda.device_count() >= 2
    print(
        f"\n== {device_name}: torch {torch.__version__}, global batch "
        f"{GLOBAL_BATCH}, median of {steps} steps after {WARMUP} warm-up steps"
    )
    header = (
        f"{'model':22} {'params':>9} {'1 proc samples/s':>17} "
        f"{'2 proc samples/s':>17} {'efficiency':>10} {'all_reduce ms':>13} "
        f"{'step ms (2 proc)':>16} {'2-proc backend':>15}"
    )
    print(header)
    for name, hidden in MODELS.items():
        params = count_parameters(MLP(FEATURES, hidden, CLASSES))
        # the 1-process run goes through launch too: same one-thread worker
        (single,) = launch(_one_process, 1, hidden, steps, device_name, timeout=600)
        if device_name == "cuda" and not two_gpus:
            one = GLOBAL_BATCH / statistics.median(single)
            print(f"{name:22} {params:>9,} {one:>17,.0f} {'needs 2 GPUs':>17}")
            continue
        results = launch(_ddp_worker, 2, hidden, steps, timeout=600)
        # a step ends when the slower rank ends it: take the max over ranks
        step = _slowest_rank_median([r[0] for r in results])
        reduce = _slowest_rank_median([r[1] for r in results])
        one, two = GLOBAL_BATCH / statistics.median(single), GLOBAL_BATCH / step
        print(
            f"{name:22} {params:>9,} {one:>17,.0f} {two:>17,.0f} "
            f"{two / (2 * one):>10.2f} {1e3 * reduce:>13.3f} {1e3 * step:>16.3f} "
            f"{results[0][2]:>15}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be a positive integer, got {args.steps}")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            parser.error("--device cuda: no CUDA device is available")
        devices.remove("cuda")
    for device in devices:
        run(device, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
