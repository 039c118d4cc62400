"""Lab 6 (the bug zoo): every bug fails with its symptom, every real fix passes.

The broken functions are taken from the generated student notebook and the
fixed ones from the solution notebook, so these tests judge exactly the code
students start from and the code they are shown. For each bug: the broken
version fails every public and hidden case with a message that describes
what was observed (and never names the cure), the solution passes, a fix
written differently passes, and fixes that only hide the symptom fail.
"""

import math
import warnings
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.data import Standardizer
from course_lib.labs import checks
from course_lib.labs import lab06_debugging as lab6
from course_lib.labs.generate import student_path
from course_lib.train import fit

ROOT = Path(__file__).resolve().parents[1]
LAB_DIR = ROOT / "labs" / "lab06_debugging"
Q = lab6.QUESTIONS
NAMES = {key: q.function for key, q in Q.items()}
# what a message about a symptom must not say: the cures
CURES = ("zero_grad", "softmax", "squeeze", "eval()", ".eval", "detach", ".item",
         "requires_grad", "% 10", "param_group", "no_grad", "view(")  # fmt: skip


def notebook_functions(path: Path) -> dict:
    """The lab's functions as the notebook at ``path`` defines them."""
    nb = nbformat.read(path, as_version=4)
    namespace = {"torch": torch, "F": F, "nn": nn, "math": math}
    for cell in nb.cells:
        if cell.cell_type == "code" and any(
            cell.source.startswith(f"def {name}(") for name in NAMES.values()
        ):
            exec(compile(cell.source, str(path), "exec"), namespace)
    return {key: namespace[name] for key, name in NAMES.items()}


BROKEN = notebook_functions(student_path(LAB_DIR))
FIXED = notebook_functions(LAB_DIR / "solution.ipynb")


def verdicts(key, fn, seed=None) -> list:
    """The judge's message (None = pass) on every public case, or on the
    hidden cases of ``seed``."""
    q = Q[key]
    cases = q.public_cases() if seed is None else q.hidden_cases(seed)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # F.mse_loss warns when it broadcasts
        for _, inputs in cases:
            expected = q.expected_outputs(inputs)
            out.append(checks.judge(q, expected, checks.run_one(q, fn, inputs)))
    return out


def assert_passes(key, fn, seed=None):
    found = verdicts(key, fn, seed)
    assert found == [None] * len(found), found


def assert_fails_with(key, fn, words, seed=None):
    found = verdicts(key, fn, seed)
    for message in found:
        assert message, f"{key}: a case passed"
        for word in words:
            assert word in message, message
    return found


# --- the symptoms each broken function shows ---------------------------------------

SYMPTOMS = {
    "q1": ["from step 2 on", "and it grows",
           "is not the gradient of the cross-entropy on that step's batch"],
    "q2": ["at every step", "times as long", "the losses it returns are not the "
           "cross-entropy of the network's outputs", "never goes below"],
    "q3": ["predicts nearly the same value for every input",
           "held-out mean squared error"],
    "q4": ["the standardised training set depends on the test split",
           "the training split does not come out standardised"],
    "q5": ["the autograd graph kept alive grows with every step",
           "nodes per step", "still carries an autograd graph"],
    "q6": ["called twice on the same inputs, it gives different predictions",
           "depends on the other examples in the batch",
           "changed the model's state"],
    "q7": ["right on", "of the held-out digits", "though the loss it reports falls",
           "the digit one below the true one"],
    "q8": ["the body never changes during the steps that should train the whole "
           "network", "held-out digits"],
}  # fmt: skip


@pytest.mark.parametrize("key", list(Q))
def test_each_broken_function_fails_every_case_with_its_symptom(key):
    for seed in (None, 3):  # the public cases, then a grader's hidden ones
        for message in assert_fails_with(key, BROKEN[key], SYMPTOMS[key], seed):
            said = [cure for cure in CURES if cure in message]
            assert not said, (said, message)


@pytest.mark.parametrize("key", list(Q))
def test_the_solution_passes_every_case(key):
    for seed in (None, 3, 11):  # public, then two graders' hidden cases
        assert_passes(key, FIXED[key], seed)


def test_the_broken_and_fixed_functions_are_the_notebooks():
    for key in Q:
        assert BROKEN[key].__code__.co_code != FIXED[key].__code__.co_code, key


def test_the_inline_check_prints_the_symptom(capsys):
    assert lab6.check_q5(BROKEN["q5"]) is False
    out = capsys.readouterr().out
    assert out.startswith("[FAIL] q5") and "grows with every step" in out
    assert lab6.check_q5(FIXED["q5"]) is True


def test_hidden_cases_vary_with_the_seed_and_differ_from_the_public_ones():
    for key, q in Q.items():
        public = [inputs for _, inputs in q.public_cases()]
        a, b = q.hidden_cases(3), q.hidden_cases(4)
        assert [i for _, i in a] != [i for _, i in b], key
        assert not any(inputs in public for _, inputs in a), key


