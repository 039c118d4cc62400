"""Catch an answer that calls what it was asked to write.

Each question declares ``forbidden``: dotted names of the objects that
already compute its answer (``"torch.optim.Adam"``, ``"course_lib.train.sgd_step"``);
``course_lib.labs`` itself (the references) is forbidden to every answer.
While an answer runs, :class:`Watch` follows every Python function call with
``sys.setprofile`` and notes the first one that runs forbidden code, however
it was reached: a subclass that inherits the method, the object imported
under another name, a method reference captured earlier, ``getattr`` with a
computed name. What is checked is the code that runs, never the text.

Allowed building blocks stay allowed: tensor arithmetic, autograd,
``torch.optim.Optimizer`` as a base class, ``course_lib.models``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import sysconfig
from pathlib import Path

import torch

ALWAYS = ("course_lib.labs",)  # the references: no answer may call them
# Code in these folders is not the student's: torch, course_lib, the stdlib and
# installed packages.
LIBRARY_FOLDERS = tuple(
    str(path)
    for path in (
        Path(torch.__file__).parent,
        Path(__file__).parents[1],
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
    )
)


def is_student_code(filename: str) -> bool:
    """True for code outside :data:`LIBRARY_FOLDERS` (a notebook cell, a test)."""
    return not filename.startswith(LIBRARY_FOLDERS)


class ForbiddenUse(Exception):
    """The answer ran code of an object its question forbids."""

    def __init__(self, name: str):
        super().__init__(
            f"it uses {name}, which already computes this answer; write it from "
            "the building blocks the question allows"
        )
        self.name = name


def _resolve(name: str):
    """The object a dotted name refers to: the longest importable module prefix,
    then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ValueError(f"forbidden name {name!r} cannot be imported")


@functools.cache
def _building_blocks() -> tuple:
    """Base classes whose own methods an answer may use (a forbidden class's
    methods are collected up to the first of these in its MRO)."""
    import typing

    from torch.optim.lr_scheduler import LRScheduler
    from torch.utils.data import Dataset, Sampler

    return (torch.nn.Module, torch.optim.Optimizer, LRScheduler, Sampler, Dataset,
            typing.Generic, object)  # fmt: skip


def _codes(obj) -> set:
    """The code objects that run when ``obj`` (a function or class) is used."""
    if inspect.isclass(obj):
        codes = set()
        for klass in obj.__mro__:
            if klass in _building_blocks():  # shared by every subclass: allowed
                break
            for member in vars(klass).values():
                codes |= _codes(member) if not inspect.isclass(member) else set()
        return codes
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        return set().union(*(_codes(f) for f in (obj.fget, obj.fset) if f))
    func = inspect.unwrap(obj) if callable(obj) else obj
    code = getattr(func, "__code__", None)
    return {code} if code is not None else set()


class Rules:
    """What one question forbids, resolved to code objects and source folders."""

    def __init__(self, names):
        self.names = tuple(names) + ALWAYS
        self.code_names: dict = {}  # code object -> the forbidden name it belongs to
        self.folders: dict = {}  # a package's folder -> its forbidden name
        for name in self.names:
            obj = _resolve(name)
            if inspect.ismodule(obj):
                self.folders[str(Path(obj.__file__).parent)] = name
            else:
                for code in _codes(obj):
                    self.code_names.setdefault(code, name)

    def used_by(self, code, caller) -> str | None:
        """The forbidden name ``code`` belongs to, if running it is a use."""
        name = self.code_names.get(code)
        if name is not None:
            return name
        for folder, name in self.folders.items():
            # A forbidden package counts when the student's own code calls into
            # it: the lab's harness calling its helpers, or torch calling a hook
            # the harness set, is not a use.
            if code.co_filename.startswith(folder) and (
                caller is not None and is_student_code(caller.co_filename)
            ):
                return name
        return None

    def answer_is_forbidden(self, fn) -> str | None:
        """The forbidden name of ``fn`` itself, when the answer *is* a reference
        or one of the forbidden objects (``diagnose_curve = diagnose``)."""
        for code in _codes(fn):
            if code in self.code_names:
                return self.code_names[code]
            for folder, name in self.folders.items():
                if code.co_filename.startswith(folder):
                    return name
        return None


@functools.lru_cache(maxsize=64)
def rules(names: tuple) -> Rules:
    """The :class:`Rules` of ``names``, resolved once per process."""
    return Rules(names)


class Watch:
    """``with Watch(rules):`` notes in ``.used`` the first forbidden call."""

    def __init__(self, rules: Rules):
        self.rules, self.used, self._previous = rules, None, None

    def __call__(self, frame, event, arg):  # the profile function
        if event == "call" and self.used is None:
            back = frame.f_back
            self.used = self.rules.used_by(frame.f_code, back.f_code if back else None)

    def __enter__(self):
        self._previous = sys.getprofile()
        sys.setprofile(self)
        return self

    def __exit__(self, *exc):
        sys.setprofile(self._previous)
        return False


class Guarded:
    """An answer that watches itself wherever it is called, also in another
    process (a worker of ``course_lib.parallel.launch``): it travels by value
    with cloudpickle and raises :class:`ForbiddenUse` after a forbidden call."""

    def __init__(self, fn, names):
        self.fn, self.names = fn, tuple(names)
        self.__name__ = getattr(fn, "__name__", "answer")

    def __call__(self, *args, **kwargs):
        if isinstance(sys.getprofile(), Watch):  # watched already, in this process
            return self.fn(*args, **kwargs)
        watch = Watch(rules(self.names))
        with watch:
            out = self.fn(*args, **kwargs)
        if watch.used:
            raise ForbiddenUse(watch.used)
        return out
