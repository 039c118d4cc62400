"""The grader against submissions written to cheat, tamper, crash, hang and flood.

Every grading run here is the real command line, ``python -m
course_lib.labs.grade``, in a subprocess that imports a throw-away copy of
``course_lib`` (so an attack that edits course_lib's files on disk hits the
copy, never this checkout) with a cache folder of its own.

- **Cheats** (one folder per lab): answers that call what the question asks
  to write (course_lib's solutions, the lab's references, torch's own
  optimizers, samplers and schedulers), however they reach it, and a
  notebook that patches ``torch.save``, builtins, the profiler and the checks.
  Each cheated question scores 0 with a verdict naming what was used; the
  honest solution beside them keeps full marks.
- **Tampering, crashes, hangs, floods** (one folder, lab 1): notebooks that
  edit the checks and a reference on disk, poison the course cache, overwrite
  and delete a classmate's notebook, leave a process in a session of its own
  that rewrites the grades after the grader exits, return unjudgeable values
  (``10**400``, float32, a 50 MB string), ignore interrupts and time limits,
  and allocate without bound. Two honest submissions graded alone, then
  beside these, then alone again get the same grades; every file is as it
  was; no process is left; each change is reported against its notebook.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from test_grading import answers_and_checks, broken_answer

from course_lib.data import cache_dir
from course_lib.labs import get_lab

ROOT = Path(__file__).resolve().parents[1]
NOT_ALLOWED = "not allowed: it uses "


def notebook(*cells: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    return nb


def solution(lab: str):
    """The lab's solution without its demos: imports, answers and checks."""
    return answers_and_checks(nbformat.read(ROOT / "labs" / lab / "solution.ipynb", 4))


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A copy of course_lib and of the course cache for the grader to run on."""
    base = tmp_path_factory.mktemp("course")
    shutil.copytree(ROOT / "course_lib", base / "lib" / "course_lib",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copytree(cache_dir(), base / "cache") if cache_dir().is_dir() else (
        base / "cache"
    ).mkdir()
    return base


def grade(course: Path, lab: str, folder: Path, *options: str, timeout=900):
    """Run the grader's command line on ``folder``; return ``{student: result}``."""
    env = dict(os.environ, PYTHONPATH=str(course / "lib"),
               COURSE_LIB_CACHE=str(course / "cache"),
               PYTHONDONTWRITEBYTECODE="1")  # fmt: skip
    command = [sys.executable, "-m", "course_lib.labs.grade", lab, str(folder),
               "--seed", "5", "--jobs", "2", "--cell-timeout", "20",
               *options]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=course, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((folder / "grades" / "grades.json").read_text())
    return {r["student"]: r for r in report}


def scores(results: dict) -> dict:
    return {name: {k: q["score"] for k, q in r["questions"].items()}
            for name, r in results.items()}  # fmt: skip


def assert_cheated(result: dict, used: dict) -> None:
    """Each question in ``used`` scored 0, its verdict naming ``used[key]``."""
    for key, name in used.items():
        q = result["questions"][key]
        message = q["cases"][0]["message"]
        assert q["score"] == 0, (result["student"], key, q)
        assert message.startswith(NOT_ALLOWED + name), (result["student"], key, message)


# --------------------------------------------------------------------- cheats

LAB1_COURSE_LIB = """\
import torch
from course_lib.train import minibatch_indices, sgd_step, minibatch_sgd
from course_lib.schedules import StepDecay, Cosine, Warmup
from course_lib.diagnose import diagnose

def train(model, X, y, *, lr, batch_size, num_epochs, seed):
    return minibatch_sgd(model, X, y, lr=lr, batch_size=batch_size,
                         num_epochs=num_epochs, seed=seed)

def step_decay(step, step_size, gamma):
    return StepDecay(step_size, gamma)(step)

def cosine(step, total_steps):
    return Cosine(total_steps)(step)

def warmup_cosine(step, warmup_steps, total_steps):
    return Warmup(Cosine(total_steps - warmup_steps), warmup_steps)(step)

def diagnose_curve(history):
    return diagnose(history).name
"""