# --- fixes written otherwise pass -----------------------------------------------------


def q1_zero_after_step(model, optimizer, batches):
    losses = []
    for X, y in batches:
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        optimizer.step()
        model.zero_grad()  # cleared after the step instead of before
        losses.append(float(loss))
    return losses


def q1_zero_in_place(model, optimizer, batches):
    losses = []
    for X, y in batches:
        optimizer.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())  # 0-dim tensors are fine too
    return losses


def q2_nll_of_log_softmax(model, optimizer, batches):
    losses = []
    for X, y in batches:
        optimizer.zero_grad()
        loss = F.nll_loss(F.log_softmax(model(X), dim=1), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def q2_log_of_probabilities(model, optimizer, batches):
    losses = []
    for X, y in batches:
        optimizer.zero_grad()
        probs = F.softmax(model(X), dim=1)
        loss = F.cross_entropy(torch.log(probs), y)  # softmax(log p) = p
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def q3_unsqueezed_target(model, optimizer, batches):
    for X, y in batches:
        optimizer.zero_grad()
        loss = ((model(X) - y[:, None]) ** 2).mean()
        loss.backward()
        optimizer.step()


def q3_mse_loss_on_a_view(model, optimizer, batches):
    for X, y in batches:
        optimizer.zero_grad()
        loss = F.mse_loss(model(X).view(-1), y)
        loss.backward()
        optimizer.step()


def q4_population_std(X_train, X_test):
    std, mean = torch.std_mean(X_train, dim=0, correction=0)
    return (X_train - mean) / std, (X_test - mean) / std


def q5_float(model, optimizer, batches):
    total = 0.0
    for X, y in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        optimizer.step()
        total += float(loss)
    return total / len(batches)


def q5_detached_tensor(model, optimizer, batches):
    running_loss = 0.0
    for X, y in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        optimizer.step()
        running_loss += loss.detach()
    return running_loss / len(batches)


def q6_mode_restored(model, X):
    was_training = model.training
    model.train(False)
    with torch.inference_mode():
        predictions = model(X).argmax(dim=1)
    model.train(was_training)
    return predictions


def q7_where(model, optimizer, batches):
    losses = []
    for X, labels in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X), torch.where(labels == 10, 0, labels))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def q8_add_param_group(model, batches, lr, head_steps):
    body, head = model[:-1], model[-1]
    body.requires_grad_(False)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr)
    for step, (X, y) in enumerate(batches):
        if step == head_steps:
            body.requires_grad_(True)
            optimizer.add_param_group({"params": list(body.parameters())})
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
    return model


def q8_new_optimizer(model, batches, lr, head_steps):
    for p in model[:-1].parameters():
        p.requires_grad = False
    optimizer = torch.optim.SGD(model[-1].parameters(), lr=lr)
    for step, (X, y) in enumerate(batches):
        if step == head_steps:
            for p in model[:-1].parameters():
                p.requires_grad = True
            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
    return model


@pytest.mark.parametrize(
    "key, fix",
    [
        ("q1", q1_zero_after_step), ("q1", q1_zero_in_place),
        ("q2", q2_nll_of_log_softmax), ("q2", q2_log_of_probabilities),
        ("q3", q3_unsqueezed_target), ("q3", q3_mse_loss_on_a_view),
        ("q4", q4_population_std), ("q5", q5_float), ("q5", q5_detached_tensor),
        ("q6", q6_mode_restored), ("q7", q7_where), ("q8", q8_add_param_group),
        ("q8", q8_new_optimizer),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)  # fmt: skip
def test_a_fix_written_otherwise_passes(key, fix):
    assert_passes(key, fix)
    assert_passes(key, fix, seed=5)


# --- fixes that hide the symptom, or fix half of it, fail -----------------------------


def q1_smaller_steps(model, optimizer, batches):
    for group in optimizer.param_groups:
        group["lr"] /= 10  # steps as short as the sum of gradients is long
    return BROKEN["q1"](model, optimizer, batches)


def q1_clipped(model, optimizer, batches):
    losses = []
    for X, y in batches:
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


def q1_cleared_before_the_step(model, optimizer, batches):
    losses = []
    for X, y in batches:
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        optimizer.zero_grad()  # the gradient is gone before the step uses it
        optimizer.step()
        losses.append(loss.item())
    return losses


def q2_larger_learning_rate(model, optimizer, batches):
    for group in optimizer.param_groups:
        group["lr"] *= 10  # makes up for the squashed gradient's length
    return BROKEN["q2"](model, optimizer, batches)


def q2_smaller_learning_rate(model, optimizer, batches):
    for group in optimizer.param_groups:
        group["lr"] /= 10
    return BROKEN["q2"](model, optimizer, batches)


def q3_mse_loss_broadcasting(model, optimizer, batches):
    for X, y in batches:
        optimizer.zero_grad()
        loss = F.mse_loss(model(X), y)  # the same (B, B), with a warning
        loss.backward()
        optimizer.step()


def q3_one_example_at_a_time(model, optimizer, batches):
    for X, y in batches:  # batches of one cannot broadcast to (B, B)
        for i in range(len(X)):
            optimizer.zero_grad()
            loss = ((model(X[i : i + 1]) - y[i : i + 1]) ** 2).mean()
            loss.backward()
            optimizer.step()


def q4_each_split_its_own(X_train, X_test):
    def scale(X):
        return (X - X.mean(dim=0)) / X.std(dim=0)

    return scale(X_train), scale(X_test)


def q5_converted_at_the_end(model, optimizer, batches):
    running_loss = 0.0
    for X, y in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        optimizer.step()
        running_loss += loss
    return running_loss.item() / len(batches)


def q6_seeded_dropout(model, X):
    torch.manual_seed(0)  # the same dropout masks every call
    with torch.no_grad():
        return model(X).argmax(dim=1)


def q7_clamped(model, optimizer, batches):
    losses = []
    for X, labels in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X), labels.clamp(max=9))  # 0 becomes 9
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def q8_larger_learning_rate(model, batches, lr, head_steps):
    return BROKEN["q8"](model, batches, 3 * lr, head_steps)


