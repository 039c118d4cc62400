"""Grading, for every lab, on a generated matrix of submissions.

For each lab one grader call grades, in parallel kernels, submissions made
from its own notebooks: the solution (under an odd file name), the untouched
student notebook, one with a wrong answer and a syntax error, one that loops
forever, one that tampers with the checks, one whose answers hand the work
to the lab's references, and one that is not a notebook.
Each must get the score written next to it. These executions are also the
test that the solution and the student notebook run to the end: nbval does
not execute the lab notebooks a second time.
"""

import copy
import csv
import json
import time
from pathlib import Path

import nbformat
import pytest

from course_lib.labs import LABS, get_lab
from course_lib.labs.generate import student_path
from course_lib.labs.grade import grade_folder, main, write_reports

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT = 30  # seconds; the slowest honest cell takes under 10 (lab 2, training)
LAB_SECONDS = 60  # the promise: each lab runs in at most 60 s on a 2-core CPU


def defining_cell(nb, name: str):
    """The code cell of ``nb`` that defines the function or class ``name``."""
    for cell in nb.cells:
        starts = (f"def {name}(", f"class {name}(")
        if cell.cell_type == "code" and cell.source.lstrip().startswith(starts):
            return cell
    raise AssertionError(f"no cell defines {name}")


def tamper_cell(lab: str) -> str:
    """A cell that makes every check of ``lab`` print a pass, whatever the answer."""
    keys = sorted(get_lab(lab).QUESTIONS)
    return f"""\
import torch, torch.testing
import course_lib.labs.checks as _checks, course_lib.labs.{lab} as _lab
torch.allclose = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
_checks.compare = lambda *a, **k: None
_checks.judge = lambda *a, **k: None
def _always(fn):
    print("[pass] (patched)")
    return True
for _key in {keys!r}:
    setattr(_lab, "check_" + _key, _always)
    globals()["check_" + _key] = _always
"""


