"""Tests for course_lib.parallel: real torch.distributed, 2 processes, gloo, CPU.

Most worker functions live at module level (the workers import them by name);
a lambda, a closure and a script's ``__main__`` function check that ``launch``
also ships functions by value, as a notebook needs.
"""

import math
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from course_lib.models import MLP
from course_lib.parallel import (
    AllReduceBatchNorm,
    DDPConfig,
    WorkerDied,
    WorkerError,
    WorkerTimeout,
    accumulate_gradients,
    average_gradients,
    backend_for,
    launch,
    scaled_lr,
    to_sync_batchnorm,
    train_ddp,
    warmup_linear_scaling,
)
from course_lib.schedules import Constant, Cosine, Warmup

STEPS, BATCH, LR = 6, 16, 0.5  # BATCH is the global batch, split over 2 ranks
REPO = Path(__file__).resolve().parents[1]


def _batches():
    """STEPS batches of synthetic data: ``(STEPS, BATCH, 5)``, ``(STEPS, BATCH)``."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(STEPS, BATCH, 5, generator=g, dtype=torch.float64)
    return X, torch.randint(0, 3, (STEPS, BATCH), generator=g)


def _model():
    torch.manual_seed(0)
    return MLP(5, [8], 3).double()


def _sgd_steps(model, batches, sync=None) -> list[torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for X, y in zip(*batches, strict=True):
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        if sync is not None:
            sync(model)
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def _ddp_and_by_hand(rank, world_size):
    """Each rank trains on its half of every batch, with DDP and by hand."""
    X, y = _batches()
    shard = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    batches = X[:, shard], y[:, shard]
    ddp = DistributedDataParallel(_model())
    ddp_params = _sgd_steps(ddp, batches)
    hand_params = _sgd_steps(_model(), batches, sync=average_gradients)
    return ddp_params, hand_params


def _fail_on_rank_1(rank, world_size):
    if rank == 1:
        raise ValueError("boom")
    dist.all_reduce(torch.zeros(1))  # waits for rank 1, which never comes


def _die_on_rank_1(rank, world_size):
    if rank == 1:
        os._exit(3)  # no exception, no message: as if killed
    dist.all_reduce(torch.zeros(1))


def _sleep(rank, world_size, seconds):
    time.sleep(seconds)


def _sum_of_ranks(rank, world_size):
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    return rank, world_size, t


def _no_children_left() -> bool:
    if multiprocessing.active_children():
        return False
    try:
        import psutil  # optional: also sees processes multiprocessing forgot
    except ImportError:
        return True
    # the resource tracker and the fork server are helpers of the parent
    helpers = ("resource_tracker", "forkserver")
    return not [
        c
        for c in psutil.Process().children(recursive=True)
        if not any(h in " ".join(c.cmdline()) for h in helpers)
    ]


def _assert_params_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def two_rank_results():
    results = launch(_ddp_and_by_hand, 2)
    assert _no_children_left()
    return results


def test_ddp_on_two_halves_equals_one_process_on_full_batch(two_rank_results):
    reference = _sgd_steps(_model(), _batches())
    initial = list(_model().parameters())
    for ddp_params, _ in two_rank_results:
        _assert_params_close(ddp_params, reference)
    # the check has teeth: training moved the parameters
    assert (
        max((a - b).abs().max() for a, b in zip(reference, initial, strict=True)) > 1e-2
    )


def test_average_gradients_equals_ddp(two_rank_results):
    for ddp_params, hand_params in two_rank_results:
        _assert_params_close(hand_params, ddp_params)


def test_launch_returns_results_in_rank_order():
    results = launch(_sum_of_ranks, 2)
    assert [r[:2] for r in results] == [(0, 2), (1, 2)]
    for _, _, total in results:
        assert total.item() == 1.0  # 0 + 1, all-reduced
    assert _no_children_left()


def test_launch_fails_fast_and_cleans_up():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="rank 1 failed") as info:
        launch(_fail_on_rank_1, 2)
    assert time.monotonic() - start < 30
    assert "boom" in str(info.value) and "ValueError" in str(info.value)
    error = info.value
    assert isinstance(error, WorkerError) and not isinstance(error, WorkerTimeout)
    assert (error.rank, error.type_name, error.message) == (1, "ValueError", "boom")
    assert "_fail_on_rank_1" in error.traceback
    assert _no_children_left()


def test_launch_reports_a_worker_that_dies_without_a_word():
    with pytest.raises(RuntimeError, match="rank 1 failed") as info:
        launch(_die_on_rank_1, 2)
    assert "exited with code 3" in str(info.value)
    assert isinstance(info.value, WorkerDied) and info.value.rank == 1
    assert _no_children_left()


def test_launch_kills_workers_past_timeout():
    start = time.monotonic()
    with pytest.raises(WorkerTimeout, match="timed out"):
        launch(_sleep, 2, 300, timeout=3)
    assert time.monotonic() - start < 30
    assert _no_children_left()


@pytest.mark.parametrize("world_size", [0, -1, 1.5, True])
def test_launch_rejects_bad_world_size(world_size):
    with pytest.raises(ValueError, match="world_size"):
        launch(_sleep, world_size, 0)


def test_launch_rejects_bad_timeout():
    with pytest.raises(ValueError, match="timeout"):
        launch(_sleep, 1, 0, timeout=0)


@pytest.mark.parametrize("n, k", [(12, 3), (13, 4), (5, 5), (7, 1)])
def test_accumulate_gradients_equals_one_big_batch(n, k):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    big, small = _model(), _model()
    big_loss = F.cross_entropy(big(X), y)
    big_loss.backward()
    small_loss = accumulate_gradients(small, F.cross_entropy, X, y, k)
    assert small_loss == pytest.approx(big_loss.item(), rel=1e-12)
    for a, b in zip(small.parameters(), big.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)
    for model in (big, small):
        torch.optim.SGD(model.parameters(), lr=LR).step()
    _assert_params_close(list(small.parameters()), list(big.parameters()))


def test_accumulate_gradients_adds_to_existing_grads():
    X, y = _batches()[0][0], _batches()[1][0]
    model = _model()
    accumulate_gradients(model, F.cross_entropy, X, y, 2)
    once = [p.grad.clone() for p in model.parameters()]
    accumulate_gradients(model, F.cross_entropy, X, y, 4)
    for p, g in zip(model.parameters(), once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)


@pytest.mark.parametrize("k", [0, -2, 2.0, 17])
def test_accumulate_gradients_rejects_bad_micro_batches(k):
    X, y = torch.zeros(16, 5, dtype=torch.float64), torch.zeros(16, dtype=torch.long)
    with pytest.raises(ValueError, match="micro_batches"):
        accumulate_gradients(_model(), F.cross_entropy, X, y, k)


def test_scaled_lr_by_hand():
    assert scaled_lr(0.1, 256, 8192) == pytest.approx(3.2)  # Goyal et al.
    assert scaled_lr(0.1, 32, 32) == 0.1
    assert scaled_lr(0.2, 64, 16) == pytest.approx(0.05)


@pytest.mark.parametrize(
    "args, name",
    [((0, 32, 64), "base_lr"), ((-0.1, 32, 64), "base_lr"),
     ((0.1, 0, 64), "base_batch_size"), ((0.1, 32, 6.4), "batch_size")],
)  # fmt: skip
def test_scaled_lr_rejects_bad_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        scaled_lr(*args)


def test_warmup_linear_scaling_by_hand():
    lr, schedule = warmup_linear_scaling(0.1, 32, 128, 4)
    assert lr == pytest.approx(0.4)
    assert schedule == Warmup(Constant(), 4, start_factor=0.25)
    # lr * factor: 0.1 (the small-batch rate) rising linearly to 0.4
    expected = [0.1, 0.175, 0.25, 0.325, 0.4, 0.4]
    assert [lr * schedule(t) for t in range(6)] == pytest.approx(expected)
    _, after = warmup_linear_scaling(0.1, 32, 128, 4, Cosine(10))
    assert after(4 + 10) == pytest.approx(Cosine(10)(10))


def test_warmup_linear_scaling_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        warmup_linear_scaling(0.1, 128, 32, 4)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_linear_scaling(0.1, 32, 128, 0)


def test_backend_for():
    assert backend_for("cpu") == "gloo"
    assert backend_for(torch.device("cuda", 0)) == "nccl"


def test_ddp_config_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        DDPConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        DDPConfig(lr=-1.0)


def test_train_ddp_through_launch():
    config = DDPConfig(dataset="digits", hidden=(16,), batch_size=64, lr=0.01)
    rank_0, rank_1 = launch(train_ddp, 2, config)
    assert rank_1 is None  # results come from rank 0 only
    assert len(rank_0["losses"]) == 1 and 0 < rank_0["losses"][0] < 10
    model = MLP(64, [16], 10)
    model.load_state_dict(rank_0["state_dict"])  # a usable checkpoint
    assert _no_children_left()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_process_reference(splits, batch_size, seed):
    """Plain SGD in this process on the global batch, as train_ddp orders it."""
    torch.manual_seed(seed)
    model = MLP(splits.num_features, [32], splits.num_classes).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = splits.X_train.double(), splits.y_train
    # DistributedSampler's epoch-0 order: randperm seeded with seed + epoch
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for idx in order.split(batch_size):
        optimizer.zero_grad()
        F.cross_entropy(model(X[idx]), y[idx]).backward()
        optimizer.step()
    return model.state_dict()


def test_torchrun_entry_point_matches_one_process(tmp_path):
    from course_lib.data import load_dataset

    cache = tmp_path / "cache"
    splits = load_dataset("mnist1d", cache_dir=cache)  # generated once, here
    assert len(splits.y_train) % 2 == 0  # equal shards, nothing dropped
    checkpoint = tmp_path / "model.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        "-m", "course_lib.parallel", "--epochs", "1", "--batch-size", "32",
        "--hidden", "32", "--lr", "0.1", "--seed", "3", "--float64",
        "--checkpoint", str(checkpoint), "--cache-dir", str(cache),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 1: train loss") == 1  # rank 0 only
    saved = torch.load(checkpoint)
    assert saved["config"]["batch_size"] == 32
    reference = _one_process_reference(splits, batch_size=64, seed=3)
    assert saved["model"].keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(saved["model"][name], value, rtol=0, atol=1e-10)


def test_launch_ships_lambdas_and_closures_by_value():
    offset = torch.tensor([10.0])

    def add_offset(rank, world_size):  # a closure over a local tensor
        return rank + offset

    assert launch(add_offset, 2) == [torch.tensor([10.0]), torch.tensor([11.0])]
    assert launch(lambda rank, world_size, k: rank * k, 2, 3) == [0, 3]
    assert _no_children_left()


def test_launch_runs_a_function_defined_in_main(tmp_path):
    # a notebook's functions live in __main__, which the workers cannot import
    script = tmp_path / "script.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from course_lib.parallel import launch\n"
        "SCALE = 5.0\n"
        "def work(rank, world_size):\n"
        "    t = torch.tensor([SCALE * (rank + 1)])\n"
        "    dist.all_reduce(t)\n"
        "    return t.item()\n"
        "if __name__ == '__main__':\n"
        "    print(launch(work, 2))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True,
        timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[15.0, 15.0]"


# ------------------------------------------------------------- batch norm

BN_STEPS, BN_BATCH = 4, 12  # global batch of 12: 6 per rank


def _bn_model(by_hand: bool):
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4, momentum=0.3),
        torch.nn.ReLU(), torch.nn.Linear(4, 3),
    ).double()  # fmt: skip
    return to_sync_batchnorm(model, by_hand=True) if by_hand else model


def _bn_run(model, batches):
    """SGD steps; the outputs, input gradients, parameters and buffers."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    outputs, input_grads = [], []
    for X, y in zip(*batches, strict=True):
        X = X.clone().requires_grad_()
        optimizer.zero_grad()
        out = model(X)
        loss = F.cross_entropy(out, y, reduction="sum") / BN_BATCH  # global mean
        loss.backward()
        if dist.is_initialized():
            for p in model.parameters():  # sum of the ranks' shares of the mean
                dist.all_reduce(p.grad)
        optimizer.step()
        outputs.append(out.detach())
        input_grads.append(X.grad)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return outputs, input_grads, state


