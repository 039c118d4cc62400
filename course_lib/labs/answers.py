"""Compute a submission's answers in a fresh process its notebook never ran in.

``python -m course_lib.labs.answers`` is started by the grader
(:mod:`course_lib.labs.grade`) once per submission, after the notebook itself
has run and its kernel (with everything it started) has been killed. It
reads one request from stdin (``torch.save`` of ``{"lab", "cells", "cases",
"case_timeout"}``), then

1. keeps, from the notebook's code cells, only the statements that *define*
   things: imports, ``def`` and ``class`` statements, and assignments of a
   name to a value that calls nothing (``EPS = 1e-8``, ``act = F.relu``).
   Expressions, loops, calls, and assignments to attributes or items
   (``torch.save = ...``) are not run, so nothing the notebook patched or
   printed exists here;
2. runs those definitions, then each question's function on every case
   (public and hidden), each under the question's forbidden-use watch
   (:mod:`course_lib.labs.forbid`) and a per-case time limit;
3. writes one frame per outcome to its stdout (the grader's answers file):
   the output (tensors and plain values only) or the error, as soon as each
   case ends, so a kill loses only the cases not yet run. A forbidden use is
   written the moment the watch sees it, before the answer could undo it.

The grader, not this process, compares the outputs with the right ones (it
never sends them here). Before the notebook's code runs, this process notes
what course_lib's modules and the lab's questions (and the modules that save
the answers) are bound to; if a definition or an answer rebinds any of them,
it writes a "tampered" frame and stops.
"""

from __future__ import annotations

import ast
import io
import linecache
import os
import signal
import struct
import sys

import torch

from . import forbid, get_lab
from .checks import NotImplementedYet, StudentError, run_one

# Frame kinds: one byte, then a 4-byte big-endian length, then the payload.
ANSWER, USED, TAMPERED, DONE = b"A", b"U", b"T", b"D"
MAX_FRAME = 4 * 2**20  # bytes of one case's output; lab outputs are kilobytes
_HEADER = struct.Struct(">cI")
# The grader's name for the notebook's functions (never importable, so
# cloudpickle sends them to launch's workers by value).
STUDENT_MODULE = "__student__"
# Modules whose bindings an answer must leave alone besides course_lib's: what
# writes the answers. (Not torch's namespace: torch rebinds some of its own
# names when parts of it load, e.g. torch._dynamo wraps torch.manual_seed.)
_WATCHED_MODULES = ("torch.serialization", "pickle", "io")


def encode_frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def read_frames(data: bytes) -> list[tuple[bytes, bytes]]:
    """The ``(kind, payload)`` frames in ``data``; a truncated tail is dropped."""
    frames, at = [], 0
    while at + _HEADER.size <= len(data):
        kind, size = _HEADER.unpack_from(data, at)
        at += _HEADER.size
        if at + size > len(data):
            break
        frames.append((kind, data[at : at + size]))
        at += size
    return frames


# ------------------------------------------------------------ what is kept


def _calls_something(node) -> bool:
    """True if evaluating ``node`` calls anything (a lambda's body does not run)."""
    todo = [node]
    while todo:
        item = todo.pop()
        if isinstance(item, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom,
                             ast.NamedExpr, ast.ListComp, ast.SetComp,
                             ast.DictComp, ast.GeneratorExp)):  # fmt: skip
            return True
        if isinstance(item, ast.Lambda):
            todo.extend(item.args.defaults + [d for d in item.args.kw_defaults if d])
            continue
        todo.extend(ast.iter_child_nodes(item))
    return False


def _is_name_target(target) -> bool:
    if isinstance(target, ast.Name):
        return True
    if isinstance(target, (ast.Tuple, ast.List)):
        return all(_is_name_target(t) for t in target.elts)
    return False


def _target_names(target) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for t in target.elts for n in _target_names(t)]
    return []


def definitions(cells: list[str]):
    """The defining statements of ``cells`` (sources), compiled one by one.

    Returns ``(codes, skipped)``: a list of code objects, named ``<cell N>``
    with the notebook's line numbers, and the names that top-level statements
    *not* kept would have assigned (to explain a ``NameError`` in grading).
    """
    from IPython.core.inputtransformer2 import TransformerManager

    transform = TransformerManager().transform_cell
    codes, skipped = [], set()
    for number, source in enumerate(cells):
        try:
            source = transform(source)
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue  # the notebook's own run reported it
        name = f"<cell {number}>"  # tracebacks quote the student's line from here
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        for node in tree.body:
            keep = isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef,
                                     ast.AsyncFunctionDef, ast.ClassDef))  # fmt: skip
            if isinstance(node, ast.Assign):
                keep = all(map(_is_name_target, node.targets)) and not (
                    _calls_something(node.value)
                )
            elif isinstance(node, ast.AnnAssign):
                keep = isinstance(node.target, ast.Name) and not (
                    node.value is not None and _calls_something(node.value)
                )
            if not keep:
                for target in getattr(node, "targets", [getattr(node, "target", None)]):
                    skipped.update(_target_names(target))
                continue
            module = ast.Module(body=[node], type_ignores=[])
            codes.append(compile(module, name, "exec"))
    return codes, skipped


# ----------------------------------------------------------- what is guarded


