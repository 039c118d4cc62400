"""Lab 3: data parallelism by hand, in real processes.

The student writes how a batch is sharded over workers, the gradient
all-reduce that ``DistributedDataParallel`` performs, gradient accumulation,
and the linear scaling rule with warm-up. The all-reduce is checked in 2 or 3
real processes (:func:`course_lib.parallel.launch`, gloo on CPU) against the
same training with ``DistributedDataParallel``; accumulation against one
large batch, in one process and, combined with the all-reduce, in two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from course_lib import parallel

from .checks import Question, compare, declare
from .harness import (
    first_mismatch,
    flat_parameters,
    parameter_names,
    tiny_batches,
    tiny_net,
)

_TIMEOUT = 60  # seconds for one multi-process case; a healthy one takes ~3
_NAMES = parameter_names(tiny_net(0))


def _launch(worker, world_size: int, *args) -> list:
    """``launch``, with a stub in a worker turned into NotImplementedError.

    Any other failure of a worker propagates as the typed error ``launch``
    raises (:class:`course_lib.parallel.WorkerError`), whose type name,
    message and traceback ``run_one`` reports as the student's error.
    """
    try:
        return parallel.launch(worker, world_size, *args, timeout=_TIMEOUT)
    except parallel.WorkerTimeout:
        raise RuntimeError(
            f"the workers did not finish in {_TIMEOUT} s: does every rank call "
            "all_reduce on the same tensors, in the same order?"
        ) from None
    except parallel.WorkerError as err:
        if err.type_name == "NotImplementedError":
            raise NotImplementedError from None
        raise


# ------------------------------------------------------------------ q1: shards


def shard_reference(X, y, rank, world_size):
    per = len(X) // world_size
    return X[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]


def _run_shards(fn, inputs):
    X = torch.arange(inputs["n"] * 2, dtype=torch.float64).reshape(inputs["n"], 2)
    y = torch.arange(inputs["n"])
    shards = [fn(X, y, r, inputs["world_size"]) for r in range(inputs["world_size"])]
    return [[Xs, ys] for Xs, ys in shards]


def _shard_case(n, world_size):
    return f"{n} samples, {world_size} workers", dict(n=n, world_size=world_size)


# ------------------------------------------------------------- q2: all-reduce


def _average_worker(rank, world_size, fn, inputs):
    """Train on this rank's shards; parameters after every step, ``(steps, P)``.

    ``fn`` is the student's ``average_gradients``, or ``None`` to let
    ``DistributedDataParallel`` average the gradients (the reference run).
    """
    X, y = tiny_batches(inputs["seed"], (inputs["steps"], inputs["batch"]))
    model = tiny_net(inputs["seed"], frozen_first=inputs["frozen"])
    net = DistributedDataParallel(model) if fn is None else model
    optimizer = torch.optim.SGD(
        [p for p in net.parameters() if p.requires_grad], lr=inputs["lr"]
    )
    rows = []
    shards = X.chunk(world_size, dim=1)[rank], y.chunk(world_size, dim=1)[rank]
    for X_b, y_b in zip(*shards, strict=True):
        optimizer.zero_grad()
        F.cross_entropy(net(X_b), y_b).backward()
        if fn is not None:
            fn(model)
        optimizer.step()
        rows.append(flat_parameters(model))
    return torch.stack(rows)


def _run_average(fn, inputs):
    """Every rank's parameters after every step: ``(world_size, steps, P)``."""
    return torch.stack(_launch(_average_worker, inputs["world_size"], fn, inputs))


def _ddp_run(inputs):
    """The reference: the same training with ``DistributedDataParallel``."""
    return _run_average(None, inputs)


def _average_case(world_size=2, steps=4, batch=12, seed=0, lr=0.5, frozen=False):
    label = f"{world_size} processes, {steps} steps, global batch {batch}, seed {seed}"
    label += ", first layer frozen" if frozen else ""
    inputs = dict(
        world_size=world_size, steps=steps, batch=batch, seed=seed, lr=lr,
        frozen=frozen,
    )  # fmt: skip
    return label, inputs


# ----------------------------------------------------------- q3: accumulation


def _accumulate_once(fn, inputs, rank=0, world_size=1):
    X, y = tiny_batches(inputs["seed"], (inputs["batch"],))
    X, y = X.chunk(world_size)[rank], y.chunk(world_size)[rank]
    model = tiny_net(inputs["seed"])
    sizes = []  # the batch size of every forward pass the model sees
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    loss = fn(model, F.cross_entropy, X, y, inputs["micro_batches"])
    if world_size > 1:
        parallel.average_gradients(model)  # the course's, not the student's
    grads = [p.grad.clone() for p in model.parameters()]
    return {"loss": loss, "grads": grads, "forward_sizes": sorted(sizes)}


def _accumulate_worker(rank, world_size, fn, inputs):
    return _accumulate_once(fn, inputs, rank, world_size)


def _run_accumulate(fn, inputs):
    """Mean loss, gradients and forward-pass sizes; with 2 processes rank 0's,
    after averaging (the losses are then each rank's own, so not compared)."""
    if inputs["world_size"] == 1:
        return _accumulate_once(fn, inputs)
    out = _launch(_accumulate_worker, inputs["world_size"], fn, inputs)[0]
    return {"grads": out["grads"], "forward_sizes": out["forward_sizes"]}


def _passes(sizes) -> str:
    count = f"{len(sizes)} forward pass" + ("es" if len(sizes) != 1 else "")
    return f"{count} of sizes {sizes}" if sizes else count


def explain_accumulation(expected, actual, *, rtol: float, atol: float):
    """First whether the model saw the right micro-batches, then the values."""
    if isinstance(actual, dict) and "forward_sizes" in actual:
        want, got = expected["forward_sizes"], actual["forward_sizes"]
        if got != want:
            return f"the model saw {_passes(got)}, expected {_passes(want)}"
    return compare(expected, actual, rtol=rtol, atol=atol)


