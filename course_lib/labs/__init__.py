"""Autograded labs: inline checks, student-notebook generation and grading.

- :mod:`course_lib.labs.checks`: questions, feedback messages,
  :func:`~course_lib.labs.checks.declare`.
- :mod:`course_lib.labs.harness`: pieces lab harnesses share (tiny float64
  networks, the first-mismatch explainer).
- :mod:`course_lib.labs.generate`: ``solution.ipynb`` -> student notebook
  (``make labs``).
- :mod:`course_lib.labs.grade`: grade a folder of submissions (``make grade``).
- one module per lab, ``labNN_topic.py``, that declares its questions and
  nothing else; it is found by its name, so adding a lab registers it
  (``labs/README.md`` is the authoring guide).
"""

import importlib
import pkgutil
import re

_LAB_NAME = re.compile(r"lab\d{2}_[a-z0-9_]+")
_MODULES = pkgutil.iter_modules(__path__)
LABS = tuple(sorted(m.name for m in _MODULES if _LAB_NAME.fullmatch(m.name)))


def get_lab(name: str):
    """The question module of lab ``name`` (e.g. ``"lab01_sgd"``)."""
    if name not in LABS:
        raise ValueError(f"lab must be one of {LABS}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