def q8_never_frozen(model, batches, lr, head_steps):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for X, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
    return model


@pytest.mark.parametrize(
    "key, fix, words",
    [
        ("q1", q1_smaller_steps, ["from step 2 on", "and it grows"]),
        ("q1", q1_clipped, ["from step 2 on"]),
        ("q1", q1_cleared_before_the_step, ["at every step", "0 times as long"]),
        ("q2", q2_larger_learning_rate, ["at every step", "never goes below"]),
        ("q2", q2_smaller_learning_rate, ["at every step", "never goes below"]),
        ("q3", q3_mse_loss_broadcasting, ["nearly the same value for every input"]),
        ("q4", q4_each_split_its_own, ["depends on which other examples are in "
                                       "the test split"]),
        ("q5", q5_converted_at_the_end, ["grows with every step"]),
        ("q6", q6_seeded_dropout, ["depends on the other examples in the batch",
                                   "changed the model's state"]),
        ("q7", q7_clamped, ["is not the gradient of the cross-entropy"]),
        ("q8", q8_larger_learning_rate, ["the body never changes"]),
        ("q8", q8_never_frozen, ["already moves during the head-only steps"]),
    ],
    ids=lambda v: getattr(v, "__name__", None) if callable(v) else None,
)  # fmt: skip
def test_a_fix_that_hides_the_symptom_fails(key, fix, words):
    assert_fails_with(key, fix, words)
    assert all(verdicts(key, fix, seed=5)), "a hidden case passed"


def test_batches_of_one_are_not_the_steps_asked_for():
    """Shrinking the batch to one example avoids the broadcast, and trains
    another run: one step per example instead of one per batch."""
    q = Q["q3"]
    _, inputs = lab6._regression_case(0, 0.2, 16, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        actual = checks.run_one(q, q3_one_example_at_a_time, inputs)
    message = checks.judge(q, q.expected_outputs(inputs), actual)
    assert "it took 192 optimizer steps for 12 batches" in message, message


def test_a_returned_graph_is_a_symptom_of_its_own():
    def returns_the_graph(model, optimizer, batches):  # the steps are sound
        losses = []
        for X, y in batches:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(X), y)
            loss.backward()
            optimizer.step()
            losses.append(loss)
        return sum(losses) / len(losses)

    (message,) = verdicts("q5", returns_the_graph)
    assert "still carries an autograd graph" in message
    assert "grows with every step" in message  # the list holds every graph


def test_a_function_that_returns_nothing_fails_without_a_crash():
    for key in ("q1", "q2", "q5", "q7"):
        for message in verdicts(key, lambda *args: None):
            assert message.startswith("your code raised TypeError"), message


# --- what the answers may not use -----------------------------------------------------


def q1_by_fit(model, optimizer, batches):
    return fit(model, batches, optimizer, num_epochs=1, progress=False).step_loss


def q4_by_the_course(X_train, X_test):
    scale = Standardizer.fit(X_train)
    return scale(X_train), scale(X_test)


@pytest.mark.parametrize(
    "check, answer, used",
    [
        (lab6.check_q1, q1_by_fit, "course_lib.train.fit"),
        (lab6.check_q4, q4_by_the_course, "course_lib.data.Standardizer"),
        (lab6.check_q6, lab6._predict_reference, "course_lib.labs"),
    ],
)
def test_a_forbidden_route_is_named(capsys, check, answer, used):
    assert check(answer) is False
    assert f"not allowed: it uses {used}" in capsys.readouterr().out
