"""Grade a folder of submitted lab notebooks.

``python -m course_lib.labs.grade LAB SUBMISSIONS [--out DIR] [--seed N]``
(``make grade LAB=lab01_sgd SUBMISSIONS=dir``) grades every ``*.ipynb`` under
``SUBMISSIONS``, whatever it is called. Each notebook is read into memory at
the start, then, in a worker process of its own (``--jobs`` at a time):

1. it is executed afresh with nbclient in a temporary folder, against a
   private copy of ``course_lib``, with a per-cell timeout and a wall-clock
   budget, carrying on past errors. This run only reports: what its cells
   printed (the inline checks) and the errors they raised;
2. its kernel and every process it started are killed
   (:mod:`course_lib.labs.sandbox`);
3. its answers are computed in a *fresh* process (:mod:`course_lib.labs.answers`)
   that runs only the notebook's definitions, on the public and the hidden
   cases, each under the question's forbidden-use watch. Patching ``torch``,
   builtins or the checks in a cell changes nothing there;
4. the outputs are judged here against the reference outputs, which never
   leave the grader's processes, each case inside its own error boundary.

After each notebook, ``course_lib``'s own files, the submissions folder,
the grades folder and the course cache are compared with the copies read at
the start: a change is undone and reported against the submissions that
were running. ``grades.csv`` (one row per submission, one column per
question), ``grades.json`` (every case's verdict and message) and
``run.json`` (the seed and limits, for the instructor) are written at the
end, each through a rename. Bad arguments (an unknown lab, a folder that
does not exist or holds no notebooks) get one line and exit status 2.

What this guarantees without a container, and what one adds, is in
``labs/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
import torch

from ..data import cache_dir
from . import answers as answers_process
from . import get_lab, sandbox
from .checks import (
    NOT_ALLOWED,
    NoAnswer,
    NotImplementedYet,
    StudentError,
    forbidden_use,
    judge,
)

MAX_NOTEBOOK_BYTES = 32 * 2**20  # a lab notebook with its figures is ~1 MB
#: Bytes of a submission's answers read at most (they are kilobytes).
MAX_ANSWERS_BYTES = 16 * 2**20
MAX_FILE_BYTES = 256 * 2**20  # RLIMIT_FSIZE of every graded process


@dataclass(frozen=True)
class Limits:
    """Time and memory a submission may use."""

    cell_timeout: float = 60.0  # seconds per notebook cell (half that per case)
    budget: float = 600.0  # seconds for the notebook, and again for its answers
    memory: int = 8 * 2**30  # bytes of address space per process


@dataclass
class QuestionResult:
    score: float
    points: float
    cases: list = field(default_factory=list)  # [{"case", "passed", "message"}]


@dataclass
class Result:
    student: str
    notebook: str
    questions: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)  # what went wrong while executing
    printed: str = ""  # what the notebook's own cells printed (its check results)
    seconds: float = 0.0  # everything: the notebook, its answers, the judging
    notebook_seconds: float = 0.0  # executing the notebook alone
    tampering: list = field(default_factory=list)  # files it changed, undone

    @property
    def total(self) -> float:
        return sum(q.score for q in self.questions.values())


def _unpack(answer):
    """Turn an error record of the answers process back into an exception."""
    if isinstance(answer, dict) and set(answer) == {"__error__", "message"}:
        kind, message = answer["__error__"], answer["message"]
        if kind == "NotImplementedYet":
            return NotImplementedYet(message)
        if kind == "NoAnswer":
            return NoAnswer(message)
        return StudentError(kind, message)
    return answer


def _printed(cells) -> str:
    return "".join(
        "".join(out.get("text", ""))
        for cell in cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )[-20_000:]


def _execute(nb, workdir: Path, limits: Limits, env: dict) -> list[str]:
    """Run ``nb`` in ``workdir``; return the errors its cells raised.

    When ``limits.budget`` runs out, the kernel and everything under it are
    killed (a cell that ignores interrupts would otherwise cost a cell
    timeout per remaining cell).
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    client = NotebookClient(
        nb, timeout=int(limits.cell_timeout), kernel_name="python3",
        allow_errors=True, interrupt_on_timeout=True, startup_timeout=120,
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        resources={"metadata": {"path": str(workdir)}},
    )  # fmt: skip
    out_of_time = threading.Event()

    def stop():
        out_of_time.set()
        sandbox.kill_descendants(reap=False)

    timer = threading.Timer(limits.budget, stop)
    timer.start()
    try:
        client.execute(env=env)
    except DeadKernelError as err:
        if out_of_time.is_set():
            return [f"the notebook ran past its budget of {limits.budget:g} s and "
                    "was stopped"]  # fmt: skip
        return [f"the kernel died: {' '.join(str(err).split())[:200]}"]
    except Exception as err:  # noqa: BLE001 - a broken submission is a finding
        return [f"execution failed: {type(err).__name__}: {str(err)[:200]}"]
    finally:
        timer.cancel()
    errors = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") != "error":
                continue
            if out.get("ename") == "KeyboardInterrupt":  # nbclient's timeout interrupt
                errors.append(f"cell {i}: timed out after {limits.cell_timeout:g} s")
            else:
                text = f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
                errors.append(" ".join(text.split())[:300])  # one line
    return errors


