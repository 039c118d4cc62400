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
from pathlib import Path

import nbformat
import pytest
import torch
import torch.distributed as dist

from course_lib.labs import LABS, checks, get_lab
from course_lib.labs import lab01_sgd as lab1
from course_lib.labs import lab02_optim as lab2
from course_lib.labs import lab03_parallel as lab3
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


class FlawedAdam(torch.optim.Optimizer):
    """Adam with one of the classic mistakes switched on."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, flaw=""):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.flaw = flaw

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            if self.flaw == "wrong beta":
                b2 = b1
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["t"] += 1
                t = state["t"] - (self.flaw == "step from 0")
                state["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                state["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                m_hat, v_hat = state["m"] / (1 - b1**t), state["v"] / (1 - b2**t)
                if self.flaw == "no bias correction":
                    m_hat, v_hat = state["m"], state["v"]
                if self.flaw == "eps inside sqrt":
                    p.sub_(group["lr"] * m_hat / (v_hat + group["eps"]).sqrt())
                else:
                    p.sub_(group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))


@pytest.mark.parametrize(
    "flaw, step",
    [
        ("no bias correction", 1),
        ("eps inside sqrt", 1),
        ("step from 0", 1),
        ("wrong beta", 2),  # bias-corrected, both averages equal g and g^2 at step 1
    ],
)
def test_lab2_locates_each_wrong_adam(capsys, flaw, step):
    def make(params, **kwargs):
        return FlawedAdam(params, flaw=flaw, **kwargs)

    assert lab2.check_q3(make) is False
    printed = capsys.readouterr().out
    assert f"first differ after step {step}, at parameter 0.weight[0, 0]" in printed
    assert "expected" in printed and "got" in printed


def test_lab2_accepts_a_correct_adam_and_grading_needs_groups(capsys):
    assert lab2.check_q3(lambda params, **kw: FlawedAdam(params, **kw)) is True
    q = lab2.QUESTIONS["q3"]
    hidden = q.hidden_cases(0)
    assert any(inputs["groups"] for _, inputs in hidden)  # two parameter groups


@pytest.mark.parametrize("key", sorted(lab1.QUESTIONS))
def test_references_pass_their_own_hidden_cases(key):
    q = lab1.QUESTIONS[key]
    for label, inputs in q.public_cases() + q.hidden_cases(3):  # the grading seed
        out = checks.run_one(q, q.reference, inputs)
        assert not isinstance(out, Exception), (label, out)


# --- lab 3: the checks run the student's code in real processes ------------------


def test_lab3_finds_a_missing_division(capsys):
    def average_gradients(model):  # sums instead of averaging
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)

    assert lab3.check_q2(average_gradients) is False
    out = capsys.readouterr().out
    assert "2 of 2 cases failed" in out
    assert "after step 1, rank 0's parameter 0.weight[0, 0] differs" in out


def test_lab3_reports_the_error_of_a_worker(capsys):
    def average_gradients(model):  # forgets that frozen parameters have no .grad
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()

    assert lab3.check_q2(average_gradients) is False
    out = capsys.readouterr().out
    assert "1 of 2 cases failed" in out and "first layer frozen" in out
    assert "a worker failed" in out


def test_lab3_unweighted_accumulation_fails_only_on_unequal_chunks(capsys):
    def accumulate_gradients(model, loss_fn, X, y, micro_batches):
        total = 0.0
        chunks = X.tensor_split(micro_batches), y.tensor_split(micro_batches)
        for X_c, y_c in zip(*chunks, strict=True):
            loss = loss_fn(model(X_c), y_c) / micro_batches  # right for equal chunks
            loss.backward()
            total += loss.item()
        return total

    assert lab3.check_q3(accumulate_gradients) is False
    out = capsys.readouterr().out
    assert "1 of 3 cases failed" in out and "case batch 10 in 4 micro-batches" in out


def test_lab3_hidden_cases_are_passed_by_the_course_implementations():
    from course_lib import parallel

    correct = {  # DDP and one big batch are the references; these must match them
        "q2": parallel.average_gradients,
        "q3": parallel.accumulate_gradients,
    }
    for key, q in lab3.QUESTIONS.items():
        for label, inputs in q.public_cases() + q.hidden_cases(3):
            out = checks.run_one(q, correct.get(key, q.reference), inputs)
            assert not isinstance(out, Exception), (label, out)
            assert checks.judge(q, q.run(q.reference, inputs), out) is None, label


# --- grading ------------------------------------------------------------------------


def replace_function(nb, name: str, source: str):
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.lstrip().startswith(f"def {name}("):
            cell.source = source
            return nb
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


def insert_after_imports(nb, source: str):
    """Put a cell right after the first cell that imports from course_lib.labs."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "from course_lib.labs." in cell.source:
            nb.cells.insert(i + 1, nbformat.v4.new_code_cell(source))
            return nb
    raise AssertionError("no cell imports the lab's checks")


