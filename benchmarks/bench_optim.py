"""Time ``optimizer.step()``: course_lib.optim against torch.optim.

For each optimizer, three copies of one MLP (about 1.1M parameters, 8 tensors)
get the same random gradients once; each copy is stepped by one
implementation: ours, torch's for-loop path (``foreach=False``) and torch's
multi-tensor path (``foreach=True``). The three are timed in turn, step by
step, so a busy machine slows them alike: the table gives the median time
per step and the median of the step-by-step ratios. On CUDA each timed step
is bracketed by ``torch.cuda.synchronize()``.

    python benchmarks/bench_optim.py                     # CPU, and CUDA if present
    python benchmarks/bench_optim.py --device cpu --repeats 200 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from course_lib import optim

SIZES = (784, 768, 512, 256, 10)  # Linear layers 784 -> 768 -> 512 -> 256 -> 10
CONFIGS = [
    ("SGD", {"lr": 0.01, "momentum": 0.9}),
    ("Adagrad", {}),
    ("RMSprop", {}),
    ("Adam", {}),
    ("AdamW", {}),
    ("NAdam", {}),
    ("RAdam", {}),
]
# wall: what a training loop waits for. cpu: CPU seconds of this process (all
# its threads), which a second process competing for the cores does not inflate.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
WARMUP = 10  # past RAdam's un-rectified first steps, and lazy state creation


def make_params(device: str) -> list[torch.Tensor]:
    """The weights of the MLP, with random gradients filled in once."""
    generator = torch.Generator().manual_seed(0)
    params = []
    for fan_in, fan_out in zip(SIZES, SIZES[1:], strict=False):
        for shape in ((fan_out, fan_in), (fan_out,)):
            p = (0.05 * torch.randn(shape, generator=generator)).to(device)
            p.requires_grad_(True)
            p.grad = (1e-3 * torch.randn(shape, generator=generator)).to(device)
            params.append(p)
    return params


def make_optimizers(name: str, kwargs: dict, device: str) -> dict:
    torch_cls = getattr(torch.optim, name)
    return {
        "ours": getattr(optim, name)(make_params(device), **kwargs),
        "for-loop": torch_cls(make_params(device), foreach=False, **kwargs),
        "foreach": torch_cls(make_params(device), foreach=True, **kwargs),
    }


def time_steps(optimizers: dict, repeats: int, device: str, clock) -> dict:
    """Seconds per step() of each optimizer, ``repeats`` of them, timed in turn."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    times = {key: [] for key in optimizers}
    for i in range(WARMUP + repeats):
        for key, optimizer in optimizers.items():
            sync()
            start = clock()
            optimizer.step()
            sync()
            if i >= WARMUP:
                times[key].append(clock() - start)
    return times


def median_ratio(times: list[float], baseline: list[float]) -> float:
    # Each ratio compares steps taken moments apart, so a load that comes and
    # goes on a shared machine cancels out; the median drops the outliers.
    return statistics.median(t / b for t, b in zip(times, baseline, strict=True))


def run(device: str, repeats: int, clock_name: str) -> None:
    num_params = sum(p.numel() for p in make_params("cpu"))
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"\ntorch {torch.__version__}, device {device} ({name}), "
          f"{torch.get_num_threads()} threads, {num_params:,} parameters in "
          f"{2 * (len(SIZES) - 1)} tensors, median of {repeats} steps, "
          f"{clock_name} time")  # fmt: skip
    header = ("optimizer", "ours ms", "for-loop ms", "foreach ms",
              "ours/for-loop", "ours/foreach")  # fmt: skip
    print("{:<10}{:>10}{:>13}{:>12}{:>15}{:>14}".format(*header))
    for opt_name, kwargs in CONFIGS:
        optimizers = make_optimizers(opt_name, kwargs, device)
        t = time_steps(optimizers, repeats, device, CLOCKS[clock_name])
        ms = [
            1e3 * statistics.median(t[key]) for key in ("ours", "for-loop", "foreach")
        ]
        ratios = [median_ratio(t["ours"], t[key]) for key in ("for-loop", "foreach")]
        print(f"{opt_name:<10}{ms[0]:>10.3f}{ms[1]:>13.3f}{ms[2]:>12.3f}"
              f"{ratios[0]:>15.2f}{ratios[1]:>14.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", action="append", help="cpu, cuda or cuda:N; repeat for several "
        "(default: cpu, and cuda when available)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=100, help="timed steps")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--clock", choices=CLOCKS, default="wall")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or ["cpu"] + ["cuda"] * torch.cuda.is_available()
    for device in devices:
        run(device, args.repeats, args.clock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