LAB1_TORCH = """\
import torch
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler
from torch.optim.lr_scheduler import StepLR, CosineAnnealingLR, LinearLR, SequentialLR

def minibatch_indices(n, batch_size, *, shuffle, generator):
    order = (RandomSampler(range(n), generator=generator) if shuffle
             else SequentialSampler(range(n)))
    return [torch.tensor(b) for b in BatchSampler(order, batch_size, False)]

def sgd_step(model, loss_fn, X, y, lr):
    opt = getattr(torch.optim, "S" + "GD")(model.parameters(), lr=lr)
    opt.zero_grad()
    loss = loss_fn(model(X), y)
    loss.backward()
    opt.step()
    return loss.item()

def _factor(make, step):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Optimizer([p], {"lr": 1.0})
    opt.step = lambda: None
    scheduler = make(opt)
    for _ in range(step):
        scheduler.step()
    return opt.param_groups[0]["lr"]

def step_decay(step, step_size, gamma):
    return _factor(lambda o: StepLR(o, step_size, gamma), step)

def cosine(step, total_steps):
    return _factor(lambda o: CosineAnnealingLR(o, total_steps), step)

def warmup_cosine(step, warmup_steps, total_steps):
    return _factor(lambda o: SequentialLR(o, [
        LinearLR(o, 1e-3, 1.0, warmup_steps),
        CosineAnnealingLR(o, total_steps - warmup_steps)], [warmup_steps]), step)
"""


def calls_the_references(lab: str) -> str:
    """Every answer a wrapper that calls the lab's own reference."""
    source = f"from course_lib.labs.{lab} import QUESTIONS as _Q\n"
    for key, q in get_lab(lab).QUESTIONS.items():
        source += (f"\ndef {q.function}(*args, **kwargs):\n"
                   f"    return _Q[{key!r}].reference(*args, **kwargs)\n")  # fmt: skip
    return source


LAB2_SUBCLASSES = """\
import torch

class MomentumSGD(torch.optim.SGD):
    pass

class RMSProp(torch.optim.RMSprop):
    pass

class Adam(torch.optim.Adam):
    pass
"""

LAB2_CAPTURED = """\
import torch
_step = torch.optim.Adam.step  # a method captured before the answer runs

class RMSProp(torch.optim.Optimizer):
    _inner_class = getattr(torch.optim, "RMS" + "prop")  # a computed name

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8):
        self._inner = self._inner_class(params, lr=lr, alpha=alpha, eps=eps)
        super().__init__(self._inner.param_groups, {})

    def step(self, closure=None):
        return self._inner.step(closure)

class Adam(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=0, amsgrad=False,
                        maximize=False, foreach=None, capturable=False,
                        differentiable=False, fused=None, decoupled_weight_decay=False)
        super().__init__(params, defaults)

    def step(self, closure=None):
        return _step(self, closure)
"""

# Every patch a student might try, in one cell after the stubs: the answers
# written, the comparisons, the watch for forbidden calls, the checks.
PATCH_EVERYTHING = """\
import builtins, sys, torch, torch.testing
import course_lib.labs.checks as _checks
_save = torch.save
def _cheat_save(obj, f, *args, **kwargs):
    return _save(obj, f, *args, **kwargs)
torch.save = _cheat_save
torch.allclose = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
builtins.isinstance = lambda obj, kind: True
sys.setprofile = lambda *a, **k: None
_checks.judge = lambda *a, **k: None
_checks.run_one = lambda q, fn, inputs, **k: q.run(q.reference, inputs)
"""

