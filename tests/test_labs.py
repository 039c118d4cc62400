"""The lab mechanism: declaring questions, generation and inline checks.

Grading is tested in ``test_grading.py``, which also executes every lab's
solution and student notebook (so nbval does not run them a second time).
"""

import dataclasses
import inspect
import json
from pathlib import Path

import nbformat
import pytest
import torch
import torch.distributed as dist

from course_lib import optim as course_optim
from course_lib.diagnose import diagnose
from course_lib.labs import LABS, checks, forbid, get_lab
from course_lib.labs import lab01_sgd as lab1
from course_lib.labs import lab02_optim as lab2
from course_lib.labs import lab03_parallel as lab3
from course_lib.labs.generate import lab_dirs, render, strip_solutions, student_path

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


def test_strip_solutions_puts_the_broken_lines_back():
    """A repair lab (lab 6): the student gets the broken lines, uncommented,
    where the fix stood, and no stub."""
    source = (
        "def f(model, X, y):\n    for x in X:\n        # BEGIN SOLUTION\n"
        "        # HINT: what does backward do to .grad?\n"
        "        model.zero_grad()\n        loss = g(x)\n        # BEGIN BROKEN\n"
        "        # loss = g(x).softmax(1)\n        #\n        # # a note\n"
        "        #     h(loss)\n        # END BROKEN\n        # END SOLUTION\n"
        "    return loss"
    )
    assert strip_solutions(source) == (
        "def f(model, X, y):\n    for x in X:\n"
        "        # HINT: what does backward do to .grad?\n"
        "        loss = g(x).softmax(1)\n\n        # a note\n            h(loss)\n"
        "    return loss"
    )


def test_an_empty_broken_part_only_removes_the_fix():
    source = (
        "def f(m):\n    # BEGIN SOLUTION\n    m.eval()\n    # BEGIN BROKEN\n"
        "    # END BROKEN\n    # END SOLUTION\n    return m(1)"
    )
    assert strip_solutions(source) == "def f(m):\n    return m(1)"
    assert "NotImplementedError" not in strip_solutions(source)


@pytest.mark.parametrize(
    "source, message",
    [
        ("# BEGIN SOLUTION\n# BEGIN BROKEN\nx = 1\n# END BROKEN\n# END SOLUTION",
         "must be commented out"),
        ("# BEGIN SOLUTION\n# BEGIN BROKEN\n# x = 1\n# END SOLUTION", "without END"),
        ("# BEGIN SOLUTION\n# END BROKEN\n# END SOLUTION", "without BEGIN BROKEN"),
        ("# BEGIN SOLUTION\n# BEGIN BROKEN\n# BEGIN BROKEN\n# END BROKEN\n"
         "# END SOLUTION", "inside another part"),
        ("# BEGIN BROKEN\n# x = 1\n# END BROKEN\n", "outside a solution block"),
    ],
)
def test_strip_solutions_rejects_malformed_broken_parts(source, message):
    with pytest.raises(ValueError, match=message):
        strip_solutions(source)


@pytest.mark.parametrize("lab_dir", LAB_DIRS, ids=lambda d: d.name)
def test_no_marker_reaches_the_student(lab_dir):
    text = student_path(lab_dir).read_text()
    for marker in ("BEGIN BROKEN", "END BROKEN", "BEGIN SOLUTION", "END SOLUTION"):
        assert marker not in text, marker


def test_a_repair_lab_runs_the_fix_and_shows_the_broken_code():
    """In lab 6 the solution's functions are the fixed ones, and every student
    function is the broken code, not a stub."""
    lab_dir = ROOT / "labs" / "lab06_debugging"
    solution = nbformat.read(lab_dir / "solution.ipynb", as_version=4)
    student = nbformat.read(student_path(lab_dir), as_version=4)

    def definitions(nb):
        return {c.source.split("(")[0]: c.source for c in nb.cells
                if c.cell_type == "code" and c.source.startswith("def ")}  # fmt: skip

    fixed, broken = definitions(solution), definitions(student)
    for q in get_lab("lab06_debugging").QUESTIONS.values():
        name = f"def {q.function}"
        assert "NotImplementedError" not in broken[name]
        assert broken[name] != fixed[name]
        assert "# BEGIN BROKEN" in fixed[name]


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
    where = f"after step {step}, parameter 0.weight[0, 0] differs from torch.optim.Adam"
    assert where in printed, printed
    assert "expected" in printed and "got" in printed


def test_lab2_accepts_a_correct_adam_and_grading_needs_groups(capsys):
    assert lab2.check_q3(lambda params, **kw: FlawedAdam(params, **kw)) is True
    q = lab2.QUESTIONS["q3"]
    hidden = q.hidden_cases(0)
    assert any(inputs["groups"] for _, inputs in hidden)  # two parameter groups


# --- lab 3: the checks run the student's code in real processes ------------------


def test_lab3_finds_a_missing_division(capsys):
    def average_gradients(model):  # sums instead of averaging
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)

    assert lab3.check_q2(average_gradients) is False
    out = capsys.readouterr().out
    assert "3 of 3 cases failed" in out
    assert "after step 1, rank 0's parameter 0.weight[0, 0] differs from DDP's" in out