def _compute_answers(lab, cells, inputs, folder: Path, limits, course, cache):
    """Run :mod:`course_lib.labs.answers` on the notebook's cells; return
    ``(frames file, notes)``. It is repeated once from a clean copy if its
    private course_lib changed while it ran."""
    request = io.BytesIO()
    torch.save({"lab": lab, "cells": cells, "cases": inputs,
                "case_timeout": limits.cell_timeout / 2}, request)  # fmt: skip
    notes = []
    for attempt in (1, 2):
        run_dir = folder / f"answers{attempt}"
        env = sandbox.private_tree(run_dir, course, cache)
        frames = run_dir / "answers.bin"
        with open(frames, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", answers_process.__name__],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.DEVNULL,
                cwd=run_dir / "work", env=env, start_new_session=True,
            )  # fmt: skip
            feeder = threading.Thread(target=_feed, args=(process, request.getvalue()))
            feeder.start()
            try:
                process.wait(timeout=limits.budget)
            except subprocess.TimeoutExpired:
                notes.append(f"computing the answers ran past the budget of "
                             f"{limits.budget:g} s and was stopped")  # fmt: skip
            sandbox.kill_descendants()
            process.wait()
            feeder.join()
        changed = sandbox.changed_files(run_dir / "lib" / "course_lib", course)
        if not changed:
            return frames, notes
        notes.append(f"course_lib/{changed[0]} changed while the answers were "
                     "computed" + ("; computed again from a clean copy"
                                   if attempt == 1 else "; not graded"))  # fmt: skip
    return None, notes


def _feed(process, data: bytes) -> None:
    try:
        process.stdin.write(data)
        process.stdin.close()
    except OSError:  # it died before reading everything
        pass


def load_answers(path, counts: dict) -> tuple[dict, list[str]]:
    """``{key: [outcome per case]}`` from an answers file, and notes.

    Only a regular file is read, and only its first :data:`MAX_ANSWERS_BYTES`;
    payloads are loaded with ``weights_only=True`` (tensors and plain values,
    no code). A case with no frame gets a
    :class:`~course_lib.labs.checks.NoAnswer` saying why.
    """
    stopped = "no answer: computing the answers stopped before this case"
    got = {k: [NoAnswer(stopped)] * n for k, n in counts.items()}
    path, notes = Path(path) if path else None, []
    if path is None or not path.is_file() or path.is_symlink():
        return got, notes
    with open(path, "rb") as f:
        data = f.read(MAX_ANSWERS_BYTES + 1)
    if len(data) > MAX_ANSWERS_BYTES:
        notes.append(f"the answers are over {MAX_ANSWERS_BYTES} bytes; the rest "
                     "was not read")  # fmt: skip
    forbidden = {}
    for kind, payload in answers_process.read_frames(data[:MAX_ANSWERS_BYTES]):
        if kind == answers_process.USED:
            key, _, name = payload.decode(errors="replace").split("\t", 2)
            for k in got if key == "*" else [key]:
                forbidden.setdefault(k, name)
        elif kind == answers_process.TAMPERED:
            what = payload.decode(errors="replace")[:200]
            notes.append(f"its code rebound {what} while being graded; the cases "
                         "after that were not graded")  # fmt: skip
            stopped = f"no answer: the notebook's code rebound {what}"
            got = {k: [NoAnswer(stopped) if isinstance(a, NoAnswer) else a
                       for a in v] for k, v in got.items()}  # fmt: skip
        elif kind == answers_process.ANSWER:
            try:
                key, index, value = torch.load(io.BytesIO(payload), weights_only=True)
                got[key][index] = value
            except Exception:  # noqa: BLE001 - a forged or truncated frame
                notes.append("an answer frame could not be read")
    for key, name in forbidden.items():
        if key in got:
            used = forbidden_use(name)
            got[key] = [used] * counts[key]
    return got, notes


