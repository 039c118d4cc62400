"""Lab 1: the mini-batch SGD loop, learning-rate schedules, reading curves.

Each question's reference is the ``course_lib`` function chapter 1 uses, so a
student's answer that passes is interchangeable with the book's code. The
public cases are what ``check_qN`` runs in the notebook; the hidden cases,
drawn from the grader's seed, are other sizes, seeds and edge cases.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random

import torch
import torch.nn.functional as F

from ..diagnose import PATHOLOGIES, RECIPES, demo_run, diagnose
from ..schedules import Cosine, StepDecay, Warmup
from ..train import minibatch_indices, minibatch_sgd, sgd_step
from .checks import Question, declare
from .harness import tiny_batches, tiny_net

# --- q1: the batches of one epoch


def _run_indices(fn, inputs):
    g = torch.Generator().manual_seed(inputs["seed"])
    out = fn(inputs["n"], inputs["batch_size"], shuffle=inputs["shuffle"], generator=g)
    return [torch.as_tensor(b) for b in out]


def _indices_case(n, batch_size, shuffle, seed=0):
    label = f"n={n}, batch_size={batch_size}, shuffle={shuffle}, seed={seed}"
    return label, dict(n=n, batch_size=batch_size, shuffle=shuffle, seed=seed)


def _indices_hidden(seed):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(5, 200, (4,), generator=g).tolist()
    return [
        _indices_case(n, 1 + n // 3, True, seed + i) for i, n in enumerate(sizes)
    ] + [
        _indices_case(1, 1, True, seed),
        _indices_case(17, 100, True, seed),
        _indices_case(12, 4, False, seed),
    ]


# --- q2: one SGD step


def _run_step(fn, inputs):
    model = tiny_net(inputs["seed"])
    X, y = tiny_batches(inputs["seed"], (inputs["n"],))
    for _ in range(inputs.get("repeats", 1)):
        loss = fn(model, F.cross_entropy, X, y, inputs["lr"])
    params = [p.detach().clone() for p in model.parameters()]
    return [torch.as_tensor(float(loss), dtype=torch.float64), *params]


def _step_case(n, lr, seed=0, repeats=1):
    label = f"batch of {n}, lr={lr}, {repeats} step(s), seed={seed}"
    return label, dict(n=n, lr=lr, seed=seed, repeats=repeats)


# --- q3: the training loop


def _run_train(fn, inputs):
    model = tiny_net(inputs["seed"])
    X, y = tiny_batches(inputs["seed"], (inputs["n"],))
    kwargs = {k: inputs[k] for k in ("lr", "batch_size", "num_epochs", "seed")}
    losses = fn(model, X, y, **kwargs)
    params = [p.detach().clone() for p in model.parameters()]
    return [torch.as_tensor(list(losses), dtype=torch.float64), *params]


def _train_reference(model, X, y, *, lr, batch_size, num_epochs, seed):
    return minibatch_sgd(
        model, X, y, lr=lr, batch_size=batch_size, num_epochs=num_epochs, seed=seed
    )


def _train_case(n, batch_size, num_epochs, lr=0.3, seed=0):
    label = f"n={n}, batch_size={batch_size}, {num_epochs} epochs, lr={lr}, seed={seed}"
    return label, dict(
        n=n, batch_size=batch_size, num_epochs=num_epochs, lr=lr, seed=seed
    )


# --- q4-q6: schedules


def _run_schedule(fn, inputs):
    args = inputs["args"]
    values = [fn(t, **args) for t in range(inputs["num_steps"])]
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def _step_decay_reference(step, step_size, gamma):
    return StepDecay(step_size, gamma)(step)


def _cosine_reference(step, total_steps):
    return Cosine(total_steps)(step)


def _warmup_cosine_reference(step, warmup_steps, total_steps):
    return Warmup(Cosine(total_steps - warmup_steps), warmup_steps)(step)


def _schedule_case(num_steps, **args):
    return ", ".join(f"{k}={v}" for k, v in args.items()), dict(
        args=args, num_steps=num_steps
    )


# --- q7: naming a learning curve

# What a student's function may read of a run (the notebook documents these).
HISTORY_FIELDS = ("step_loss", "steps_per_epoch", "train_loss", "val_loss")

# The settings each pathology's run takes on a hidden seed (one is drawn per
# setting): other learning rates, lengths and batch sizes than the public run,
# so that a rule must read the curve's shape, not its length or scale.
# ``tests/test_labs.py`` checks that each drawn run shows its pattern.
VARIATIONS = {
    "diverging": dict(lr=(10.0, 20.0), batch_size=(50, 100)),
    "not_training": dict(lr=(5e-4, 1e-3), batch_size=(50, 100)),
    "unshuffled_cycles": dict(lr=(0.3, 0.5), epochs=(15, 20, 25)),
    "slow_start": dict(lr=(0.3, 0.5), epochs=(20, 25)),
    "overfitting": dict(epochs=(50, 60, 70), n_train=(400, 500)),
    "not_converged": dict(epochs=(8, 10, 12)),
    "healthy": dict(lr=(0.3, 0.5), epochs=(15, 20)),
}


def variation(pathology: str, seed: int) -> dict:
    """The settings of ``pathology``'s run on hidden seed ``seed``."""
    rng = random.Random(f"{pathology}-{seed}")
    return {k: rng.choice(v) for k, v in VARIATIONS[pathology].items()}


