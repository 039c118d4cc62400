"""Grade a folder of submitted lab notebooks.

``python -m course_lib.labs.grade LAB SUBMISSIONS [--out DIR] [--seed N]``
(``make grade LAB=lab01_sgd SUBMISSIONS=dir``) grades every ``*.ipynb`` under
``SUBMISSIONS``, whatever it is called. For each one it

1. executes the notebook afresh with nbclient in a temporary folder, with a
   per-cell timeout, carrying on past errors (a syntax error or an endless loop
   costs the cells it breaks, not the whole submission);
2. appends one extraction cell per question (:func:`extraction_cell`) that
   re-imports ``course_lib`` (undoing any monkeypatching of it the notebook
   did) and calls :func:`write_answers`, which runs the student's function on
   the public and hidden cases and saves its outputs with ``torch.save``;
3. loads those outputs here, in the grader's own process, and compares them
   with the reference outputs computed here, so that nothing a notebook
   patched (``torch.allclose``, ``assert_close``, the check functions) can
   change a verdict.

Notebooks are graded ``--jobs`` at a time (default: the number of cores), each
in its own kernel. It writes ``grades.csv`` (one row per submission, one
column per question) and ``grades.json`` (every case's verdict and message)
and prints one line per student. Bad arguments (an unknown lab, a folder
that does not exist or holds no notebooks) get one line and exit status 2.
Submissions run as the grading user: grade untrusted work inside a
container or VM.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing
import os
import secrets
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from . import get_lab
from .checks import (
    NOT_ALLOWED,
    NoAnswer,
    NotImplementedYet,
    StudentError,
    judge,
    run_one,
)


def extraction_cell(
    lab: str, key: str, cases: str, answers: str, case_timeout: float = 20.0
) -> str:
    """The cell appended to a submission to write its answers to ``key``.

    It drops every ``course_lib`` module the notebook imported (a fresh
    import undoes monkeypatching of course_lib) and calls :func:`write_answers`.
    """
    call = (
        f"write_answers({lab!r}, {key!r}, globals(), {cases!r}, {answers!r}, "
        f"case_timeout={case_timeout!r})"
    )
    return (
        "import importlib as _importlib, sys as _sys\n"
        "for _name in [m for m in _sys.modules if m.split('.')[0] == 'course_lib']:\n"
        "    del _sys.modules[_name]\n"
        f"_importlib.import_module('course_lib.labs.grade').{call}\n"
    )


class CaseTimeout(BaseException):  # not caught by run_one's `except Exception`
    """One case of an answer ran past its time limit (in :func:`write_answers`)."""


def _on_alarm(signum, frame):
    raise CaseTimeout


def write_answers(
    lab: str, key: str, namespace: dict, cases, answers, case_timeout: float = 20.0
):
    """Run the notebook's answer to ``key`` on every case; save the outputs.

    ``namespace`` is the notebook's globals; the answer is the function named
    as the question says. Each output, or the error it raised (as a plain
    record), goes into the list saved with ``torch.save`` at ``answers``. A
    case that runs past ``case_timeout`` seconds is recorded as timed out and
    the cases after it are not run, so an endless loop costs one time limit.
    """
    question = get_lab(lab).QUESTIONS[key]
    inputs = torch.load(cases, weights_only=True)[key]
    fn = namespace.get(question.function)
    if not callable(fn):
        missing = f"no function named {question.function} in the notebook"
        torch.save([_error("NoAnswer", missing)] * len(inputs), answers)
        return
    outputs = []
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for case in inputs:
            signal.setitimer(signal.ITIMER_REAL, case_timeout)
            try:
                outputs.append(_record(run_one(question, fn, case)))
            except CaseTimeout:
                late = f"no answer: the case ran past {case_timeout:g} s"
                outputs.append(_error("NoAnswer", late))
                break
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    skipped = "no answer: not run, an earlier case timed out"
    outputs += [_error("NoAnswer", skipped)] * (len(inputs) - len(outputs))
    torch.save(outputs, answers)


def _error(kind: str, message: str) -> dict:
    return {"__error__": kind, "message": message}


def _record(output):
    if isinstance(output, StudentError):
        return _error(output.type_name, output.message)
    if isinstance(output, Exception):  # NotImplementedYet
        return _error(type(output).__name__, str(output))
    return output


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
    seconds: float = 0.0

    @property
    def total(self) -> float:
        return sum(q.score for q in self.questions.values())


def _unpack(answer):
    """Turn an error record written in the student's kernel back into an exception."""
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