def test_lab3_reports_the_error_of_a_worker(capsys):
    def average_gradients(model):  # forgets that frozen parameters have no .grad
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()

    assert lab3.check_q2(average_gradients) is False
    out = capsys.readouterr().out
    assert "1 of 3 cases failed" in out and "first layer frozen" in out
    # the worker's own error, at the student's line (not inside torch)
    assert "raised TypeError" in out or "raised AttributeError" in out, out
    assert "dist.all_reduce(p.grad)" in out, out


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


def test_lab3_accumulation_must_really_use_micro_batches(capsys):
    def accumulate_gradients(model, loss_fn, X, y, micro_batches):
        loss = loss_fn(model(X), y)  # the right gradient, in one forward pass
        loss.backward()
        return loss.item()

    assert lab3.check_q3(accumulate_gradients) is False
    out = capsys.readouterr().out
    assert "3 of 3 cases failed" in out
    assert "the model saw 1 forward pass of sizes [12], expected 3 forward passes " \
        "of sizes [4, 4, 4]" in out, out


def test_lab3_public_all_reduce_case_catches_a_hard_coded_two(capsys):
    def average_gradients(model):
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= 2  # right for 2 processes only

    assert lab3.check_q2(average_gradients) is False
    out = capsys.readouterr().out
    assert "1 of 3 cases failed" in out and "case 3 processes" in out, out


@pytest.mark.parametrize("lab", LABS)
def test_every_hidden_case_is_passed_by_the_reference(lab):
    """The references are right where the grader judges: public and hidden cases."""
    for key, q in get_lab(lab).QUESTIONS.items():
        if q.expected is not None and key != "q2":  # judged by the produced pattern
            continue
        for label, inputs in q.public_cases() + q.hidden_cases(3):
            out = q.run(q.reference, inputs)  # not run_one: it forbids references
            assert checks.judge(q, q.expected_outputs(inputs), out) is None, label




# --- lab 1, q7: the curves are graded against the pattern they were made to show ---


def test_lab1_histories_hold_only_the_documented_fields():
    for seed, varied in [(0, False), (103, True)]:
        for name, history in lab1._histories(seed, varied):
            assert tuple(history) == lab1.HISTORY_FIELDS, name


@pytest.mark.parametrize("seed", [100, 101, 102, 103])
def test_lab1_every_varied_run_shows_its_pattern(seed):
    """diagnose() agrees with the pattern each hidden run was made to show, so a
    rule that reads the curves can pass; the runs differ from the public ones."""
    public = dict(lab1._histories(0))
    varied = lab1._histories(seed, True)
    for name, history in varied:
        assert diagnose(history).name == name, (name, lab1.variation(name, seed))
    assert any(
        len(h["step_loss"]) != len(public[n]["step_loss"]) for n, h in varied
    )
    q7 = lab1.QUESTIONS["q7"]
    cases = q7.hidden_cases(seed - 100)
    order = [q7.expected_outputs(inputs) for _, inputs in cases]
    assert sorted(order) == sorted(lab1.PATHOLOGIES)
    assert order != list(lab1.PATHOLOGIES) or seed == 100  # shuffled


def test_lab1_q7_is_graded_on_the_pattern_not_on_diagnose(capsys):
    q7 = lab1.QUESTIONS["q7"]
    label, inputs = q7.public_cases()[0]
    assert q7.expected_outputs(inputs) == "diverging"
    message = checks.judge(q7, "diverging", "healthy")
    assert message == "expected 'diverging', got 'healthy'"


# --- the mechanism --------------------------------------------------------------------


def test_labs_are_found_by_module_name():
    modules = sorted((ROOT / "course_lib" / "labs").glob("lab[0-9][0-9]_*.py"))
    assert LABS == tuple(p.stem for p in modules)
    assert LABS[:4] == ("lab01_sgd", "lab02_optim", "lab03_parallel", "lab04_init_norm")
    with pytest.raises(ValueError, match="lab must be one of"):
        get_lab("lab99")


@pytest.mark.parametrize("lab", LABS)
def test_declare_defines_one_check_per_question(lab):
    module = get_lab(lab)
    for key, q in module.QUESTIONS.items():
        check_fn = getattr(module, f"check_{key}")
        assert check_fn.__name__ == f"check_{key}" and q.function in check_fn.__doc__
        assert q.forbidden, f"{lab} {key} declares no forbidden objects"


def test_declare_rejects_malformed_questions():
    q = lab1.QUESTIONS["q1"]
    with pytest.raises(ValueError, match="q1, q2"):
        checks.declare(__name__, [q, q])
    with pytest.raises(ValueError, match="function must be a name"):
        checks.declare(__name__, [dataclasses.replace(q, function="not a name")])
    with pytest.raises(ValueError, match="points"):
        checks.declare(__name__, [dataclasses.replace(q, points=0)])
    with pytest.raises(ValueError, match="dotted names"):
        checks.declare(__name__, [dataclasses.replace(q, forbidden=("torch optim",))])