LAB3_COURSE_LIB = """\
import torch
from torch.utils.data import DistributedSampler
from course_lib.parallel import average_gradients, accumulate_gradients
from course_lib import parallel as _p

def shard_batch(X, y, rank, world_size):
    idx = list(DistributedSampler(range(len(X)), world_size, rank, shuffle=False))
    return X[idx], y[idx]

def scaled_lr(step, base_lr, base_batch_size, batch_size, warmup_steps):
    lr, warmup = _p.warmup_linear_scaling(base_lr, base_batch_size, batch_size,
                                          warmup_steps)
    return lr * warmup(step)
"""


class TestCheatsScoreZeroWithAVerdictNamingWhatTheyUsed:
    """One grader call per lab (a class, so xdist's loadscope can run them
    side by side)."""

    def test_lab1(self, course, tmp_path):
        write(tmp_path, {"imports_course_lib": notebook(LAB1_COURSE_LIB),
                         "uses_torch": notebook(LAB1_TORCH),
                         "refs": notebook(calls_the_references("lab01_sgd")),
                         })  # fmt: skip
        r1 = grade(course, "lab01_sgd", tmp_path, "--budget", "60")
        assert_cheated(r1["imports_course_lib"], {
            "q1": "course_lib.train.minibatch_indices",
            "q2": "course_lib.train.sgd_step",
            "q3": "course_lib.train", "q4": "course_lib.schedules.StepDecay",
            "q5": "course_lib.schedules.Cosine", "q6": "course_lib.schedules",
            "q7": "course_lib.diagnose.diagnose"})  # fmt: skip
        assert_cheated(r1["uses_torch"], {
            "q1": "torch.utils.data.", "q2": "torch.optim.SGD",
            "q4": "torch.optim.lr_scheduler.StepLR",
            "q5": "torch.optim.lr_scheduler.CosineAnnealingLR",
            "q6": "torch.optim.lr_scheduler."})  # fmt: skip
        assert_cheated(r1["refs"], dict.fromkeys(get_lab("lab01_sgd").QUESTIONS,
                                                 "course_lib."))  # fmt: skip

    def test_lab2(self, course, tmp_path):
        student = nbformat.read(ROOT / "labs" / "lab02_optim" / "lab02_optim.ipynb", 4)
        patched = copy.deepcopy(student)
        patched.cells.append(nbformat.v4.new_code_cell(PATCH_EVERYTHING))
        imports = (
            "from course_lib.optim import Adam, RMSprop as RMSProp, SGD as MomentumSGD"
        )
        write(tmp_path, {"subclasses": notebook(LAB2_SUBCLASSES),
                         "imports_course_lib": notebook(imports),
                         "captured": notebook(LAB2_CAPTURED),
                         "patches_everything": patched,
                         "honest": solution("lab02_optim")})  # fmt: skip
        r2 = grade(course, "lab02_optim", tmp_path, "--budget", "30")
        assert_cheated(r2["subclasses"], {"q1": "torch.optim.SGD",
                                          "q2": "torch.optim.RMSprop",
                                          "q3": "torch.optim.Adam"})  # fmt: skip
        assert_cheated(r2["imports_course_lib"], {
            "q1": "course_lib.optim.SGD", "q2": "course_lib.optim.RMSprop",
            "q3": "course_lib.optim.Adam"})  # fmt: skip
        assert_cheated(r2["captured"], {"q2": "torch.optim.RMSprop",
                                        "q3": "torch.optim.Adam"})  # fmt: skip
        patched = r2["patches_everything"]
        assert patched["total"] == 0
        for q in patched["questions"].values():  # graded as the stubs they are
            assert "is not implemented yet" in q["cases"][0]["message"], q
        assert r2["honest"]["total"] == 7, scores(r2)["honest"]

    def test_lab3(self, course, tmp_path):
        write(tmp_path, {"imports_course_lib": notebook(LAB3_COURSE_LIB),
                         "refs": notebook(calls_the_references("lab03_parallel")),
                         })  # fmt: skip
        r3 = grade(course, "lab03_parallel", tmp_path, "--budget", "60")
        assert_cheated(r3["imports_course_lib"], {
            "q1": "torch.utils.data.DistributedSampler",
            "q2": "course_lib.parallel.average_gradients",
            "q3": "course_lib.parallel.accumulate_gradients",
            "q4": "course_lib.parallel.warmup_linear_scaling"})  # fmt: skip
        assert_cheated(r3["refs"], dict.fromkeys(get_lab("lab03_parallel").QUESTIONS,
                                                 "course_lib."))  # fmt: skip


