"""Checks for lab answers: run a student's function and say what is wrong.

A lab question is a :class:`Question`: the name of the function the student
writes, a ``run`` harness that calls such a function on one case's inputs and
returns its outputs (tensors, numbers, strings, lists or dicts of them), the
reference implementation, and the cases (public ones, shown in the notebook,
and hidden ones drawn from a seed at grading time).

The same pieces serve two places:

- inline, ``check(question, student_fn)`` runs the public cases in the
  notebook and prints what was expected, what came back and where they
  differ; it never raises, so the notebook always runs to the end;
- in grading (:mod:`course_lib.labs.grade`), the student's outputs are
  computed in the student's kernel but compared here, in the grader's own
  process, where nothing the notebook patched has any effect.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Inputs = dict
Case = tuple[str, Inputs]  # (label shown to the student, inputs of the run)


@dataclass(frozen=True)
class Question:
    """One lab question: which function, how to run it, how to judge it."""

    key: str  # "q1"
    function: str  # the name the student's function must have
    title: str
    run: Callable[[Callable, Inputs], object]  # (fn, inputs) -> outputs
    reference: Callable  # the correct function, passed to ``run``
    public_cases: Callable[[], list[Case]]
    hidden_cases: Callable[[int], list[Case]]  # seed -> cases
    points: float = 1.0
    rtol: float = 1e-6
    atol: float = 1e-8
    hints: dict = field(default_factory=dict)  # exception type name -> hint
    # (expected, actual, rtol, atol) -> message or None; default: :func:`compare`
    explain: Callable | None = None


class NotImplementedYet(Exception):
    """The student's stub still raises NotImplementedError (from ``run_one``)."""


class NoAnswer(Exception):
    """Grading found no answer to judge (no such function, the cell never finished)."""


class StudentError(Exception):
    """An exception the student's code raised in another process (grading)."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name


def run_one(question: Question, fn: Callable, inputs: Inputs):
    """The outputs of ``fn`` on one case, or an ``Exception`` describing the failure."""
    try:
        return question.run(fn, inputs)
    except NotImplementedError:
        return NotImplementedYet(f"{question.function} is not implemented yet")
    except Exception as err:  # noqa: BLE001 - any student error is a finding
        where = traceback.extract_tb(err.__traceback__)[-1]
        return type(err)(f"{err} (raised at line {where.lineno}: {where.line})")


def compare(
    expected, actual, *, rtol: float, atol: float, path: str = ""
) -> str | None:
    """None if ``actual`` matches ``expected``; else where and how it does not."""
    at = f" at {path}" if path else ""
    if isinstance(expected, torch.Tensor):
        return _compare_tensors(expected, actual, rtol=rtol, atol=atol, at=at)
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)):
            return f"expected a list{at}, got {type(actual).__name__}"
        if len(actual) != len(expected):
            return f"expected {len(expected)} items{at}, got {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            problem = compare(e, a, rtol=rtol, atol=atol, path=f"{path}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(actual) != set(expected):
            got = sorted(actual) if isinstance(actual, dict) else type(actual).__name__
            return f"expected keys {sorted(expected)}{at}, got {got}"
        for k in expected:
            problem = compare(
                expected[k], actual[k], rtol=rtol, atol=atol, path=f"{path}[{k!r}]"
            )
            if problem:
                return problem
        return None
    if isinstance(expected, float):
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return f"expected a number{at}, got {type(actual).__name__} {actual!r}"
        if math.isclose(actual, expected, rel_tol=rtol, abs_tol=atol):
            return None
        gap = actual - expected
        return f"expected {expected!r}{at}, got {actual!r} (difference {gap:.3g})"
    if actual != expected or type(actual) is not type(expected):
        return f"expected {expected!r}{at}, got {actual!r}"
    return None


def _compare_tensors(expected, actual, *, rtol, atol, at) -> str | None:
    if not isinstance(actual, torch.Tensor):
        return f"expected a tensor{at}, got {type(actual).__name__}"
    if actual.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}{at}, got {tuple(actual.shape)}"
    if actual.dtype != expected.dtype:
        return f"expected dtype {expected.dtype}{at}, got {actual.dtype}"
    try:
        torch.testing.assert_close(
            actual, expected, rtol=rtol, atol=atol, equal_nan=True
        )
        return None
    except AssertionError:
        pass
    diff = (actual.double() - expected.double()).abs().nan_to_num(math.inf)
    flat = int(diff.flatten().argmax())
    index = tuple(
        int(i) for i in torch.unravel_index(torch.tensor(flat), expected.shape)
    )
    bad = int(
        (~torch.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)).sum()
    )
    return (
        f"values differ{at}: {bad} of {expected.numel()} elements are off; the largest "
        f"difference is at index {index}: expected {expected[index].item():.6g}, "
        f"got {actual[index].item():.6g}"
    )


def judge(question: Question, expected, actual) -> str | None:
    """None if right; else why not (also for an exception the student's code raised)."""
    if isinstance(actual, (NotImplementedYet, NoAnswer)):
        return str(actual)
    if isinstance(actual, StudentError):  # raised in the student's kernel
        type_name, text = actual.type_name, str(actual)
    elif isinstance(actual, Exception):  # raised here, by an inline check
        type_name = type(actual).__name__
        text = f"{type_name}: {actual}"
    else:
        explain = question.explain or compare
        return explain(expected, actual, rtol=question.rtol, atol=question.atol)
    hint = question.hints.get(type_name, "")
    return f"your code raised {text}" + (f" ({hint})" if hint else "")


def check(question: Question, fn) -> bool:
    """Run the public cases of ``question`` on ``fn`` and print the verdict.

    Returns True if every case passed. Never raises: whatever goes wrong is
    reported as a failed check, so the rest of the notebook still runs.
    """
    name = getattr(fn, "__name__", repr(fn))
    header = f"{question.key} ({question.title})"
    if not callable(fn):
        print(f"[FAIL] {header}: expected a function, got {type(fn).__name__}")
        return False
    failures = []
    cases = question.public_cases()
    for label, inputs in cases:
        expected = question.run(question.reference, inputs)
        actual = run_one(question, fn, inputs)
        if isinstance(actual, NotImplementedYet):
            print(f"[FAIL] {header}: {actual}")
            return False
        problem = judge(question, expected, actual)
        if problem:
            failures.append(f"  case {label}: {problem}")
    if not failures:
        print(f"[pass] {header}: {name} passed all {len(cases)} cases")
        return True
    print(f"[FAIL] {header}: {len(failures)} of {len(cases)} cases failed")
    print("\n".join(failures))
    return False


def parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of ``model``'s parameters flattened in order: '0.weight[2, 1]', ...

    Feedback can then say which weight differs instead of a flat index.
    """
    names = []
    for name, p in model.named_parameters():
        for index in torch.cartesian_prod(*[torch.arange(n) for n in p.shape]).reshape(
            -1, p.dim()
        ):
            names.append(f"{name}[{', '.join(str(int(i)) for i in index)}]")
    return names


def check_function(question: Question) -> Callable[[object], bool]:
    """The ``check_qN`` function a lab notebook calls for ``question``."""

    def run_check(answer) -> bool:
        return check(question, answer)

    run_check.__name__ = run_check.__qualname__ = f"check_{question.key}"
    run_check.__doc__ = (
        f"Check ``{question.function}`` ({question.title}) on the public cases "
        "and print what was expected where it differs. Never raises."
    )
    return run_check