def make_submissions(folder: Path, lab_dir: Path) -> dict:
    """Every lab: solution, untouched student, tampering student; {name: (lo, hi)}."""
    lab = lab_dir.name
    solution = nbformat.read(lab_dir / "solution.ipynb", as_version=4)
    student = nbformat.read(student_path(lab_dir), as_version=4)
    nbformat.write(solution, folder / "alice_solution.ipynb")
    nbformat.write(student, folder / "bob_untouched.ipynb")
    tamper = insert_after_imports(copy.deepcopy(student), tamper_cell(lab))
    nbformat.write(tamper, folder / "frank_tampering.ipynb")
    full = sum(q.points for q in get_lab(lab).QUESTIONS.values())
    expected = {
        "alice_solution": (full, full),
        "bob_untouched": (0, 0),
        "frank_tampering": (0, 0),
    }
    if lab == "lab01_sgd":
        expected |= make_lab1_submissions(folder, solution, full)
    return expected


def make_lab1_submissions(folder: Path, solution, full) -> dict:
    """Lab 1 also gets partly right, broken, looping and odd submissions."""

    def write(name, nb):
        nbformat.write(nb, folder / f"{name}.ipynb")

    partly = copy.deepcopy(solution)
    sign = solution_source(solution, "sgd_step").replace("p -= lr", "p += lr")
    write("carol_wrong_sign", replace_function(partly, "sgd_step", sign))
    syntax = copy.deepcopy(solution)
    bad = "def minibatch_indices(n, batch_size, *, shuffle, generator)\n    return 1"
    write("dave_syntax_error", replace_function(syntax, "minibatch_indices", bad))
    looping = copy.deepcopy(solution)
    loop = "def diagnose_curve(history):\n    while True:\n        pass"
    write("erin_endless_loop", replace_function(looping, "diagnose_curve", loop))
    wrong = copy.deepcopy(solution)
    for name, source in WRONG.items():
        replace_function(wrong, name, source)
    write("hal_tampering_wrong", insert_after_imports(wrong, tamper_cell("lab01_sgd")))
    nbformat.write(solution, folder / "Lab 1 final (2).ipynb")
    (folder / "gus_not_a_notebook.ipynb").write_text("{ this is not json")
    return {  # (lowest, highest) total
        # q2 (but its lr=0 case), and q3, which calls sgd_step
        "carol_wrong_sign": (full - 4, full - 3.5),
        "dave_syntax_error": (full - 4, full - 4),  # q1, and q3 which calls it
        "erin_endless_loop": (full - 3, full - 3),  # q7 times out, the rest counts
        "hal_tampering_wrong": (0, 0),
        "Lab 1 final (2)": (full, full),
        "gus_not_a_notebook": (0, 0),
    }


def solution_source(nb, name):
    for cell in nb.cells:
        if cell.source.lstrip().startswith(f"def {name}("):
            return cell.source
    raise AssertionError(name)


_GRADED = {}