def grade_notebook(lab: str, path: Path, source: bytes, cases: dict, expected: dict,
                   limits: Limits, course: dict, cache: dict) -> Result:  # fmt: skip
    """Execute one submission, compute its answers afresh, score them."""
    questions = get_lab(lab).QUESTIONS
    result = Result(student=Path(path).stem, notebook=str(path))
    start = time.perf_counter()
    inputs = {k: [i for _, i in v] for k, v in cases.items()}  # labels stay here
    frames = None
    with tempfile.TemporaryDirectory(prefix="nb-") as tmp:
        try:
            if len(source) > MAX_NOTEBOOK_BYTES:
                raise ValueError(f"over {MAX_NOTEBOOK_BYTES} bytes")
            nb = nbformat.reads(source.decode("utf-8"), as_version=4)
            cells = [c.source for c in nb.cells if c.cell_type == "code"]
        except Exception as err:  # noqa: BLE001 - unreadable JSON, wrong format...
            nb, result.errors = None, [f"not a readable notebook: {str(err)[:200]}"]
        if nb is not None:
            env = sandbox.private_tree(Path(tmp) / "kernel", course, cache)
            started = time.perf_counter()
            result.errors = _execute(nb, Path(tmp) / "kernel" / "work", limits, env)
            result.notebook_seconds = time.perf_counter() - started
            result.printed = _printed(nb.cells)
            sandbox.kill_descendants()
            frames, notes = _compute_answers(
                lab, cells, inputs, Path(tmp), limits, course, cache
            )
            result.errors += notes
        counts = {k: len(v) for k, v in cases.items()}
        got, notes = load_answers(frames, counts)
        result.errors += notes
    for key, q in questions.items():
        result.questions[key] = _score(q, cases[key], expected[key], got[key])
    result.seconds = time.perf_counter() - start
    return result


def _score(question, cases, expected, answers) -> QuestionResult:
    verdicts = []
    for (label, _), want, got in zip(cases, expected, answers, strict=True):
        try:
            problem = judge(question, want, _unpack(got))
        except Exception as err:  # noqa: BLE001 - judge never raises; a last boundary
            problem = f"the answer could not be judged ({type(err).__name__})"
        verdicts.append(
            {"case": label, "passed": problem is None, "message": problem or ""}
        )
    passed = sum(v["passed"] for v in verdicts)
    if any(v["message"].startswith(NOT_ALLOWED) for v in verdicts):
        passed = 0  # a forbidden object anywhere costs the whole question
    return QuestionResult(
        question.points * passed / len(cases), question.points, verdicts
    )


