"""Autograded labs: inline checks, student-notebook generation and grading.

- :mod:`course_lib.labs.checks`: the checking machinery (feedback messages).
- :mod:`course_lib.labs.generate`: ``solution.ipynb`` -> student notebook
  (``make labs``).
- :mod:`course_lib.labs.grade`: grade a folder of submissions (``make grade``).
- one module per lab (``lab01_sgd``, ...) with its questions and ``check_qN``.
"""

import importlib

LABS = ("lab01_sgd", "lab02_optim", "lab03_parallel")


def get_lab(name: str):
    """The question module of lab ``name`` (e.g. ``"lab01_sgd"``)."""
    if name not in LABS:
        raise ValueError(f"lab must be one of {LABS}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