def raises_decode_error(step, step_size, gamma):
    return json.loads("{not json")  # JSONDecodeError takes 3 constructor arguments


def raises_deep_in_torch(step, step_size, gamma):
    return torch.zeros(2) @ torch.zeros(3)  # the error is raised inside torch


@pytest.mark.parametrize(
    "fn, words",
    [
        (raises_decode_error, ["JSONDecodeError", 'json.loads("{not json")']),
        (raises_deep_in_torch, ["RuntimeError", "torch.zeros(2) @ torch.zeros(3)"]),
    ],
)
def test_check_never_raises_and_names_the_students_line(capsys, fn, words):
    assert lab1.check_q4(fn) is False
    out = capsys.readouterr().out
    for word in words:
        assert word in out, out


def test_check_survives_answers_that_cannot_be_compared(capsys):
    class Weird:
        def __eq__(self, other):
            raise RuntimeError("no comparing me")

        def __repr__(self):
            raise RuntimeError("no printing me")

    assert lab1.check_q7(lambda history: Weird()) is False  # str() of it is fine
    assert lab1.check_q4(lambda step, step_size, gamma: 10**400) is False
    out = capsys.readouterr().out
    assert "int too large to convert to float" in out
    assert "raised at the check's harness, calling your function or using" in out
    assert checks.compare("a", Weird(), rtol=0, atol=0).startswith("expected 'a'")


def test_messages_truncate_long_values():
    message = checks.compare("short", "x" * 100_000, rtol=0, atol=0)
    assert len(message) < 400 and "more characters" in message


# --- forbidden objects: detected by what runs, however it is reached ----------------


class SubclassedAdam(torch.optim.Adam):
    pass


_CAPTURED_STEP = torch.optim.Adam.step  # a method reference taken early


class CapturedStepAdam(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        # the defaults torch.optim.Adam.step reads
        defaults = torch.optim.Adam([torch.zeros(1, requires_grad=True)]).defaults
        super().__init__(params, defaults | dict(lr=lr, betas=betas, eps=eps))

    def step(self, closure=None):
        return _CAPTURED_STEP(self, closure)


def step_decay_by_computed_name(step, step_size, gamma):
    import course_lib.schedules as schedules

    return getattr(schedules, "Step" + "Decay")(step_size, gamma)(step)


def step_decay_through_torch(step, step_size, gamma):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma)
    for _ in range(step):
        optimizer.step()
        scheduler.step()
    return scheduler.get_last_lr()[0]


def averaging_by_the_course(model):
    from course_lib.parallel import average_gradients as helper  # another name

    helper(model)


@pytest.mark.parametrize(
    "check, answer, used",
    [
        (lab2.check_q3, SubclassedAdam, "torch.optim.Adam"),
        (lab2.check_q3, CapturedStepAdam, "torch.optim.Adam"),
        (lab2.check_q3, course_optim.Adam, "course_lib.optim.Adam"),
        (lab1.check_q4, step_decay_by_computed_name, "course_lib.schedules.StepDecay"),
        (lab1.check_q4, step_decay_through_torch, "torch.optim.lr_scheduler.StepLR"),
        (lab1.check_q7, lab1.QUESTIONS["q7"].reference, "course_lib.labs"),
        (lab1.check_q7, lambda h: diagnose(h).name, "course_lib.diagnose.diagnose"),
        (lab3.check_q2, averaging_by_the_course, "course_lib.parallel.average_grad"),
    ],
)
def test_a_forbidden_object_fails_the_check_and_is_named(capsys, check, answer, used):
    assert check(answer) is False
    out = capsys.readouterr().out
    assert f"not allowed: it uses {used}" in out, out  # the name, maybe cut here
    assert "which already computes this answer" in out


def test_allowed_building_blocks_stay_allowed(capsys):
    """Optimizer as a base class, autograd, nn modules and torch.distributed."""

    def average_gradients(model):
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()

    assert lab2.check_q3(lambda params, **kw: FlawedAdam(params, **kw)) is True
    assert lab3.check_q2(average_gradients) is True
    assert "not allowed" not in capsys.readouterr().out


def test_every_declared_forbidden_name_resolves():
    for lab in LABS:
        for q in get_lab(lab).QUESTIONS.values():
            rules = forbid.rules(q.forbidden)
            assert rules.code_names or rules.folders, (lab, q.key)
            for name in q.forbidden:  # each name brings code to watch
                obj = forbid._resolve(name)
                watched = forbid._codes(obj) or inspect.isbuiltin(obj)
                assert watched or hasattr(obj, "__path__"), name


def test_lab1_histories_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_LIB_CACHE", str(tmp_path))
    first = lab1._histories.__wrapped__(5)
    assert len(list(tmp_path.glob("lab01-histories-*.json"))) == 1
    monkeypatch.setattr(lab1, "demo_run", None)  # a second call must not train
    again = lab1._histories.__wrapped__(5)
    assert json.dumps(again) == json.dumps(first)
    assert [name for name, _ in again] == list(lab1.PATHOLOGIES)
