"""Checks for lab answers: run a student's function and say what is wrong.

A lab is one module that declares its questions with :func:`declare` and
nothing else. A :class:`Question` names the function the student writes, a
``run`` harness that calls such a function on one case's inputs and returns
its outputs (tensors, numbers, strings, lists or dicts of them), the
reference (a correct function, or ``expected``, the outputs computed straight
from the inputs), the public cases shown in the notebook, the hidden cases
drawn from a seed at grading time, tolerances, hints, and the objects the
answer may not use (``forbidden``).

The same pieces serve two places:

- inline, ``check_qN(student_fn)`` (made by :func:`declare`) runs the public
  cases in the notebook and prints what was expected, what came back and
  where they differ; it never raises, so the notebook always runs to the end;
- in grading (:mod:`course_lib.labs.grade`), the student's outputs are
  computed from the submission but compared here, in the grader's own
  process, where nothing the notebook patched has any effect.
"""

from __future__ import annotations

import keyword
import math
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import forbid
from .forbid import is_student_code

Inputs = dict
Case = tuple[str, Inputs]  # (label shown to the student, inputs of the run)
_MAX_SHOWN = 120  # characters of a value quoted in a message


@dataclass(frozen=True)
class Question:
    """One lab question: which function, how to run it, how to judge it."""

    key: str  # "q1"
    function: str  # the name the student's function must have
    title: str
    run: Callable[[Callable, Inputs], object]  # (fn, inputs) -> outputs
    reference: Callable  # a correct function, passed to ``run``
    public_cases: Callable[[], list[Case]]
    hidden_cases: Callable[[int], list[Case]]  # seed -> cases
    points: float = 1.0
    rtol: float = 1e-6
    atol: float = 1e-8
    hints: dict = field(default_factory=dict)  # exception type name -> hint
    # (expected, actual, rtol, atol) -> message or None; default: :func:`compare`
    explain: Callable | None = None
    # inputs -> the right outputs, when they are not ``run(reference, inputs)``
    # (e.g. the pattern a learning curve was made to show)
    expected: Callable[[Inputs], object] | None = None
    # dotted names of what already computes the answer ("torch.optim.Adam")
    forbidden: tuple[str, ...] = ()

    def expected_outputs(self, inputs: Inputs):
        """The outputs a right answer gives on ``inputs``."""
        if self.expected is not None:
            return self.expected(inputs)
        return self.run(self.reference, inputs)


def declare(module_name: str, questions: list[Question]) -> dict[str, Question]:
    """Register a lab's questions; define ``check_q1``, ... in its module.

    A lab module ends with ``QUESTIONS = declare(__name__, [Question(...), ...])``:
    keys must be ``q1, q2, ...`` in order, function names valid identifiers,
    points positive. Returns ``{key: question}``.
    """
    keys = [q.key for q in questions]
    if keys != [f"q{i}" for i in range(1, len(questions) + 1)]:
        raise ValueError(f"question keys must be q1, q2, ... in order, got {keys}")
    for q in questions:
        if not q.function.isidentifier() or keyword.iskeyword(q.function):
            raise ValueError(f"{q.key}: function must be a name, got {q.function!r}")
        if not q.points > 0:
            raise ValueError(f"{q.key}: points must be > 0, got {q.points!r}")
        bad = [name for name in q.forbidden if not _is_dotted(name)]
        if bad:
            raise ValueError(f"{q.key}: forbidden must hold dotted names, got {bad}")
    module = sys.modules[module_name]
    for q in questions:
        setattr(module, f"check_{q.key}", check_function(q))
    return {q.key: q for q in questions}


def _is_dotted(name) -> bool:
    return isinstance(name, str) and all(p.isidentifier() for p in name.split("."))


class NotImplementedYet(Exception):
    """The student's stub still raises NotImplementedError (from ``run_one``)."""


class NoAnswer(Exception):
    """Grading found no answer to judge (no such function, the cell never finished)."""