def _execute(nb, workdir: Path, cell_timeout: int) -> list[str]:
    """Run ``nb`` in ``workdir``; return the errors its cells raised."""
    client = NotebookClient(
        nb, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
        interrupt_on_timeout=True, startup_timeout=120,
        resources={"metadata": {"path": str(workdir)}},
    )  # fmt: skip
    # The kernel runs in a session of its own; shutting it down kills its
    # process group, so what the notebook left running in it ends too.
    try:
        client.execute()
    except DeadKernelError as err:
        return [f"the kernel died: {err}"]
    except Exception as err:  # noqa: BLE001 - a broken submission is a finding
        return [f"execution failed: {type(err).__name__}: {err}"]
    errors = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") != "error":
                continue
            if out.get("ename") == "KeyboardInterrupt":  # nbclient's timeout interrupt
                errors.append(f"cell {i}: timed out after {cell_timeout} s")
            else:
                text = f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
                errors.append(" ".join(text.split())[:300])  # one line
    return errors


def grade_notebook(
    lab: str, path: Path, cases: dict, expected: dict, cell_timeout: int
):
    """Execute one submission and score it against ``expected``."""
    questions = get_lab(lab).QUESTIONS
    result = Result(student=path.stem, notebook=str(path))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        workdir = Path(tmp)
        # Only the inputs travel to the student's kernel; the labels stay here.
        inputs = {k: [i for _, i in v] for k, v in cases.items()}
        torch.save(inputs, workdir / "cases.pt")
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as err:  # noqa: BLE001 - unreadable JSON, wrong format...
            nb, result.errors = None, [f"not a readable notebook: {err}"]
        if nb is not None:
            own_cells = len(nb.cells)
            for key in questions:
                source = extraction_cell(
                    lab, key, "cases.pt", f"answers_{key}.pt", cell_timeout / 2
                )
                nb.cells.append(nbformat.v4.new_code_cell(source))
            result.errors = _execute(nb, workdir, cell_timeout)
            result.printed = _printed(nb.cells[:own_cells])
        for key, q in questions.items():
            result.questions[key] = _score(
                q, cases[key], expected[key], workdir / f"answers_{key}.pt"
            )
    result.seconds = time.perf_counter() - start
    return result


MAX_ANSWERS_BYTES = 16 * 2**20  # one question's outputs are kilobytes; a cap


def load_answers(path: Path):
    """The answers a submission wrote, or a :class:`NoAnswer` saying why not.

    Only a regular file below :data:`MAX_ANSWERS_BYTES` is read (a named pipe
    would block ``torch.load``, a huge file would fill the grader's memory),
    and only with ``weights_only=True`` (tensors and plain values, no code).
    """
    path = Path(path)
    if not path.exists():
        missing = "no answer: the grading cell did not finish (time-out or crash)"
        return NoAnswer(missing)
    if not path.is_file() or path.is_symlink():
        return NoAnswer("no answer: the answers file is not a regular file")
    if path.stat().st_size > MAX_ANSWERS_BYTES:
        return NoAnswer(f"no answer: the answers are over {MAX_ANSWERS_BYTES} bytes")
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - a forged or truncated file
        return NoAnswer("no answer: the answers file could not be read")