# ------------------------------------------------ tampering, crashes, floods

MARKER = "grader-escapee-7f3a"


def tampering_notebooks(course: Path, folder: Path) -> dict:
    """The attacks, given the paths a determined student could find (the
    grader's course_lib, its cache and the submissions folder)."""
    lib = course / "lib" / "course_lib" / "labs"
    grades = folder / "grades"
    escapee = f"""\
import os, time
from pathlib import Path
# {MARKER}
time.sleep(8)
for name in ("grades.csv", "grades.json"):
    Path({str(grades)!r}, name).write_text("hacked")
Path({str(folder / "escaped.txt")!r}).write_text("still running")
"""
    return {
        "edits_checks": notebook(f"""\
from pathlib import Path
import course_lib
for labs in [Path({str(lib)!r}), Path(course_lib.__file__).parent / "labs"]:
    checks = labs / "checks.py"
    forged = "\\ndef judge(*a, **k):\\n    return None\\n"
    checks.write_text(checks.read_text() + forged)
    lab = labs / "lab01_sgd.py"
    lab.write_text(lab.read_text().replace(
        "def _step_decay_reference(step, step_size, gamma):",
        "def _step_decay_reference(step, step_size, gamma):\\n    return 0.0"))
    cache = labs / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "checks.cpython-311.pyc").write_bytes(b"poison")
"""),
        "poisons_cache": notebook(f"""\
from pathlib import Path
from course_lib.data import cache_dir
for folder in [Path({str(course / "cache")!r}), cache_dir()]:
    for path in folder.glob("*"):
        path.write_text('[["wrong", {{}}]]')
    (folder / "extra.json").write_text("{{}}")
"""),
        "vandal": notebook(f"""\
from pathlib import Path
folder = Path({str(folder)!r})
solution = Path({str(ROOT / "labs" / "lab01_sgd" / "solution.ipynb")!r})
(folder / "honest_wrong.ipynb").write_bytes(solution.read_bytes())
(folder / "honest_full.ipynb").unlink()
(folder / "grades").mkdir(exist_ok=True)
(folder / "grades" / "grades.csv").write_text("student,total\\nvandal,12\\n")
"""),
        "escapee": notebook(f"""\
import os, subprocess, sys
# in a session of its own, twice forked: not in the kernel's process group
if os.fork() == 0:
    os.setsid()
    subprocess.Popen([sys.executable, "-c", {escapee!r}], start_new_session=True)
    os._exit(0)
"""),
        "unjudgeable": notebook("""\
import torch

def minibatch_indices(n, batch_size, *, shuffle, generator):
    return list(torch.arange(n, dtype=torch.float32).split(batch_size))

def step_decay(step, step_size, gamma):
    return 10**400

def cosine(step, total_steps):
    return "x" * (5 * 2**20)

class Weird(dict):
    def __reduce__(self):
        raise RuntimeError("cannot pickle me")

def warmup_cosine(step, warmup_steps, total_steps):
    return Weird(a=1)

def diagnose_curve(history):
    return "y" * (50 * 2**20)
"""),
        "ignores_interrupts": notebook(
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)",
            "while True:\n    pass",
            "print('never')",
            """\
import signal

def step_decay(step, step_size, gamma):
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        pass
""",
        ),
        "allocates": notebook(
            "hog = bytearray(12 * 2**30)",  # over the 8 GiB a process may map
            "def cosine(step, total_steps):\n    return len(bytearray(12 * 2**30))",
        ),
    }