class StudentError(Exception):
    """An exception the student's code raised, by type name and message."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message = type_name, message


def forbidden_use(name: str) -> StudentError:
    """The outcome of an answer that used the forbidden object ``name``."""
    return StudentError("ForbiddenUse", str(forbid.ForbiddenUse(name)))


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n((?: {4}[^\n]*)?)')


def student_line(tb) -> str:
    """``"line N: <code>"`` of the innermost frame in the student's code, from a
    traceback object or, for an error from another process, its text."""
    if isinstance(tb, str):
        frames = [(f, int(n), line) for f, n, line in _FRAME.findall(tb)]
    else:
        frames = [(f.filename, f.lineno, f.line) for f in traceback.extract_tb(tb)]
    mine = [f for f in frames if is_student_code(f[0])]
    if not mine:  # e.g. a wrong signature, or an output the harness cannot use
        return "the check's harness, calling your function or using what it returned"
    _, lineno, line = mine[-1]
    return f"line {lineno}: {(line or '').strip()}"


def run_one(question: Question, fn: Callable, inputs: Inputs, on_use=None):
    """The outputs of ``fn`` on one case, or an ``Exception`` describing the failure.

    A stub's ``NotImplementedError`` becomes :class:`NotImplementedYet`; any
    other exception a :class:`StudentError` that names the student's own line
    (not the innermost frame, which is often inside torch). ``on_use`` is
    passed to the :class:`~course_lib.labs.forbid.Watch`.
    """
    rules = forbid.rules(question.forbidden)
    used = rules.answer_is_forbidden(fn)
    if used:
        if on_use is not None:
            on_use(used)
        return forbidden_use(used)
    watch = forbid.Watch(rules, on_use=on_use)
    try:
        with watch:
            out = question.run(forbid.Guarded(fn, question.forbidden), inputs)
    except NotImplementedError:
        return NotImplementedYet(f"{question.function} is not implemented yet")
    except Exception as err:  # noqa: BLE001 - any student error is a finding
        if watch.used:  # the forbidden call came first, whatever failed after it
            return forbidden_use(watch.used)
        # A worker's error (course_lib.parallel.WorkerError) carries its type
        # name, message and traceback text from the other process.
        type_name = getattr(err, "type_name", type(err).__name__)
        text = shorten(getattr(err, "message", None) or str(err), 300)
        if type_name == "ForbiddenUse":  # raised by Guarded in a worker
            return StudentError(type_name, text)
        text_tb = getattr(err, "traceback", None)
        where = student_line(text_tb if isinstance(text_tb, str) and text_tb
                             else err.__traceback__)  # fmt: skip
        return StudentError(type_name, f"{text} (raised at {where})")
    return forbidden_use(watch.used) if watch.used else out


def shorten(text: str, limit: int = _MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _shown(value) -> str:
    try:
        return shorten(repr(value))
    except Exception:  # noqa: BLE001 - a value whose repr fails
        return f"<a {type(value).__name__}>"


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
            got = sorted(map(str, actual)) if isinstance(actual, dict) else None
            got = got if got is not None else type(actual).__name__
            return f"expected keys {sorted(expected)}{at}, got {shorten(str(got))}"
        for k in expected:
            problem = compare(
                expected[k], actual[k], rtol=rtol, atol=atol, path=f"{path}[{k!r}]"
            )
            if problem:
                return problem
        return None
    if isinstance(expected, float):
        return _compare_numbers(expected, actual, rtol=rtol, atol=atol, at=at)
    if type(actual) is not type(expected) or actual != expected:
        return f"expected {_shown(expected)}{at}, got {_shown(actual)}"
    return None


def _compare_numbers(expected: float, actual, *, rtol, atol, at) -> str | None:
    if isinstance(actual, bool) or not isinstance(actual, (int, float)):
        return f"expected a number{at}, got {type(actual).__name__} {_shown(actual)}"
    try:
        actual = float(actual)
    except OverflowError:
        return f"expected {expected!r}{at}, got an integer too large for a float"
    if math.isclose(actual, expected, rel_tol=rtol, abs_tol=atol) or (
        math.isnan(actual) and math.isnan(expected)
    ):
        return None
    gap = actual - expected
    return f"expected {expected!r}{at}, got {actual!r} (difference {gap:.3g})"


def tensor_mismatch(expected, actual, at: str = "") -> str | None:
    """Why ``actual`` cannot be compared with the tensor ``expected``, or None."""
    if not isinstance(actual, torch.Tensor):
        return f"expected a tensor{at}, got {type(actual).__name__}"
    if actual.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}{at}, got {tuple(actual.shape)}"
    if actual.dtype != expected.dtype:
        return f"expected dtype {expected.dtype}{at}, got {actual.dtype}"
    return None


def _compare_tensors(expected, actual, *, rtol, atol, at) -> str | None:
    problem = tensor_mismatch(expected, actual, at)
    if problem:
        return problem
    close = torch.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return None
    diff = (actual.double() - expected.double()).abs().nan_to_num(math.inf)
    diff[close] = 0  # the largest difference among the elements that are off
    flat = int(diff.flatten().argmax())
    index = tuple(
        int(i) for i in torch.unravel_index(torch.tensor(flat), expected.shape)
    )
    bad = int((~close).sum())
    return (
        f"values differ{at}: {bad} of {expected.numel()} elements are off; the largest "
        f"difference is at index {index}: expected {expected[index].item():.6g}, "
        f"got {actual[index].item():.6g}"
    )


NOT_ALLOWED = "not allowed"  # how a verdict on a forbidden use starts


def is_forbidden_use(actual) -> bool:
    """True if an outcome of :func:`run_one` is a forbidden use."""
    return getattr(actual, "type_name", None) == "ForbiddenUse"


def judge(question: Question, expected, actual) -> str | None:
    """None if right; else why not (also for an exception the student's code raised).

    Never raises: an answer that cannot even be compared is a wrong answer.
    """
    if isinstance(actual, (NotImplementedYet, NoAnswer)):
        return str(actual)
    if is_forbidden_use(actual):
        return f"{NOT_ALLOWED}: {actual.message}"
    if isinstance(actual, Exception):
        type_name = getattr(actual, "type_name", type(actual).__name__)
        text = str(actual) if isinstance(actual, StudentError) else (
            f"{type_name}: {actual}"
        )  # fmt: skip
        hint = question.hints.get(type_name, "")
        return f"your code raised {text}" + (f" ({hint})" if hint else "")
    explain = question.explain or compare
    try:
        return explain(expected, actual, rtol=question.rtol, atol=question.atol)
    except Exception as err:  # noqa: BLE001 - e.g. an exotic object as the answer
        return f"the answer could not be compared ({type(err).__name__}: {err})"


def check(question: Question, fn) -> bool:
    """Run the public cases of ``question`` on ``fn`` and print the verdict.

    Returns True if every case passed. Never raises (but lets an interrupt
    through): whatever goes wrong is reported as a failed check, so the rest
    of the notebook still runs.
    """
    header = f"{question.key} ({question.title})"
    try:
        return _check(question, fn, header)
    except Exception as err:  # noqa: BLE001 - the promise: a check never raises
        reason = f"{type(err).__name__}: {shorten(str(err))}"
        print(f"[FAIL] {header}: the check could not run ({reason}); rerun the "
              "lab's import cell and try again")  # fmt: skip
        return False


def _check(question: Question, fn, header: str) -> bool:
    if not callable(fn):
        print(f"[FAIL] {header}: expected a function, got {type(fn).__name__}")
        return False
    name = getattr(fn, "__name__", None) or question.function
    failures = []
    cases = question.public_cases()
    for label, inputs in cases:
        expected = question.expected_outputs(inputs)
        actual = run_one(question, fn, inputs)
        if isinstance(actual, NotImplementedYet) or is_forbidden_use(actual):
            print(f"[FAIL] {header}: {judge(question, expected, actual)}")
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