@functools.lru_cache(maxsize=8)
def _histories(seed: int, varied: bool = False) -> tuple:
    """One real run per pathology (MNIST-1D, see course_lib.diagnose.RECIPES).

    Only :data:`HISTORY_FIELDS` are kept: the others (learning rates, why a run
    stopped) would name the recipe without reading the curve. Cached on disk
    next to MNIST-1D, keyed by everything that shapes the runs, so that
    grading a folder of notebooks trains them once rather than once per
    notebook.
    """
    from ..data import cache_dir, load_dataset

    settings = {n: variation(n, seed) if varied else {} for n in PATHOLOGIES}
    spec = (seed, RECIPES, settings, HISTORY_FIELDS, torch.__version__)
    key = hashlib.sha1(repr(spec).encode()).hexdigest()
    path = cache_dir() / f"lab01-histories-{key[:16]}.json"
    try:
        cached = json.loads(path.read_text())
        if _well_formed(cached):
            return tuple(tuple(item) for item in cached)
    except (OSError, ValueError):
        pass  # missing or unreadable: train again
    splits = load_dataset("mnist1d")
    runs = []
    for name in PATHOLOGIES:
        history = demo_run(splits, name, seed=seed, **settings[name]).as_dict()
        runs.append([name, {k: history[k] for k in HISTORY_FIELDS}])
    try:  # write, then rename: a reader in another process never sees half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(runs))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs the time to train again
    return tuple(tuple(item) for item in runs)


def _well_formed(runs) -> bool:
    """True if ``runs`` (read from the cache) is one run per pathology, in
    order, each with exactly :data:`HISTORY_FIELDS`, numbers or lists of
    numbers (NaN is written as NaN): a cache someone else wrote is trained
    again instead of trusted."""
    if not isinstance(runs, list) or len(runs) != len(PATHOLOGIES):
        return False
    for item, name in zip(runs, PATHOLOGIES, strict=True):
        if not (isinstance(item, list) and len(item) == 2 and item[0] == name):
            return False
        history = item[1]
        if not isinstance(history, dict) or set(history) != set(HISTORY_FIELDS):
            return False
        for values in history.values():
            values = values if isinstance(values, list) else [values]
            if not all(type(v) in (int, float) for v in values):
                return False
    return True


def given_histories(seed: int = 0) -> dict:
    """``{pathology: history dict}`` for the runs the notebook shows."""
    return dict(_histories(seed))


def _run_diagnosis(fn, inputs):
    return str(fn(dict(inputs["history"])))


def _diagnosis_reference(history):
    return diagnose(history).name


def _produced_pattern(inputs) -> str:
    """The pattern the run was made to show (not what a rule makes of it)."""
    for name, history in _histories(inputs["seed"], inputs["varied"]):
        if history == inputs["history"]:
            return name
    raise ValueError("not one of the lab's runs")


def _diagnosis_cases(seed: int, varied: bool = False):
    cases = [
        (f"the {name} run (seed {seed})", dict(history=h, seed=seed, varied=varied))
        for name, h in _histories(seed, varied)
    ]
    if varied:  # in an order of its own, so counting calls gives nothing away
        random.Random(seed).shuffle(cases)
    return cases


def _q1_public():
    return [
        _indices_case(10, 3, False),
        _indices_case(10, 3, True),
        _indices_case(8, 4, True, seed=5),
        _indices_case(5, 10, True),
    ]


def _q2_hidden(seed):
    return [
        _step_case(1, 1.0, seed),
        _step_case(33, 0.05, seed + 1, repeats=5),
        _step_case(8, 0.0, seed + 2),
    ]


def _q3_hidden(seed):
    return [
        _train_case(50, 7, 3, lr=0.1, seed=seed),
        _train_case(9, 9, 2, seed=seed + 1),
        _train_case(31, 1, 1, lr=0.05, seed=seed + 2),
    ]