def insert_after_imports(nb, source: str):
    """Put a cell right after the first cell that imports from course_lib.labs."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "from course_lib.labs." in cell.source:
            nb.cells.insert(i + 1, nbformat.v4.new_code_cell(source))
            return nb
    raise AssertionError("no cell imports the lab's checks")


def replace_definition(nb, name: str, source: str):
    """A copy of ``nb`` whose cell defining ``name`` is ``source`` instead."""
    nb = copy.deepcopy(nb)
    defining_cell(nb, name).source = source
    return nb


def answers_and_checks(nb):
    """``nb`` with only its imports, answers and checks: no demo cells.

    The derived submissions test the grader, not the lab's demos, so they
    skip the training runs the solution shows.
    """
    nb = copy.deepcopy(nb)
    kept = ("import", "from", "def", "class", "check_", "q")  # q1_passed = ...
    nb.cells = [
        c for c in nb.cells
        if c.cell_type == "code" and c.source.lstrip().startswith(kept)
    ]  # fmt: skip
    return nb


def make_submissions(folder: Path, lab: str) -> dict:
    """Write the matrix for ``lab`` into ``folder``; return {student: score}."""
    lab_dir = ROOT / "labs" / lab
    solution = nbformat.read(lab_dir / "solution.ipynb", as_version=4)
    student = nbformat.read(student_path(lab_dir), as_version=4)
    short = answers_and_checks(solution)
    questions = list(get_lab(lab).QUESTIONS.values())
    full = sum(q.points for q in questions)
    # The last two answers are broken below: no earlier answer calls them, so
    # each break costs exactly its question's points.
    last, before = questions[-1], questions[-2]
    wrong = broken_answer(short, before.function, "return None")
    syntax = defining_cell(short, last.function).source.split("\n")[0].rstrip(":")
    wrong = replace_definition(wrong, last.function, f"{syntax}\n    return 1\n")
    # An endless loop that sleeps: it hangs like a busy loop without taking a core.
    hang = "while True:\n        time.sleep(0.1)"
    looping = broken_answer(short, last.function, hang)
    looping.cells.insert(0, nbformat.v4.new_code_cell("import time"))
    delegating = copy.deepcopy(short)
    for q in questions:  # every answer hands the work to the lab's reference
        defining_cell(delegating, q.function).source = (
            f"from course_lib.labs.{lab} import QUESTIONS as _QUESTIONS\n"
            f"{q.function} = _QUESTIONS[{q.key!r}].reference\n"
        )
    matrix = {
        "Alice solution (2)": (solution, full),
        "ivan_delegates_to_the_references": (delegating, 0),
        "bob_untouched": (student, 0),
        "carol_wrong_and_syntax_error": (wrong, full - last.points - before.points),
        "erin_endless_loop": (looping, full - last.points),
        "frank_tampering": (
            insert_after_imports(copy.deepcopy(student), tamper_cell(lab)), 0
        ),
    }
    for name, (nb, _) in matrix.items():
        nbformat.write(nb, folder / f"{name}.ipynb")
    (folder / "gus_not_a_notebook.ipynb").write_text("{ this is not json")
    return {k: score for k, (_, score) in matrix.items()} | {"gus_not_a_notebook": 0}


def broken_answer(nb, name: str, body: str):
    """``nb`` with the answer ``name`` keeping its signature around ``body``.

    A class (an optimizer) keeps a working ``__init__`` and gets ``body`` as
    its ``step``.
    """
    signature = defining_cell(nb, name).source.split("\n")[0]
    if signature.startswith("class"):
        body = body.replace("\n", "\n    ")  # one level deeper, inside step
        source = (
            f"{signature}\n    def __init__(self, params, **options):\n"
            "        super().__init__(params, options)\n\n"
            f"    def step(self, closure=None):\n        {body}\n"
        )
    else:
        source = f"{signature}\n    {body}\n"
    return replace_definition(nb, name, source)


class GradingMatrix:
    """One grader call per lab: every score, and why each lost what it lost.

    A class per lab (made below), so that pytest-xdist's ``--dist loadscope``
    grades the labs on different workers.
    """

    lab: str

    def test_grading_the_matrix_of_submissions(self, tmp_path):
        grade_the_matrix(self.lab, tmp_path)


for _lab in LABS:
    globals()[f"TestGrading_{_lab}"] = type(
        f"TestGrading_{_lab}", (GradingMatrix,), {"lab": _lab}
    )


def grade_the_matrix(lab: str, tmp_path: Path):
    expected = make_submissions(tmp_path, lab)
    results = grade_folder(lab, tmp_path, seed=3, cell_timeout=CELL_TIMEOUT, jobs=2)
    write_reports(results, tmp_path / "grades")
    results = {r.student: r for r in results}
    scores = {name: r.total for name, r in results.items()}
    assert scores == pytest.approx(expected), scores
    questions = get_lab(lab).QUESTIONS
    check_solution_and_student_ran_to_the_end(results, questions)
    check_the_grader_says_why(results, questions, tmp_path / "grades")


def check_solution_and_student_ran_to_the_end(results, questions):
    solution, student = results["Alice solution (2)"], results["bob_untouched"]
    assert solution.errors == [] and student.errors == []
    # kernel start-up included, beside another notebook on the other core
    assert solution.notebook_seconds <= LAB_SECONDS, solution.notebook_seconds
    assert solution.printed.count("[pass]") == len(questions)
    assert student.printed.count("[FAIL]") == len(questions)
    assert "[pass]" not in student.printed
    for key, q in solution.questions.items():  # the hidden cases were graded too
        assert len(q.cases) > len(questions[key].public_cases())
        assert all(c["passed"] for c in q.cases), (key, q.cases)
    frank = results["frank_tampering"]  # every check printed a pass, all patched
    assert frank.printed.count("[pass] (patched)") == len(questions)
    ivan = results["ivan_delegates_to_the_references"]
    assert ivan.printed.count("[FAIL]") == len(questions), ivan.printed
    assert ivan.printed.count("not allowed: it uses") == len(questions)
    for q in ivan.questions.values():
        assert q.cases[0]["message"].startswith("not allowed: it uses"), q.cases[0]


def check_the_grader_says_why(results, questions, grades: Path):
    *_, before, last = questions

    def first_message(student, key):
        return results[student].questions[key].cases[0]["message"]

    erin = results["erin_endless_loop"]
    assert any("timed out" in e for e in erin.errors), erin.errors
    assert first_message("erin_endless_loop", last).startswith("no answer"), erin
    carol = results["carol_wrong_and_syntax_error"]
    assert any("SyntaxError" in e for e in carol.errors), carol.errors
    function = questions[last].function
    assert first_message("carol_wrong_and_syntax_error", last) == (
        f"no function named {function} in the notebook"
    )
    assert first_message("carol_wrong_and_syntax_error", before)  # what is wrong
    gus = results["gus_not_a_notebook"]
    assert "not a readable notebook" in gus.errors[0]
    assert first_message("gus_not_a_notebook", "q1").startswith("no answer")
    with open(grades / "grades.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["student", "notebook", "q1"] and rows[0][-1] == "tampering"
    assert len(rows) == 1 + len(results)
    report = json.loads((grades / "grades.json").read_text())
    assert {r["student"] for r in report} == set(results)


# --- the pieces, without a kernel ---------------------------------------------------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["lab99", "{tmp}"], ["lab must be one of", "lab01_sgd"]),
        (["lab01_sgd", "{tmp}/missing"], ["SUBMISSIONS must be a folder"]),
        (["lab01_sgd", "{tmp}"], ["holds no .ipynb files"]),
        (["lab01_sgd", "{tmp}", "--jobs", "0"], ["--jobs must be a positive"]),
    ],
)
def test_command_line_answers_bad_arguments_in_one_line(tmp_path, capsys, argv, words):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err, err


def test_command_line_grades_a_folder(tmp_path, capsys):
    """End to end through main(), on the solution's answers alone (cheap to run)."""
    submissions = tmp_path / "in"
    submissions.mkdir()
    solution = nbformat.read(ROOT / "labs" / "lab02_optim" / "solution.ipynb", 4)
    solution.cells = [
        c for c in solution.cells
        if c.cell_type == "code" and c.source.lstrip().startswith(("import", "class"))
    ]  # fmt: skip
    nbformat.write(solution, submissions / "ada.ipynb")
    argv = ["lab02_optim", str(submissions), "--out", str(tmp_path / "out")]
    assert main(argv + ["--jobs", "1"]) == 0
    rows = (tmp_path / "out" / "grades.csv").read_text().splitlines()
    assert rows[1].startswith("ada,") and ",7,7," in rows[1]
    out = capsys.readouterr().out
    assert "ada: 7/7" in out
    # no --seed: a random one, recorded for the instructor and printed
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["lab"] == "lab02_optim" and f"--seed {run['seed']} grades" in out


