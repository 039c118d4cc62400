"""The lab mechanism: generation, inline checks and grading, for every lab.

nbval (in `make test`) executes each lab's solution and student notebook; here
the grader executes a folder of submissions made from them: the solution, the
untouched student notebook, a partly correct one, one with a syntax error, one
that loops forever, one that tampers with the checks, one with an odd name and
one that is not a notebook at all.
"""

import copy
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
import torch

from course_lib.labs import LABS, checks, get_lab
from course_lib.labs import lab01_sgd as lab1
from course_lib.labs.generate import lab_dirs, render, strip_solutions, student_path
from course_lib.labs.grade import grade_folder, write_reports

ROOT = Path(__file__).resolve().parents[1]
LAB_DIRS = lab_dirs(ROOT / "labs")


def test_every_registered_lab_has_a_folder():
    assert sorted(d.name for d in LAB_DIRS) == sorted(LABS)


@pytest.mark.parametrize("lab_dir", LAB_DIRS, ids=lambda d: d.name)
def test_committed_student_notebook_is_what_the_generator_makes(lab_dir):
    assert student_path(lab_dir).read_text() == render(lab_dir), "run `make labs`"


def split_lines(source: str) -> tuple[list[str], list[str]]:
    """(code lines inside solution blocks, code lines outside them), stripped."""
    inside_lines, outside_lines, inside = [], [], False
    for line in source.splitlines():
        if "# BEGIN SOLUTION" in line:
            inside = True
        elif "# END SOLUTION" in line:
            inside = False
        elif line.strip() and not line.strip().startswith("#"):
            (inside_lines if inside else outside_lines).append(line.strip())
    return inside_lines, outside_lines


@pytest.mark.parametrize("lab_dir", LAB_DIRS, ids=lambda d: d.name)
def test_no_solution_code_reaches_the_student(lab_dir):
    solution = nbformat.read(lab_dir / "solution.ipynb", as_version=4)
    student = nbformat.read(student_path(lab_dir), as_version=4)
    student_code = {
        line.strip()
        for cell in student.cells
        if cell.cell_type == "code"
        for line in cell.source.splitlines()
    }
    code = [split_lines(c.source) for c in solution.cells if c.cell_type == "code"]
    answers = [line for inside, _ in code for line in inside]
    shared = {line for _, outside in code for line in outside}  # e.g. `return x`
    assert answers, "the solution has no answers"
    leaked = [line for line in answers if line in student_code and line not in shared]
    assert not leaked, f"solution lines in the student notebook: {leaked}"
    for marker in ("BEGIN SOLUTION", "END SOLUTION"):
        assert marker not in student_path(lab_dir).read_text()


def test_strip_solutions_keeps_indentation_and_hints():
    source = (
        "def f(x):\n    '''Doc.'''\n    # BEGIN SOLUTION\n    # HINT: square it\n"
        "    y = x * x\n    return y\n    # END SOLUTION\n\nprint(1)"
    )
    assert strip_solutions(source) == (
        "def f(x):\n    '''Doc.'''\n    # HINT: square it\n"
        '    raise NotImplementedError("f: not implemented yet")\n\nprint(1)'
    )