_SCHEDULE_TOLERANCE = dict(rtol=1e-9, atol=1e-12)
QUESTIONS = declare(__name__, [
    Question(
        "q1", "minibatch_indices", "the batches of one epoch",
        run=_run_indices, reference=minibatch_indices,
        public_cases=_q1_public, hidden_cases=_indices_hidden,
        points=2, rtol=0, atol=0,
        hints={"TypeError": "the signature is (n, batch_size, *, shuffle, generator)"},
        forbidden=(
            "course_lib.train.minibatch_indices", "course_lib.data.make_loader",
            "torch.utils.data.DataLoader", "torch.utils.data.BatchSampler",
            "torch.utils.data.RandomSampler", "torch.utils.data.SubsetRandomSampler",
        ),
    ),
    Question(
        "q2", "sgd_step", "one SGD step", run=_run_step, reference=sgd_step,
        public_cases=lambda: [
            _step_case(4, 0.1),
            _step_case(16, 0.5, seed=1),
            _step_case(6, 0.2, repeats=3),
        ],
        hidden_cases=_q2_hidden, points=2, rtol=1e-10, atol=1e-12,
        hints={"RuntimeError": "update the weights inside `with torch.no_grad():`"},
        forbidden=(
            "torch.optim.SGD", "course_lib.train.sgd_step", "course_lib.optim.SGD",
        ),
    ),
    Question(
        "q3", "train", "the mini-batch SGD loop", run=_run_train,
        reference=_train_reference,
        public_cases=lambda: [_train_case(20, 5, 1), _train_case(23, 5, 2, seed=3)],
        hidden_cases=_q3_hidden, points=2, rtol=1e-10, atol=1e-12,
        forbidden=(
            "course_lib.train.minibatch_sgd", "course_lib.train.fit",
            "course_lib.train.minibatch_indices", "course_lib.train.sgd_step",
            "torch.optim.SGD", "course_lib.optim.SGD", "torch.utils.data.DataLoader",
        ),
    ),
    Question(
        "q4", "step_decay", "step decay", run=_run_schedule,
        reference=_step_decay_reference,
        public_cases=lambda: [
            _schedule_case(30, step_size=10, gamma=0.1),
            _schedule_case(12, step_size=4, gamma=0.5),
        ],
        hidden_cases=lambda s: [
            _schedule_case(40, step_size=1 + s % 7, gamma=0.3),
            _schedule_case(5, step_size=5, gamma=0.9),
        ],
        **_SCHEDULE_TOLERANCE,
        forbidden=("course_lib.schedules.StepDecay", "torch.optim.lr_scheduler.StepLR"),
    ),
    Question(
        "q5", "cosine", "cosine decay", run=_run_schedule, reference=_cosine_reference,
        public_cases=lambda: [
            _schedule_case(11, total_steps=10), _schedule_case(101, total_steps=100)
        ],
        hidden_cases=lambda s: [
            _schedule_case(30, total_steps=17 + s % 5), _schedule_case(3, total_steps=1)
        ],
        **_SCHEDULE_TOLERANCE,
        forbidden=(
            "course_lib.schedules.Cosine", "torch.optim.lr_scheduler.CosineAnnealingLR",
        ),
    ),
    Question(
        "q6", "warmup_cosine", "linear warm-up, then cosine", run=_run_schedule,
        reference=_warmup_cosine_reference,
        public_cases=lambda: [
            _schedule_case(20, warmup_steps=5, total_steps=20),
            _schedule_case(100, warmup_steps=10, total_steps=100),
        ],
        hidden_cases=lambda s: [
            _schedule_case(60, warmup_steps=1 + s % 9, total_steps=50),
            _schedule_case(5, warmup_steps=4, total_steps=5),
        ],
        **_SCHEDULE_TOLERANCE,
        forbidden=(
            "course_lib.schedules.Warmup", "course_lib.schedules.Cosine",
            "torch.optim.lr_scheduler.CosineAnnealingLR",
            "torch.optim.lr_scheduler.LinearLR",
            "torch.optim.lr_scheduler.SequentialLR",
        ),
    ),
    Question(
        "q7", "diagnose_curve", "naming a learning curve", run=_run_diagnosis,
        reference=_diagnosis_reference, expected=_produced_pattern,
        public_cases=lambda: _diagnosis_cases(0),
        hidden_cases=lambda s: _diagnosis_cases(100 + s % 1000, varied=True),
        points=3, forbidden=("course_lib.diagnose.diagnose",),
    ),
])  # fmt: skip