def _bn_batches():
    g = torch.Generator().manual_seed(2)
    X = 3 * torch.randn(BN_STEPS, BN_BATCH, 5, generator=g, dtype=torch.float64) + 1
    return X, torch.randint(0, 3, (BN_STEPS, BN_BATCH), generator=g)


def _bn_worker(rank, world_size, by_hand):
    X, y = _bn_batches()
    shard = slice(rank * BN_BATCH // world_size, (rank + 1) * BN_BATCH // world_size)
    return shard, _bn_run(_bn_model(by_hand), (X[:, shard], y[:, shard]))


@pytest.mark.parametrize("by_hand", [True, False], ids=["all-reduced", "per-worker"])
def test_all_reduce_batchnorm_equals_one_process_on_the_global_batch(by_hand):
    out_1, grads_1, state_1 = _bn_run(_bn_model(False), _bn_batches())
    close = []
    for shard, (out, grads, state) in launch(_bn_worker, 2, by_hand):
        outputs_match = all(
            torch.allclose(o, o1[shard], rtol=0, atol=1e-10)
            and torch.allclose(g, g1[shard], rtol=0, atol=1e-10)
            for o, o1, g, g1 in zip(out, out_1, grads, grads_1, strict=True)
        )
        states_match = all(
            torch.allclose(state[k].double(), v.double(), rtol=0, atol=1e-10)
            for k, v in state_1.items()
        )
        close.append(outputs_match and states_match)
    # synced statistics reproduce one process exactly; per-worker ones do not
    assert close == ([True, True] if by_hand else [False, False])
    assert _no_children_left()


def test_all_reduce_batchnorm_is_plain_batchnorm_outside_a_group():
    plain, converted = _bn_model(False), _bn_model(True)
    assert isinstance(converted[1], AllReduceBatchNorm)
    X = _bn_batches()[0][0]
    for mode in ("train", "eval"):
        getattr(plain, mode)(), getattr(converted, mode)()
        torch.testing.assert_close(converted(X), plain(X), rtol=0, atol=0)
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(converted.state_dict()[k], v, rtol=0, atol=0)


def test_all_reduce_batchnorm_handles_images_and_cumulative_average():
    bn = torch.nn.BatchNorm2d(3, momentum=None).double()
    bn.running_var.fill_(2.0)
    ours = AllReduceBatchNorm.from_batchnorm(bn)
    assert ours.momentum is None and ours.running_var[0] == 2.0
    with pytest.raises(ValueError, match="2 or more dims"):
        ours(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="by_hand"):
        to_sync_batchnorm(bn, by_hand="yes")


def test_torch_syncbatchnorm_needs_a_gpu():
    # why the by-hand version exists: torch's refuses CPU tensors in a group
    assert launch(_torch_sync_bn_on_cpu, 2) == ["refused", "refused"]


def _torch_sync_bn_on_cpu(rank, world_size):
    model = to_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm1d(2)))
    try:
        model(torch.randn(4, 2))
    except ValueError as err:
        return "refused" if "GPU" in str(err) else str(err)
    return "ran"


