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

An answer may also not switch the watch off or reach into the grader: called
from the student's own code, the functions in :data:`TAMPERING` (the profiler
and tracer switches, the frame and garbage-collector walkers, raw threads)
and anything in ``ctypes`` count as a forbidden use too. The rules are
immutable once built (frozen sets and tuples), so an answer that finds them
cannot empty them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import sysconfig
import threading
from pathlib import Path

import torch

ALWAYS = ("course_lib.labs",)  # the references: no answer may call them
#: Code in these folders is not the student's (torch, course_lib, the stdlib and
#: installed packages).
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


#: Called from a student's code, these switch the watch off or reach the grader's
#: own objects (its frames, everything the garbage collector holds), or start a
#: thread no profile hook follows; no lab answer needs them.
TAMPERING = (
    "sys.setprofile", "sys.settrace", "sys._getframe",
    "threading.setprofile", "threading.settrace", "_thread.start_new_thread",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "ctypes",
)  # fmt: skip


def is_student_code(filename: str) -> bool:
    """True for code outside :data:`LIBRARY_FOLDERS` and the interpreter's own
    frozen modules (a notebook cell, a test)."""
    return not filename.startswith(LIBRARY_FOLDERS + ("<frozen ",))


class ForbiddenUse(Exception):
    """The answer ran code of an object its question forbids."""

    def __init__(self, name: str):
        if name in TAMPERING or name.startswith("ctypes"):
            why = "which can switch off or bypass the grader's checks"
        else:
            why = (
                "which already computes this answer; write it from the building "
                "blocks the question allows"
            )
        super().__init__(f"it uses {name}, {why}")
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
    """What one question forbids, resolved to code objects and source folders.

    Built once, then read-only: frozen sets and tuples only.
    """

    def __init__(self, names):
        self.names = tuple(names) + ALWAYS
        code_names, folders = {}, {}  # code object / package folder -> its name
        forbidden_builtins = []  # C functions (torch.layer_norm): no code object
        for name in self.names:
            obj = _resolve(name)
            if inspect.ismodule(obj):
                folders[str(Path(obj.__file__).parent)] = name
            elif inspect.isbuiltin(obj):
                forbidden_builtins.append((obj, name))
            else:
                for code in _codes(obj):
                    code_names.setdefault(code, name)
        self.codes = frozenset(code_names)
        self.code_names = tuple(code_names.items())
        self.folders = tuple(folders.items())
        self.forbidden_builtins = tuple(forbidden_builtins)
        self.forbidden_ids = frozenset(id(obj) for obj, _ in forbidden_builtins)
        builtins_, tamper_codes, tamper_folders = [], {}, []
        for name in TAMPERING:
            obj = _resolve(name)
            if inspect.ismodule(obj):
                tamper_folders.append((str(Path(obj.__file__).parent), name))
            elif inspect.isbuiltin(obj):
                builtins_.append((obj, name))
            else:
                tamper_codes.update(dict.fromkeys(_codes(obj), name))
        self.tamper_folders = tuple(tamper_folders)
        self.tamper_builtins = tuple(builtins_)
        self.tamper_ids = frozenset(id(obj) for obj, _ in builtins_)
        self.tamper_codes = frozenset(tamper_codes)
        self.tamper_code_names = tuple(tamper_codes.items())

    def _name_of(self, code, pairs) -> str:
        return next((n for c, n in pairs if c is code), "a forbidden object")

    def used_by(self, code, caller) -> str | None:
        """The forbidden name ``code`` belongs to, if running it is a use."""
        if code in self.codes:
            return self._name_of(code, self.code_names)
        by_student = caller is not None and is_student_code(caller.co_filename)
        if not by_student:
            # A forbidden package counts when the student's own code calls into
            # it: the lab's harness calling its helpers, or torch calling a hook
            # the harness set, is not a use.
            return None
        if code in self.tamper_codes:
            return self._name_of(code, self.tamper_code_names)
        for folder, name in self.folders + self.tamper_folders:
            if code.co_filename.startswith(folder):
                return name
        return None

    def builtin_used_by(self, function, caller) -> str | None:
        """The name of ``function`` (a builtin about to be called from the code
        ``caller``) if it is one of :data:`TAMPERING` and the caller is the
        student's."""
        known = self.tamper_ids | self.forbidden_ids
        if id(function) not in known or not is_student_code(caller.co_filename):
            return None
        pairs = self.tamper_builtins + self.forbidden_builtins
        return next(n for f, n in pairs if f is function)

    def answer_is_forbidden(self, fn) -> str | None:
        """The forbidden name of ``fn`` itself, when the answer *is* a reference
        or one of the forbidden objects (``diagnose_curve = diagnose``)."""
        if id(fn) in self.forbidden_ids:  # ``layer_norm = torch.layer_norm``
            return next(n for f, n in self.forbidden_builtins if f is fn)
        for code in _codes(fn):
            if code in self.codes:
                return self._name_of(code, self.code_names)
            for folder, name in self.folders:
                if code.co_filename.startswith(folder):
                    return name
        return None


@functools.lru_cache(maxsize=64)
def rules(names: tuple) -> Rules:
    """The :class:`Rules` of ``names``, resolved once per process."""
    return Rules(names)


class Watch:
    """``with Watch(rules):`` notes in ``.used`` the first forbidden call.

    Threads started with ``threading`` while it is on are watched too.
    ``on_use(name)``, if given, is called the moment a use is seen (the grader
    reports it out of the process at once, before an answer could undo it).
    """

    def __init__(self, rules: Rules, on_use=None):
        self.rules, self.used, self.on_use = rules, None, on_use
        self._previous = self._previous_threads = None

    def __call__(self, frame, event, arg):  # the profile function
        if self.used is not None:
            return
        if event == "call":
            back = frame.f_back
            name = self.rules.used_by(frame.f_code, back.f_code if back else None)
        elif event == "c_call":  # ``frame`` is the caller's
            name = self.rules.builtin_used_by(arg, frame.f_code)
        else:
            return
        if name is not None:
            self.used = name
            if self.on_use is not None:
                self.on_use(name)

    def __enter__(self):
        self._previous = sys.getprofile()
        self._previous_threads = threading.getprofile()
        threading.setprofile(self)
        sys.setprofile(self)
        return self

    def __exit__(self, *exc):
        sys.setprofile(self._previous)
        threading.setprofile(self._previous_threads)
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