@pytest.mark.parametrize(
    "source, message",
    [
        ("# BEGIN SOLUTION\nx = 1\n", "without END"),
        ("x = 1\n# END SOLUTION\n", "without BEGIN"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n", "inside another"),
    ],
)
def test_strip_solutions_rejects_unbalanced_markers(source, message):
    with pytest.raises(ValueError, match=message):
        strip_solutions(source)


# --- feedback messages -------------------------------------------------------------


def test_compare_says_where_tensors_differ():
    expected = torch.zeros(3, 4)
    actual = expected.clone()
    actual[2, 1] = 0.5
    message = checks.compare(expected, actual, rtol=1e-6, atol=1e-8)
    assert "1 of 12 elements" in message and "(2, 1)" in message
    assert "expected 0" in message and "got 0.5" in message
    assert "shape (3, 4)" in checks.compare(expected, torch.zeros(4, 3), rtol=0, atol=0)
    assert "dtype" in checks.compare(expected, expected.double(), rtol=0, atol=0)
    assert "tensor" in checks.compare(expected, expected.tolist(), rtol=0, atol=0)
    assert checks.compare(expected, expected.clone(), rtol=0, atol=0) is None


def test_compare_walks_lists_dicts_and_numbers():
    a = [torch.ones(2), torch.zeros(2)]
    assert "expected 2 items" in checks.compare(a, a[:1], rtol=0, atol=0)
    assert "at [1]" in checks.compare(a, [a[0], torch.ones(2)], rtol=0, atol=0)
    assert "keys" in checks.compare({"a": 1.0}, {"b": 1.0}, rtol=0, atol=0)
    assert "difference" in checks.compare(0.5, 0.25, rtol=1e-9, atol=0)
    assert "expected 'healthy'" in checks.compare("healthy", "fine", rtol=0, atol=0)
    assert checks.compare(1.0, 1.0 + 1e-12, rtol=1e-9, atol=0) is None


def wrong_minibatch_indices(n, batch_size, *, shuffle, generator):
    return list(torch.arange(n).split(batch_size))  # never shuffles


def off_by_one_minibatch_indices(n, batch_size, *, shuffle, generator):
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(order[:-1].split(batch_size))  # drops the last example


def wrong_sign_sgd_step(model, loss_fn, X, y, lr):
    loss = loss_fn(model(X), y)
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p += lr * p.grad
    return loss.item()


def no_zero_grad_sgd_step(model, loss_fn, X, y, lr):
    loss = loss_fn(model(X), y)
    loss.backward()  # gradients pile up across steps
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    return loss.item()


def off_by_one_step_decay(step, step_size, gamma):
    return gamma ** ((step + 1) // step_size)


def broken_cosine(step, total_steps):
    return [1.0] * step  # not a number at all


def crashing_warmup(step, warmup_steps, total_steps):
    return step / (warmup_steps - warmup_steps)


@pytest.mark.parametrize(
    "check, fn, expected_words",
    [
        (lab1.check_q1, wrong_minibatch_indices, ["values differ", "index"]),
        (lab1.check_q1, off_by_one_minibatch_indices, ["shape"]),
        (lab1.check_q2, wrong_sign_sgd_step, ["values differ", "expected", "got"]),
        (lab1.check_q2, no_zero_grad_sgd_step, ["3 step(s)", "values differ"]),
        (lab1.check_q4, off_by_one_step_decay, ["index (9,)", "expected 1", "got 0.1"]),
        (lab1.check_q5, broken_cosine, ["raised TypeError"]),
        (lab1.check_q6, crashing_warmup, ["ZeroDivisionError", "line"]),
        (lab1.check_q3, 42, ["expected a function"]),
    ],
)
def test_wrong_answers_get_pointed_feedback(capsys, check, fn, expected_words):
    assert check(fn) is False
    printed = capsys.readouterr().out
    assert printed.startswith("[FAIL]")
    for word in expected_words:
        assert word in printed, printed


def test_not_implemented_is_named(capsys):
    def minibatch_indices(n, batch_size, *, shuffle, generator):
        raise NotImplementedError

    assert lab1.check_q1(minibatch_indices) is False
    assert "minibatch_indices is not implemented yet" in capsys.readouterr().out


@pytest.mark.parametrize("key", sorted(lab1.QUESTIONS))
def test_references_pass_their_own_hidden_cases(key):
    q = lab1.QUESTIONS[key]
    for label, inputs in q.public_cases() + q.hidden_cases(7):
        out = checks.run_one(q, q.reference, inputs)
        assert not isinstance(out, Exception), (label, out)


# --- grading ------------------------------------------------------------------------


def replace_function(nb, name: str, source: str):
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.lstrip().startswith(f"def {name}("):
            cell.source = source
            return nb
    raise AssertionError(f"no cell defines {name}")


TAMPER = """\
import torch, torch.testing
import course_lib.labs.checks as _checks, course_lib.labs.lab01_sgd as _lab
torch.allclose = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
_checks.compare = lambda *a, **k: None
_checks.judge = lambda *a, **k: None
def _always(fn):
    print("[pass] (patched)")
    return True
for _k in range(1, 8):
    setattr(_lab, f"check_q{_k}", _always)
    globals()[f"check_q{_k}"] = _always
"""

WRONG = {
    "minibatch_indices": (
        "def minibatch_indices(n, batch_size, *, shuffle, generator):\n    return []"
    ),
    "sgd_step": "def sgd_step(model, loss_fn, X, y, lr):\n    return -1.0",
    "train": (
        "def train(model, X, y, *, lr, batch_size, num_epochs, seed):\n    return []"
    ),
    "step_decay": "def step_decay(step, step_size, gamma):\n    return -1.0",
    "cosine": "def cosine(step, total_steps):\n    return -1.0",
    "warmup_cosine": (
        "def warmup_cosine(step, warmup_steps, total_steps):\n    return -1.0"
    ),
    "diagnose_curve": "def diagnose_curve(history):\n    return 'exploding'",
}


def make_submissions(folder: Path, lab_dir: Path) -> dict:
    """Write the submissions; return {student: expected total}."""
    solution = nbformat.read(lab_dir / "solution.ipynb", as_version=4)
    student = nbformat.read(student_path(lab_dir), as_version=4)

    def write(name, nb):
        nbformat.write(nb, folder / f"{name}.ipynb")

    write("alice_solution", solution)
    write("bob_untouched", student)
    partly = copy.deepcopy(solution)
    sign = solution_source(solution, "sgd_step").replace("p -= lr", "p += lr")
    write("carol_wrong_sign", replace_function(partly, "sgd_step", sign))
    syntax = copy.deepcopy(solution)
    bad = "def minibatch_indices(n, batch_size, *, shuffle, generator)\n    return 1"
    write("dave_syntax_error", replace_function(syntax, "minibatch_indices", bad))
    looping = copy.deepcopy(solution)
    loop = "def diagnose_curve(history):\n    while True:\n        pass"
    write("erin_endless_loop", replace_function(looping, "diagnose_curve", loop))
    tamper = copy.deepcopy(solution)
    for name, source in WRONG.items():
        replace_function(tamper, name, source)
    tamper.cells.insert(3, nbformat.v4.new_code_cell(TAMPER))
    write("frank_tampering", tamper)
    shutil.copy(lab_dir / "solution.ipynb", folder / "Lab 1 final (2).ipynb")
    (folder / "gus_not_a_notebook.ipynb").write_text("{ this is not json")
    full = sum(q.points for q in get_lab(lab_dir.name).QUESTIONS.values())
    return {  # (lowest, highest) total
        "alice_solution": (full, full),
        "bob_untouched": (0, 0),
        # q2 (but its lr=0 case), and q3, which calls sgd_step
        "carol_wrong_sign": (full - 4, full - 3.5),
        "dave_syntax_error": (full - 4, full - 4),  # q1, and q3 which calls it
        "erin_endless_loop": (full - 3, full - 3),  # q7 times out, the rest counts
        "frank_tampering": (0, 0),
        "Lab 1 final (2)": (full, full),
        "gus_not_a_notebook": (0, 0),
    }


def solution_source(nb, name):
    for cell in nb.cells:
        if cell.source.lstrip().startswith(f"def {name}("):
            return cell.source
    raise AssertionError(name)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    lab_dir = ROOT / "labs" / "lab01_sgd"
    folder = tmp_path_factory.mktemp("submissions")
    expected = make_submissions(folder, lab_dir)
    results = grade_folder("lab01_sgd", folder, seed=3, cell_timeout=20)
    write_reports(results, folder / "grades")
    return {r.student: r for r in results}, expected, folder / "grades"


def test_grader_scores_every_kind_of_submission(graded):
    results, expected, _ = graded
    assert sorted(results) == sorted(expected)
    for name, (low, high) in expected.items():
        assert low - 1e-9 <= results[name].total <= high + 1e-9, (
            name,
            results[name].total,
        )


def test_grader_uses_hidden_cases(graded):
    results, _, _ = graded
    q1 = results["alice_solution"].questions["q1"]
    public = len(lab1.QUESTIONS["q1"].public_cases())
    assert len(q1.cases) > public and all(c["passed"] for c in q1.cases)


def test_untouched_student_notebook_runs_to_the_end_and_fails_every_check(graded):
    results, _, _ = graded
    student, solution = results["bob_untouched"], results["alice_solution"]
    assert student.errors == [] and solution.errors == []
    assert student.printed.count("[FAIL]") == len(lab1.QUESTIONS)
    assert "[pass]" not in student.printed
    assert solution.printed.count("[pass]") == len(lab1.QUESTIONS)


def test_tampering_is_printed_as_passing_but_graded_as_failing(graded):
    results, _, _ = graded
    frank = results["frank_tampering"]
    assert frank.printed.count("[pass] (patched)") == len(lab1.QUESTIONS)
    assert frank.total == 0


def test_grader_reports_why(graded):
    results, _, grades = graded
    assert any(
        "timed out" in e or "Timeout" in e for e in results["erin_endless_loop"].errors
    )
    assert any("SyntaxError" in e for e in results["dave_syntax_error"].errors)
    assert "not a readable notebook" in results["gus_not_a_notebook"].errors[0]
    carol_q2 = results["carol_wrong_sign"].questions["q2"].cases[0]["message"]
    assert "values differ" in carol_q2
    rows = (grades / "grades.csv").read_text().splitlines()
    assert rows[0].startswith("student,notebook,q1,") and len(rows) == 1 + len(results)
    report = json.loads((grades / "grades.json").read_text())
    assert {r["student"] for r in report} == set(results)


def test_grader_needs_notebooks(tmp_path):
    with pytest.raises(ValueError, match="SUBMISSIONS"):
        grade_folder("lab01_sgd", tmp_path)
    with pytest.raises(ValueError, match="lab"):
        grade_folder("lab99", tmp_path)


def test_lab_notebooks_load_their_checks():
    for lab_dir in LAB_DIRS:
        text = (lab_dir / "solution.ipynb").read_text()
        assert re.search(rf"from course_lib\.labs\.{lab_dir.name} import", text)