def _score(question, cases, expected, answers_file: Path) -> QuestionResult:
    labels = [label for label, _ in cases]
    answers = load_answers(answers_file)
    if isinstance(answers, NoAnswer):
        answers = [answers] * len(cases)
    if not isinstance(answers, list) or len(answers) != len(cases):
        answers = [NoAnswer("no answer: malformed answers file")] * len(cases)
    verdicts = []
    for label, want, got in zip(labels, expected, answers, strict=True):
        problem = judge(question, want, _unpack(got))
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
    """Public + hidden cases per question, and the reference outputs for them."""
    questions = get_lab(lab).QUESTIONS
    cases = {k: q.public_cases() + q.hidden_cases(seed) for k, q in questions.items()}
    expected = {
        k: [q.expected_outputs(inputs) for _, inputs in cases[k]]
        for k, q in questions.items()
    }
    # Only the inputs travel to the student's kernel; labels stay here.
    return cases, expected


def submissions(folder: Path) -> list[Path]:
    """Every ``*.ipynb`` below ``folder`` (not Jupyter's checkpoints), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"SUBMISSIONS must be a folder, got {str(folder)!r}")
    notebooks = sorted(
        p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
    )
    if not notebooks:
        raise ValueError(f"SUBMISSIONS folder {str(folder)!r} holds no .ipynb files")
    return notebooks


def grade_folder(
    lab: str, folder: Path, *, seed: int, cell_timeout: int = 60,
    jobs: int | None = None,
):  # fmt: skip
    """Grade every notebook in ``folder``, ``jobs`` at a time (default: cores).

    ``seed`` draws the hidden cases: keep it private when grading for credit
    (the command line draws a random one and records it in the report).
    """
    get_lab(lab)  # a wrong lab name fails before any work
    notebooks = submissions(folder)
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    cases, expected = prepare(lab, seed)
    args = (cases, expected, cell_timeout)
    if jobs == 1 or len(notebooks) == 1:
        results = [grade_notebook(lab, path, *args) for path in notebooks]
        for result in results:
            print(summary_line(result), flush=True)
        return results
    # Each notebook runs in its own kernel; the kernels are driven from worker
    # processes (spawned: the caller may have threads) so they run side by side.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(notebooks)), mp_context=context) as pool:
        futures = [pool.submit(grade_notebook, lab, p, *args) for p in notebooks]
        results = []
        for future in futures:
            results.append(future.result())
            print(summary_line(results[-1]), flush=True)
    return results


def summary_line(result: Result) -> str:
    best = sum(q.points for q in result.questions.values())
    parts = []
    for key, q in result.questions.items():
        part = f"{key} {q.score:g}/{q.points:g}"
        failed = [c["message"] for c in q.cases if not c["passed"]]
        if failed:
            part += f" [{failed[0][:60]}]"
        parts.append(part)
    return (
        f"{result.student}: {result.total:g}/{best:g} in {result.seconds:.0f}s: "
        + ", ".join(parts)
    )


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
        writer.writerow(["student", "notebook", *keys, "total", "max", "errors"])
        for r in results:
            best = sum(q.points for q in r.questions.values())
            scores = [f"{r.questions[k].score:g}" for k in keys]
            errors = " | ".join(r.errors)[:500]
            writer.writerow(
                [r.student, r.notebook, *scores, f"{r.total:g}", f"{best:g}", errors]
            )
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
        "--jobs", type=int, default=None, help="notebooks graded at once (cores)"
    )
    args = parser.parse_args(argv)
    try:
        get_lab(args.lab)
        if args.jobs is not None and args.jobs < 1:
            raise ValueError(f"--jobs must be a positive integer, got {args.jobs}")
        submissions(args.submissions)
    except ValueError as err:
        print(f"grade: {err}", file=sys.stderr)
        return 2
    seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    results = grade_folder(
        args.lab, args.submissions, seed=seed, cell_timeout=args.cell_timeout,
        jobs=args.jobs,
    )  # fmt: skip
    out = args.out or args.submissions / "grades"
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run = dict(lab=args.lab, seed=seed, cell_timeout=args.cell_timeout,
               jobs=args.jobs, graded_at=when)  # fmt: skip
    write_reports(results, out, run)
    print(f"wrote {out / 'grades.csv'}, {out / 'grades.json'} and {out / 'run.json'}")
    print(f"hidden cases drawn from seed {seed}: --seed {seed} grades the same way")
    return 0


if __name__ == "__main__":
    sys.exit(main())