def test_a_process_left_running_by_a_notebook_is_killed(tmp_path):
    """One started in the kernel's process group (one in a session of its own,
    after a double fork: tests/test_grading_attacks.py)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.cells = [nbformat.v4.new_code_cell(
        "import subprocess\nchild = subprocess.Popen(['sleep', '300'])\n"
        "print('child', child.pid)"
    )]  # fmt: skip
    nbformat.write(nb, tmp_path / "leaver.ipynb")
    lab = "lab03_parallel"
    (result,) = grade_folder(lab, tmp_path, seed=0, cell_timeout=30, jobs=1)
    pid = int(result.printed.split()[1])
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + 10
    while status.exists() and "State:\tZ" not in status.read_text():
        assert time.monotonic() < deadline, f"process {pid} outlived its notebook"
        time.sleep(0.1)


def test_only_a_regular_file_of_bounded_size_is_loaded(tmp_path, monkeypatch):
    import io
    import os

    import torch

    from course_lib.labs import answers, grade
    from course_lib.labs.checks import NoAnswer

    def frame(value):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        return answers.encode_frame(answers.ANSWER, buffer.getvalue())

    data = frame(["q1", 0, 1.0]) + frame(["q1", 1, "two"])
    (tmp_path / "fine.bin").write_bytes(data + data[:7])  # a truncated tail
    got, notes = grade.load_answers(tmp_path / "fine.bin", {"q1": 3})
    assert got["q1"][:2] == [1.0, "two"] and notes == []
    assert isinstance(got["q1"][2], NoAnswer) and "stopped" in str(got["q1"][2])
    os.mkfifo(tmp_path / "pipe.bin")  # would block a read forever
    (tmp_path / "link.bin").symlink_to(tmp_path / "fine.bin")
    for name in ["missing.bin", "pipe.bin", "link.bin"]:
        got, _ = grade.load_answers(tmp_path / name, {"q1": 1})
        assert isinstance(got["q1"][0], NoAnswer), name
    monkeypatch.setattr(grade, "MAX_ANSWERS_BYTES", len(data) - 1)
    got, notes = grade.load_answers(tmp_path / "fine.bin", {"q1": 2})
    assert got["q1"][0] == 1.0 and isinstance(got["q1"][1], NoAnswer)
    assert "over" in notes[0]
    junk = answers.encode_frame(answers.ANSWER, b"not a pickle")
    (tmp_path / "junk.bin").write_bytes(junk)
    got, notes = grade.load_answers(tmp_path / "junk.bin", {"q1": 1})
    assert isinstance(got["q1"][0], NoAnswer) and "could not be read" in notes[0]


def test_reports_are_written_whole(tmp_path):
    from course_lib.labs.grade import QuestionResult, Result

    result = Result("ada", "ada.ipynb", {"q1": QuestionResult(1.0, 1.0, [])},
                    errors=["cell 3: ValueError: a\nmultiline message"])  # fmt: skip
    write_reports([result], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grades.csv", "grades.json"]
    with open(tmp_path / "grades.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[1][:3] == ["ada", "ada.ipynb", "1"]
    assert json.loads((tmp_path / "grades.json").read_text())[0]["total"] == 1.0