def _accumulate_case(batch, micro_batches, seed=0, world_size=1):
    where = f", {world_size} processes" if world_size > 1 else ""
    label = f"batch {batch} in {micro_batches} micro-batches{where}, seed {seed}"
    inputs = dict(
        batch=batch, micro_batches=micro_batches, seed=seed, world_size=world_size
    )
    return label, inputs


# ---------------------------------------------------------- q4: scaled lr


def lr_reference(step, base_lr, base_batch_size, batch_size, warmup_steps):
    if warmup_steps == 0:
        return parallel.scaled_lr(base_lr, base_batch_size, batch_size)
    lr, schedule = parallel.warmup_linear_scaling(
        base_lr, base_batch_size, batch_size, warmup_steps
    )
    return lr * schedule(step)


def _run_lr(fn, inputs):
    return [float(fn(step, *inputs["args"])) for step in inputs["steps"]]


def _lr_case(base_lr, base_batch_size, batch_size, warmup_steps, steps):
    label = (
        f"base lr {base_lr} at batch {base_batch_size}, batch {batch_size}, "
        f"{warmup_steps} warm-up steps, steps {steps}"
    )
    args = (base_lr, base_batch_size, batch_size, warmup_steps)
    return label, dict(args=args, steps=steps)


_TOLERANCE = dict(rtol=1e-9, atol=1e-12)
QUESTIONS = declare(__name__, [
    Question(
        "q1", "shard_batch", "each worker's shard of a batch", run=_run_shards,
        reference=shard_reference,
        public_cases=lambda: [_shard_case(8, 2), _shard_case(12, 3)],
        hidden_cases=lambda s: [_shard_case(4 * (s % 5 + 2), 4), _shard_case(6, 1)],
        points=1, rtol=0, atol=0,
        forbidden=("torch.utils.data.DistributedSampler",),
    ),
    Question(
        "q2", "average_gradients", "averaging gradients with all_reduce",
        run=_run_average, reference=parallel.average_gradients, expected=_ddp_run,
        public_cases=lambda: [
            _average_case(),
            _average_case(seed=1, frozen=True),
            _average_case(3, steps=3, batch=9, seed=2, lr=0.3),
        ],
        hidden_cases=lambda s: [
            _average_case(3, steps=3, batch=9, seed=s, lr=0.3),
            _average_case(2, steps=6, batch=8, seed=s + 1, lr=1.0, frozen=True),
        ],
        points=3, explain=first_mismatch(_NAMES, "DDP"), **_TOLERANCE,
        forbidden=(
            "torch.nn.parallel.DistributedDataParallel",
            "course_lib.parallel.average_gradients",
        ),
    ),
    Question(
        "q3", "accumulate_gradients", "gradient accumulation",
        run=_run_accumulate, reference=parallel.accumulate_gradients,
        public_cases=lambda: [
            _accumulate_case(12, 3),
            _accumulate_case(10, 4, seed=1),
            _accumulate_case(16, 2, seed=2, world_size=2),
        ],
        hidden_cases=lambda s: [
            _accumulate_case(17, 5, seed=s),
            _accumulate_case(8, 8, seed=s + 1),
            _accumulate_case(9, 1, seed=s + 2),
            _accumulate_case(14, 3, seed=s + 3, world_size=2),
        ],
        points=3, explain=explain_accumulation, **_TOLERANCE,
        forbidden=("course_lib.parallel.accumulate_gradients",),
    ),
    Question(
        "q4", "scaled_lr", "linear scaling with warm-up", run=_run_lr,
        reference=lr_reference,
        public_cases=lambda: [
            _lr_case(0.1, 256, 1024, 100, [0, 1, 50, 99, 100, 500]),
            _lr_case(0.05, 32, 32, 10, [0, 5, 20]),
        ],
        hidden_cases=lambda s: [
            _lr_case(0.2, 64, 64 * (s % 7 + 2), 7, list(range(12))),
            _lr_case(0.01, 128, 8192, 0, [0, 1, 1000]),
        ],
        points=1, **_TOLERANCE,
        forbidden=(
            "course_lib.parallel.scaled_lr",
            "course_lib.parallel.warmup_linear_scaling",
            "course_lib.schedules.Warmup", "torch.optim.lr_scheduler.LinearLR",
        ),
    ),
])  # fmt: skip


def compare_with_one_process(
    rank,
    world_size,
    shard_batch,
    average_gradients,
    accumulate_gradients,
    micro_batches=2,
    steps=20,
):
    """Train the MNIST-1D MLP with the given functions (for the lab's last part).

    Rank ``r`` takes its shard of each global batch of 64 with ``shard_batch``,
    accumulates it in ``micro_batches`` pieces, averages with
    ``average_gradients`` and steps; rank 0 returns its parameters.
    """
    from course_lib.data import load_dataset
    from course_lib.models import MLP

    splits = load_dataset("mnist1d")
    torch.manual_seed(0)
    model = MLP(splits.num_features, [32], splits.num_classes).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = splits.X_train.double(), splits.y_train
    for step in range(steps):
        X_b, y_b = X[step * 64 : (step + 1) * 64], y[step * 64 : (step + 1) * 64]
        X_s, y_s = shard_batch(X_b, y_b, rank, world_size)
        optimizer.zero_grad()
        accumulate_gradients(model, F.cross_entropy, X_s, y_s, micro_batches)
        if world_size > 1:
            average_gradients(model)
        optimizer.step()
    return (
        torch.cat([p.detach().flatten() for p in model.parameters()])
        if rank == 0
        else None
    )