def honest_notebooks() -> dict:
    full = solution("lab01_sgd")
    wrong = broken_answer(full, "step_decay", "return gamma ** step")
    return {"honest_full": full, "honest_wrong": wrong}


def write(folder: Path, notebooks: dict) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for name, nb in notebooks.items():
        nbformat.write(nb, folder / f"{name}.ipynb")
    return {p.name: p.read_bytes() for p in folder.glob("*.ipynb")}


def files_of(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*") if p.is_file()}  # fmt: skip


def test_tampering_crashes_and_floods_cost_only_their_own_submission(course, tmp_path):
    lab = "lab01_sgd"
    alone, mixed, again = tmp_path / "alone", tmp_path / "mixed", tmp_path / "again"
    write(alone, honest_notebooks())
    baseline = scores(grade(course, lab, alone))
    assert baseline["honest_full"]["q4"] == 1 and baseline["honest_wrong"]["q4"] < 1

    library, cache = files_of(course / "lib"), files_of(course / "cache")
    attacks = tampering_notebooks(course, mixed)
    originals = write(mixed, honest_notebooks() | attacks)
    start = time.monotonic()
    results = grade(course, lab, mixed, "--budget", "40")
    seconds = time.monotonic() - start
    # 9 notebooks, 2 at a time: at most 5 rounds of two 40 s budgets, plus start-up
    assert seconds < 5 * 2 * 40 + 120, seconds
    got = scores(results)
    assert {k: got[k] for k in baseline} == baseline, got

    # every file is as it was, and each change is reported against its notebook
    assert {p.name: p.read_bytes() for p in mixed.glob("*.ipynb")} == originals
    assert files_of(course / "lib") == library
    assert files_of(course / "cache") == cache

    def reported(name, *words):
        notes = " ".join(results[name]["tampering"])
        for word in words:
            assert word in notes, (name, word, notes)

    reported("edits_checks", "checks.py was changed (restored)", "lab01_sgd.py",
             "checks.cpython-311.pyc was created (removed)")  # fmt: skip
    reported("poisons_cache", "the course cache/", "extra.json was created")
    reported("vandal", "honest_wrong.ipynb was changed (restored)",
             "honest_full.ipynb was deleted (restored)",
             "grades.csv was created")  # fmt: skip

    # no process is left: the escapee would have rewritten the grades by now
    time.sleep(10)
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                 and MARKER in _cmdline(p)]  # fmt: skip
    assert leftovers == []
    assert not (mixed / "escaped.txt").exists()
    assert json.loads((mixed / "grades" / "grades.json").read_text())[0]["student"]

    # crashes, hangs and floods cost their own cases, with a reason
    def message(name, key):
        return results[name]["questions"][key]["cases"][0]["message"]

    unjudgeable = results["unjudgeable"]
    assert "dtype" in message("unjudgeable", "q1")
    assert "too large" in message("unjudgeable", "q4")
    assert "could not convert" in message("unjudgeable", "q5")
    assert len(message("unjudgeable", "q5")) < 1000
    assert "Weird" in message("unjudgeable", "q6")
    assert "over the" in message("unjudgeable", "q7")
    assert len(json.dumps(unjudgeable)) < 200_000  # messages are cut short
    hang = results["ignores_interrupts"]
    assert any("budget" in e for e in hang["errors"]), hang["errors"]
    assert message("ignores_interrupts", "q4").startswith("no answer")
    hog = results["allocates"]
    assert any("MemoryError" in e for e in hog["errors"]), hog["errors"]
    assert "MemoryError" in message("allocates", "q5")

    # the next run, on the same copy of course_lib and cache, grades alike
    write(again, honest_notebooks())
    assert scores(grade(course, lab, again)) == baseline


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