@pytest.fixture(scope="module")
def grade(tmp_path_factory):
    """grade(lab) -> ({student: Result}, {student: (lo, hi)}, grades folder), once."""

    def run(lab):
        if lab not in _GRADED:
            folder = tmp_path_factory.mktemp(f"submissions-{lab}")
            expected = make_submissions(folder, ROOT / "labs" / lab)
            results = grade_folder(lab, folder, seed=3, cell_timeout=45)
            write_reports(results, folder / "grades")
            _GRADED[lab] = (
                {r.student: r for r in results},
                expected,
                folder / "grades",
            )
        return _GRADED[lab]

    return run


@pytest.fixture(scope="module")
def graded(grade):
    return grade("lab01_sgd")


@pytest.mark.parametrize("lab", LABS)
def test_every_lab_grades_solution_full_and_student_and_tampering_zero(grade, lab):
    results, expected, _ = grade(lab)
    assert sorted(results) == sorted(expected)
    for name, (low, high) in expected.items():
        assert low - 1e-9 <= results[name].total <= high + 1e-9, (
            name,
            results[name].total,
        )
    student, solution = results["bob_untouched"], results["alice_solution"]
    questions = get_lab(lab).QUESTIONS
    assert student.errors == [] and solution.errors == []
    assert student.printed.count("[FAIL]") == len(questions)
    assert "[pass]" not in student.printed
    assert solution.printed.count("[pass]") == len(questions)
    assert results["frank_tampering"].printed.count("[pass] (patched)") == len(
        questions
    )
    for q in solution.questions.values():  # hidden cases were graded too
        assert len(q.cases) > 1 and all(c["passed"] for c in q.cases)


def test_lab1_tampering_with_wrong_answers_scores_zero(graded):
    results, _, _ = graded
    hal = results["hal_tampering_wrong"]
    assert hal.printed.count("[pass] (patched)") == len(lab1.QUESTIONS)
    assert hal.total == 0
    public = len(lab1.QUESTIONS["q1"].public_cases())
    assert len(results["alice_solution"].questions["q1"].cases) > public


def test_grader_reports_why(graded):
    results, _, grades = graded
    assert any(
        "timed out" in e or "Timeout" in e for e in results["erin_endless_loop"].errors
    )
    assert any("SyntaxError" in e for e in results["dave_syntax_error"].errors)
    assert "not a readable notebook" in results["gus_not_a_notebook"].errors[0]
    gus_q1 = results["gus_not_a_notebook"].questions["q1"].cases[0]["message"]
    assert gus_q1.startswith("no answer: the grading cell did not finish"), gus_q1
    erin_q7 = results["erin_endless_loop"].questions["q7"].cases[0]["message"]
    assert erin_q7.startswith("no answer"), erin_q7
    dave_q1 = results["dave_syntax_error"].questions["q1"].cases[0]["message"]
    assert dave_q1 == "no function named minibatch_indices in the notebook", dave_q1
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


def test_lab1_histories_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_LIB_CACHE", str(tmp_path))
    first = lab1._histories.__wrapped__(5)
    files = list(tmp_path.glob("lab01-histories-*.json"))
    assert len(files) == 1
    monkeypatch.setattr(lab1, "demo_run", None)  # a second call must not train
    again = lab1._histories.__wrapped__(5)
    assert json.dumps(again) == json.dumps(first)
    assert [name for name, _ in again] == list(lab1.PATHOLOGIES)


def test_grade_command_line(tmp_path, capsys):
    from course_lib.labs.grade import main

    lab_dir = ROOT / "labs" / "lab02_optim"
    submissions = tmp_path / "in"
    submissions.mkdir()
    (submissions / "ada.ipynb").write_text((lab_dir / "solution.ipynb").read_text())
    assert main(["lab02_optim", str(submissions), "--out", str(tmp_path / "out")]) == 0
    rows = (tmp_path / "out" / "grades.csv").read_text().splitlines()
    assert rows[1].startswith("ada,") and ",7,7," in rows[1]
    assert "ada: 7/7" in capsys.readouterr().out