def _accumulate(micro_batches):
    X, y = _batches()[0][0], _batches()[1][0]
    model = _model()
    loss = accumulate_gradients(model, F.cross_entropy, X, y, micro_batches)
    return [loss] + [p.grad.tolist() for p in model.parameters()]


NUMPY_ARGUMENTS = [
    ("base_lr", lambda v: scaled_lr(v, 32, 64), np.float64(0.1)),
    ("batch_size", lambda v: scaled_lr(0.1, 32, v), np.int64(64)),
    ("warmup_steps", lambda v: warmup_linear_scaling(0.1, 32, 64, v), np.int64(4)),
    ("micro_batches", _accumulate, np.int64(2)),
    ("epochs", lambda v: DDPConfig(epochs=v), np.int64(2)),
    ("lr", lambda v: DDPConfig(lr=v), np.float32(0.5)),
    ("hidden", lambda v: DDPConfig(hidden=(v,)), np.int64(8)),
    ("by_hand", lambda v: type(to_sync_batchnorm(torch.nn.BatchNorm1d(3), by_hand=v)),
     np.bool_(True)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "call", "value"), NUMPY_ARGUMENTS)
def test_numpy_scalars_pass_bools_and_strings_do_not(name, call, value):
    assert call(value) == call(value.item())  # DDPConfig: stored as plain numbers
    for bad in (1, "yes") if isinstance(value, np.bool_) else (True, "3"):
        with pytest.raises(ValueError, match=rf"^{name} must be "):
            call((bad,) if name == "hidden" else bad)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [(dict(world_size=True), "world_size"), (dict(world_size="2"), "world_size"),
     (dict(timeout=True), "timeout"), (dict(timeout=math.nan), "timeout"),
     (dict(fn=3), "fn")],
)  # fmt: skip
def test_launch_refuses_bad_arguments_before_starting_workers(kwargs, name):
    args = dict(fn=_sum_of_ranks, world_size=2) | kwargs
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        launch(args.pop("fn"), args.pop("world_size"), **args)
