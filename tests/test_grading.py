"""Grading, for every lab, on a generated matrix of submissions.

For each lab one grader call grades, in parallel kernels, submissions made
from its own notebooks: the solution (under an odd file name), the untouched
student notebook, a partly wrong one, one with a syntax error, one that loops
forever, one that tampers with the checks and one that is not a notebook.
Each must get the score written next to it. These executions are also the
test that the solution and the student notebook run to the end: nbval does
not execute the lab notebooks a second time.
"""

import copy
import json
from pathlib import Path

import nbformat
import pytest

from course_lib.labs import LABS, get_lab
from course_lib.labs.generate import student_path
from course_lib.labs.grade import (
    extraction_cell,
    grade_folder,
    main,
    write_answers,
    write_reports,
)

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT = 40  # seconds; the slowest honest cell (lab 3's checks) takes ~15


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


def replace_definition(nb, name: str, body: str):
    """``nb`` with the answer ``name`` replaced by ``body`` (a whole cell)."""
    nb = copy.deepcopy(nb)
    defining_cell(nb, name).source = body
    return nb


def make_submissions(folder: Path, lab: str) -> dict:
    """Write the matrix for ``lab`` into ``folder``; {student: (lowest, highest)}."""
    lab_dir = ROOT / "labs" / lab
    solution = nbformat.read(lab_dir / "solution.ipynb", as_version=4)
    student = nbformat.read(student_path(lab_dir), as_version=4)
    questions = get_lab(lab).QUESTIONS
    full = sum(q.points for q in questions.values())
    # The last question's answer is the one broken below: no earlier answer
    # calls it, so each break costs exactly its points.
    last = list(questions.values())[-1]
    name, rest = last.function, full - last.points
    kind = "class" if last.function[0].isupper() else "def"
    signature = defining_cell(solution, name).source.split("\n")[0]
    wrong = f"{signature}\n    return None\n"
    broken = signature.rstrip(":") + "\n    return 1\n"  # no colon: a SyntaxError
    looping = f"{signature}\n    while True:\n        pass\n"
    if kind == "class":  # an optimizer whose step does nothing, or loops
        init = (
            "    def __init__(self, params, **options):\n"
            "        super().__init__(params, options)\n"
        )
        step = "    def step(self, closure=None):\n"
        wrong = f"{signature}\n{init}{step}        return None\n"
        looping = f"{signature}\n{init}{step}        while True:\n            pass\n"
    matrix = {
        "Alice solution (2)": (solution, full),
        "bob_untouched": (student, 0),
        "carol_last_answer_wrong": (replace_definition(solution, name, wrong), rest),
        "dave_syntax_error": (replace_definition(solution, name, broken), rest),
        "erin_endless_loop": (replace_definition(solution, name, looping), rest),
        "frank_tampering": (
            insert_after_imports(copy.deepcopy(student), tamper_cell(lab)), 0
        ),
    }
    for student_name, (nb, _) in matrix.items():
        nbformat.write(nb, folder / f"{student_name}.ipynb")
    (folder / "gus_not_a_notebook.ipynb").write_text("{ this is not json")
    scores = {k: (score, score) for k, (_, score) in matrix.items()}
    return scores | {"gus_not_a_notebook": (0, 0)}


_GRADED = {}


def graded(lab, tmp_path_factory):
    """({student: Result}, {student: (lo, hi)}, grades folder), graded once."""
    if lab not in _GRADED:
        folder = tmp_path_factory.mktemp(f"submissions-{lab}")
        expected = make_submissions(folder, lab)
        results = grade_folder(
            lab, folder, seed=3, cell_timeout=CELL_TIMEOUT, jobs=2
        )
        write_reports(results, folder / "grades")
        _GRADED[lab] = ({r.student: r for r in results}, expected, folder / "grades")
    return _GRADED[lab]


@pytest.fixture(params=LABS)
def lab_grades(request, tmp_path_factory):
    return request.param, graded(request.param, tmp_path_factory)