def prepare(lab: str, seed: int):
    """Public + hidden cases per question, and the reference outputs for them.

    The hidden cases are made with the course cache pointed at a folder of
    their own, deleted afterwards, so no file a notebook could read holds
    anything drawn from ``seed``.
    """
    questions = get_lab(lab).QUESTIONS
    public = {k: q.public_cases() for k, q in questions.items()}
    expected = {k: [q.expected_outputs(i) for _, i in public[k]]
                for k, q in questions.items()}  # fmt: skip
    shared = cache_dir()
    with tempfile.TemporaryDirectory(prefix="hidden-") as tmp:
        sandbox.write_tree(Path(tmp), sandbox.read_tree(shared))
        previous = os.environ.get("COURSE_LIB_CACHE")
        os.environ["COURSE_LIB_CACHE"] = tmp
        try:
            hidden = {k: q.hidden_cases(seed) for k, q in questions.items()}
            for k, q in questions.items():
                expected[k] += [q.expected_outputs(i) for _, i in hidden[k]]
        finally:
            if previous is None:
                os.environ.pop("COURSE_LIB_CACHE")
            else:
                os.environ["COURSE_LIB_CACHE"] = previous
    return {k: public[k] + hidden[k] for k in questions}, expected


def submissions(folder: Path) -> list[Path]:
    """Every ``*.ipynb`` below ``folder`` (not Jupyter's checkpoints), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"SUBMISSIONS must be a folder, got {str(folder)!r}")
    notebooks = sorted(
        p for p in folder.rglob("*.ipynb")
        if ".ipynb_checkpoints" not in p.parts and not p.is_symlink()
    )  # fmt: skip
    if not notebooks:
        raise ValueError(f"SUBMISSIONS folder {str(folder)!r} holds no .ipynb files")
    return notebooks


def _worker_init(memory: int) -> None:
    """A grading worker: adopts orphans, caps memory and files, writes no
    compiled caches (they would count as changes to course_lib)."""
    sys.dont_write_bytecode = True
    sandbox.become_subreaper()
    sandbox.set_limits(memory, MAX_FILE_BYTES)


def _guards(folder: Path, out: Path) -> list:
    package = Path(__file__).resolve().parents[1]
    guards = [sandbox.Guard(package, "course_lib"),
              sandbox.Guard(folder, str(folder), skip=[out]),
              sandbox.Guard(cache_dir(), "the course cache")]  # fmt: skip
    return guards + [sandbox.Guard(out, str(out))]


def grade_folder(
    lab: str, folder: Path, *, seed: int, cell_timeout: float = 60,
    jobs: int | None = None, budget: float = 600, memory_gb: float = 8,
    out: Path | None = None,
):  # fmt: skip
    """Grade every notebook in ``folder``, ``jobs`` at a time (default: cores).

    ``seed`` draws the hidden cases: keep it private when grading for credit
    (the command line draws a random one and records it in the report).
    ``out`` (default ``folder/grades``) is guarded like the submissions.
    """
    get_lab(lab)  # a wrong lab name fails before any work
    notebooks = submissions(folder)
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    limits = Limits(float(cell_timeout), float(budget), int(memory_gb * 2**30))
    # A compiled cache written now into course_lib would look like tampering.
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        sources = {}
        for path in notebooks:
            with open(path, "rb") as f:
                sources[path] = f.read(MAX_NOTEBOOK_BYTES + 1)
        cases, expected = prepare(lab, seed)
        course = sandbox.package_files()
        cache = sandbox.read_tree(cache_dir())
        out = Path(out) if out is not None else Path(folder) / "grades"
        guards = _guards(Path(folder), out)
        context = multiprocessing.get_context("spawn")  # the caller may have threads
        results, suspects_of = {}, {}
        pool = ProcessPoolExecutor(min(jobs, len(notebooks)), mp_context=context,
                                   initializer=_worker_init, initargs=(limits.memory,))
        with pool:
            futures = {
                pool.submit(grade_notebook, lab, p, sources[p], cases, expected,
                            limits, course, cache): p
                for p in notebooks
            }  # fmt: skip
            pending, finished_since = set(futures), []
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    path = futures[future]
                    results[path] = future.result()
                    finished_since.append(path)
                    print(summary_line(results[path]), flush=True)
                changes = [c for g in guards for c in g.restore()]
                if changes:
                    running = [futures[f] for f in pending if f.running()]
                    suspects = finished_since + running
                    for path in suspects:
                        others = [s.stem for s in suspects if s != path]
                        note = [c + (f" (while {', '.join(others)} also ran)"
                                     if others else "") for c in changes]  # fmt: skip
                        suspects_of.setdefault(path, []).extend(note)
                finished_since = []
        for path, notes in suspects_of.items():
            results[path].tampering += notes
        ordered = [results[p] for p in notebooks]
        return ordered
    finally:
        sys.dont_write_bytecode = previous


def summary_line(result: Result) -> str:
    best = sum(q.points for q in result.questions.values())
    parts = []
    for key, q in result.questions.items():
        part = f"{key} {q.score:g}/{q.points:g}"
        failed = [c["message"] for c in q.cases if not c["passed"]]
        if failed:
            part += f" [{failed[0][:60]}]"
        parts.append(part)
    line = (
        f"{result.student}: {result.total:g}/{best:g} in {result.seconds:.0f}s: "
        + ", ".join(parts)
    )
    if result.tampering:
        line += f"; CHANGED FILES: {result.tampering[0][:100]}"
    return line


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a
    reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, newline="")
    os.replace(tmp, path)


def write_reports(results: list[Result], out: Path, run: dict | None = None) -> None:
    """``grades.csv`` and ``grades.json`` in ``out``; ``run.json`` records how
    the grades were made (lab, seed, time limits), for the instructor only."""
    out.mkdir(parents=True, exist_ok=True)
    if run is not None:
        _write_atomically(out / "run.json", json.dumps(run, indent=1))
    keys = list(results[0].questions) if results else []
    with io.StringIO(newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["student", "notebook", *keys, "total", "max", "errors", "tampering"]
        )
        for r in results:
            best = sum(q.points for q in r.questions.values())
            scores = [f"{r.questions[k].score:g}" for k in keys]
            errors = " | ".join(r.errors)[:500]
            tampering = " | ".join(r.tampering)[:500]
            writer.writerow([r.student, r.notebook, *scores, f"{r.total:g}",
                             f"{best:g}", errors, tampering])  # fmt: skip
        _write_atomically(out / "grades.csv", f.getvalue())
    payload = [asdict(r) | {"total": r.total} for r in results]
    _write_atomically(out / "grades.json", json.dumps(payload, indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Grade a folder of lab notebooks.")
    parser.add_argument("lab", help="e.g. lab01_sgd")
    parser.add_argument("submissions", type=Path)
    parser.add_argument("--out", type=Path, help="default: SUBMISSIONS/grades")
    parser.add_argument(
        "--seed", type=int, default=None,
        help="draws the hidden cases (default: a random one, recorded in the report)",
    )  # fmt: skip
    parser.add_argument("--cell-timeout", type=int, default=60, help="seconds per cell")
    parser.add_argument(
        "--budget", type=int, default=600,
        help="seconds for one notebook's run, and again for its answers (600)",
    )  # fmt: skip
    parser.add_argument(
        "--memory", type=float, default=8, help="GiB of memory per process (8)"
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="notebooks graded at once (cores)"
    )
    args = parser.parse_args(argv)
    try:
        get_lab(args.lab)
        for name in ("jobs", "budget", "memory", "cell_timeout"):
            value = getattr(args, name)
            if value is not None and not value > 0:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be a positive number, got {value}")
        submissions(args.submissions)
    except ValueError as err:
        print(f"grade: {err}", file=sys.stderr)
        return 2
    seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    out = args.out or args.submissions / "grades"
    results = grade_folder(
        args.lab, args.submissions, seed=seed, cell_timeout=args.cell_timeout,
        jobs=args.jobs, budget=args.budget, memory_gb=args.memory, out=out,
    )  # fmt: skip
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run = dict(lab=args.lab, seed=seed, cell_timeout=args.cell_timeout,
               budget=args.budget, memory_gb=args.memory, jobs=args.jobs,
               graded_at=when)  # fmt: skip
    write_reports(results, out, run)
    print(f"wrote {out / 'grades.csv'}, {out / 'grades.json'} and {out / 'run.json'}")
    print(f"hidden cases drawn from seed {seed}: --seed {seed} grades the same way")
    return 0


if __name__ == "__main__":
    sys.exit(main())