class Bindings:
    """What course_lib's modules and classes, the lab's questions and the
    modules that save the answers are bound to now;
    :meth:`~course_lib.labs.answers.Bindings.changed` names the first
    rebinding since."""

    def __init__(self, questions: dict):
        self.items = []  # (label, namespace dict, key, value)
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] == "course_lib" or name in _WATCHED_MODULES:
                self._note(name, vars(module))
                for key, value in list(vars(module).items()):
                    if isinstance(value, type) and value.__module__ == name:
                        self._note(f"{name}.{key}", vars(value))
        for key, q in questions.items():
            self._note(f"QUESTIONS[{key!r}]", vars(q))

    def _note(self, label, namespace):
        self.items += [(label, namespace, k, v) for k, v in list(namespace.items())]

    def changed(self) -> str | None:
        """The first binding that differs from the snapshot, or None."""
        missing = object()
        for label, namespace, key, value in self.items:
            if namespace.get(key, missing) is not value:
                return f"{label}.{key}"
        return None


def plain(value, depth: int = 0):
    """``value`` if it is made only of tensors, numbers, strings, None, lists,
    tuples and dicts of them (exact types, so no code of the answer's runs
    when it is saved); else a TypeError."""
    if depth > 20:
        raise TypeError("the answer is nested more than 20 levels deep")
    kind = type(value)
    if kind is torch.Tensor:
        if value.layout != torch.strided:
            raise TypeError(f"the answer holds a {value.layout} tensor; make it dense")
        return value.detach().clone()
    if value is None or kind in (bool, int, float, str):
        return value
    if kind in (list, tuple):
        return kind(plain(v, depth + 1) for v in value)
    if kind is dict:
        if any(type(k) not in (str, int) for k in value):
            raise TypeError("the answer is a dict whose keys are not all str or int")
        return {k: plain(v, depth + 1) for k, v in value.items()}
    raise TypeError(
        f"the answer holds a {kind.__name__}; return tensors, numbers, strings, "
        "None, or lists, tuples and dicts of them"
    )


def record(output):
    """The frame payload's value for one outcome of
    :func:`~course_lib.labs.checks.run_one`."""
    if isinstance(output, StudentError):
        return _error(output.type_name, output.message)
    if isinstance(output, NotImplementedYet):
        return _error("NotImplementedYet", str(output))
    return plain(output)


def _serialize(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def main() -> None:
    request = torch.load(io.BytesIO(sys.stdin.buffer.read()), weights_only=True)
    out = os.dup(1)  # the answers file; the notebook's prints go nowhere
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    write, exit_now = os.write, os._exit  # builtins: no answer can rebind these

    def emit(kind: bytes, payload: bytes) -> None:
        write(out, encode_frame(kind, payload))

    lab = get_lab(request["lab"])
    questions, case_timeout = lab.QUESTIONS, float(request["case_timeout"])
    rules = {k: forbid.rules(q.forbidden) for k, q in questions.items()}
    always = forbid.rules(())
    codes, skipped = definitions(request["cells"])
    bindings = Bindings(questions)
    namespace = {"__name__": STUDENT_MODULE, "__builtins__": __builtins__}

    def stop_if_tampered() -> None:
        what = bindings.changed()
        if what is not None:
            emit(TAMPERED, what.encode())
            exit_now(0)

    def report(key, index):
        return lambda name: emit(USED, f"{key}\t{index}\t{name}".encode())

    watch = forbid.Watch(always, on_use=report("*", -1))
    with watch:
        for code in codes:
            try:
                exec(code, namespace)
            except Exception:  # noqa: BLE001 - the notebook's own run reported it
                pass
    stop_if_tampered()
    # A case's time limit raises KeyboardInterrupt (not caught by run_one's
    # ``except Exception``) from a C handler: a Python one would be a call into
    # course_lib.labs from the answer's frame, which the watch forbids.
    signal.signal(signal.SIGALRM, signal.default_int_handler)
    for key, question in questions.items():
        fn, late = namespace.get(question.function), False
        for index, case in enumerate(request["cases"][key]):
            if late or not callable(fn):
                why = (
                    "no answer: not run, an earlier case timed out"
                    if late
                    else f"no function named {question.function} in the notebook"
                )
                emit(ANSWER, _serialize([key, index, _error("NoAnswer", why)]))
                continue
            seen = report(key, index)
            signal.setitimer(signal.ITIMER_REAL, case_timeout)
            try:
                with forbid.Watch(rules[key], on_use=seen):
                    outcome = run_one(question, fn, case, on_use=seen)
                    try:
                        value = _explain_name_error(record(outcome), skipped)
                    except TypeError as err:
                        value = _error("TypeError", str(err))
                    payload = _serialize([key, index, value])
            except KeyboardInterrupt:
                late = True
                why = f"no answer: the case ran past {case_timeout:g} s"
                payload = _serialize([key, index, _error("NoAnswer", why)])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            stop_if_tampered()
            if len(payload) > MAX_FRAME:
                why = (f"no answer: the output is {len(payload)} bytes, over the "
                       f"{MAX_FRAME} a lab answer can be")  # fmt: skip
                payload = _serialize([key, index, _error("NoAnswer", why)])
            emit(ANSWER, payload)
    emit(DONE, b"")
    exit_now(0)  # no atexit hook or finaliser of the notebook's code runs


def _error(kind: str, message: str) -> dict:
    return {"__error__": kind, "message": message}


def _explain_name_error(value, skipped: set):
    if not (isinstance(value, dict) and value.get("__error__") == "NameError"):
        return value
    for name in skipped:
        if f"name '{name}' is not defined" in value["message"]:
            value = value | {"message": value["message"] + (
                f"; grading runs only the notebook's imports, def and class "
                f"statements and assignments that call nothing, and {name} is "
                "assigned by a statement that calls something: compute it "
                "inside your function")}  # fmt: skip
    return value


if __name__ == "__main__":
    main()