def test_every_submission_gets_its_score(lab_grades):
    _, (results, expected, _) = lab_grades
    assert sorted(results) == sorted(expected)
    scores = {name: r.total for name, r in results.items()}
    for name, (low, high) in expected.items():
        assert low - 1e-9 <= scores[name] <= high + 1e-9, (name, scores)


def test_solution_and_student_notebooks_run_to_the_end(lab_grades):
    lab, (results, _, _) = lab_grades
    questions = get_lab(lab).QUESTIONS
    solution, student = results["Alice solution (2)"], results["bob_untouched"]
    assert solution.errors == [] and student.errors == []
    assert solution.printed.count("[pass]") == len(questions)
    assert student.printed.count("[FAIL]") == len(questions)
    assert "[pass]" not in student.printed
    for key, q in solution.questions.items():  # the hidden cases were graded too
        assert len(q.cases) > len(questions[key].public_cases())
        assert all(c["passed"] for c in q.cases), (key, q.cases)


def test_tampering_prints_passes_but_scores_zero(lab_grades):
    lab, (results, _, _) = lab_grades
    frank = results["frank_tampering"]
    assert frank.printed.count("[pass] (patched)") == len(get_lab(lab).QUESTIONS)
    assert frank.total == 0


def test_the_grader_says_why(lab_grades):
    lab, (results, _, grades) = lab_grades
    last = list(get_lab(lab).QUESTIONS)[-1]

    def first_message(student, key=last):
        return results[student].questions[key].cases[0]["message"]

    assert any("timed out" in e for e in results["erin_endless_loop"].errors)
    assert first_message("erin_endless_loop").startswith("no answer")
    assert any("SyntaxError" in e for e in results["dave_syntax_error"].errors)
    function = get_lab(lab).QUESTIONS[last].function
    assert first_message("dave_syntax_error") == (
        f"no function named {function} in the notebook"
    )
    assert first_message("carol_last_answer_wrong")  # says what is wrong
    gus = results["gus_not_a_notebook"]
    assert "not a readable notebook" in gus.errors[0]
    assert first_message("gus_not_a_notebook", "q1").startswith("no answer")
    rows = (grades / "grades.csv").read_text().splitlines()
    assert rows[0].startswith("student,notebook,q1,") and len(rows) == 1 + len(results)
    report = json.loads((grades / "grades.json").read_text())
    assert {r["student"] for r in report} == set(results)


# --- the pieces, without a kernel ---------------------------------------------------


def test_extraction_cell_writes_the_answers(tmp_path):
    import torch

    from course_lib.labs import lab01_sgd as lab1
    from course_lib.schedules import StepDecay

    q = lab1.QUESTIONS["q4"]
    cases = {"q4": [inputs for _, inputs in q.public_cases()]}
    torch.save(cases, tmp_path / "cases.pt")
    namespace = {"step_decay": lambda step, step_size, gamma: 1 / 0}
    code = extraction_cell("lab01_sgd", "q4", str(tmp_path / "cases.pt"),
                           str(tmp_path / "answers.pt"))  # fmt: skip
    exec(compile(code, "<extraction cell>", "exec"), namespace)
    answers = torch.load(tmp_path / "answers.pt", weights_only=True)
    assert [a["__error__"] for a in answers] == ["ZeroDivisionError"] * len(cases["q4"])
    right = {"step_decay": lambda step, size, gamma: StepDecay(size, gamma)(step)}
    write_answers("lab01_sgd", "q4", right, tmp_path / "cases.pt", tmp_path / "a.pt")
    answers = torch.load(tmp_path / "a.pt", weights_only=True)
    assert all(isinstance(a, torch.Tensor) for a in answers)
    write_answers("lab01_sgd", "q4", {}, tmp_path / "cases.pt", tmp_path / "b.pt")
    missing = torch.load(tmp_path / "b.pt", weights_only=True)[0]
    assert missing == {"__error__": "NoAnswer",
                       "message": "no function named step_decay in the notebook"}


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
    assert "ada: 7/7" in capsys.readouterr().out
