"""Argument checks shared by every course_lib module (not part of the API).

Each check returns the value in a plain Python type, or raises a ValueError in
one form, naming the argument and what it accepts, as ``torch.optim`` does::

    lr must be a real number >= 0, got -1
    mode must be one of ('fan_in', 'fan_out'), got 'fan'

The rules, the same in every module:

- integers: any ``numbers.Integral`` (``int``, ``np.int64``, ...) but ``bool``,
  within optional closed bounds; returned as ``int``.
- reals: any ``numbers.Real`` (``float``, ``int``, ``np.float32``, ...) but
  ``bool``, finite, within an interval written as in maths, ``"[0, 1)"``;
  infinity passes only where the interval closes on it, ``"(0, inf]"``.
  Returned as ``float``.
- booleans: ``True``/``False``, or NumPy's ``np.bool_`` (what ``arr.any()``
  returns, as ``np.int64`` is NumPy's int); returned as ``bool``. Nothing is
  coerced: 0, 1, "no" and None are refused.
- choices: one of a tuple of strings; callables; sequences (list, tuple,
  range; not a string) of integers or of reals, returned as tuples.

Bools are refused as numbers because ``lr=True`` or ``num_epochs=False`` is
always a mistake; NaN because every comparison with it is false, so a NaN lr
would silently train nothing.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch


def require(ok: bool, name: str, accepted: str, value: object) -> None:
    """Raise ``ValueError("{name} must be {accepted}, got {value!r}")`` unless ok."""
    if not ok:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def _int_words(low: int | None, high: int | None) -> str:
    """What an integer check accepts, e.g. "positive integer", "integer in [1, 8]"."""
    if low is not None and high is not None:
        return f"integer in [{low}, {high}]"
    if high is not None:
        return f"integer <= {high}"
    named = {None: "integer", 0: "non-negative integer", 1: "positive integer"}
    return named.get(low, f"integer >= {low}")


def _is_int(value: object, low: int | None, high: int | None) -> bool:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return ok and (low is None or value >= low) and (high is None or value <= high)


def check_int(name: str, value, *, low: int | None = None, high: int | None = None):
    """``value`` as an ``int``, if it is an integer in ``[low, high]``.

    Either bound may be left out; ``low=1`` asks for a positive integer.
    """
    words = _int_words(low, high)
    article = "an" if words.startswith("integer") else "a"
    require(_is_int(value, low, high), name, f"{article} {words}", value)
    return int(value)


@functools.lru_cache
def _interval(text: str) -> tuple[float, float, bool, bool, str]:
    """``"[0, 1)"`` -> (low, high, low closed, high closed, "in [0, 1)")."""
    low_text, high_text = (bound.strip() for bound in text[1:-1].split(","))
    low, high = float(low_text), float(high_text)
    closed_low, closed_high = text[0] == "[", text[-1] == "]"
    if math.isinf(low) and math.isinf(high):
        words = ""
    elif math.isinf(high):  # "[0, inf)" reads ">= 0"
        words = (">= " if closed_low else "> ") + low_text
        words += " (or inf)" if closed_high else ""
    elif math.isinf(low):
        words = ("<= " if closed_high else "< ") + high_text
    else:
        words = f"in {text}"
    return low, high, closed_low, closed_high, words


def _real_words(interval: str) -> str:
    words = _interval(interval)[-1]
    return f"a real number {words}" if words else "a finite real number"


def _is_real(value: object, interval: str) -> bool:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        x = float(value)
    except OverflowError:  # an int too large for a float
        return False
    low, high, closed_low, closed_high, _ = _interval(interval)
    # NaN fails every comparison below, so it is refused without a special case
    in_low = low <= x if closed_low else low < x
    in_high = x <= high if closed_high else x < high
    return in_low and in_high


def check_real(name: str, value, interval: str = "(-inf, inf)") -> float:
    """``value`` as a ``float``, if it is a real number in ``interval``.

    ``interval`` is written as in maths, ``"[0, 1)"``, ``"(0, inf)"``; the same
    string makes the check and the message, so they cannot disagree.
    """
    require(_is_real(value, interval), name, _real_words(interval), value)
    return float(value)


def check_bool(name: str, value) -> bool:
    """``value`` as a ``bool``, if it is True, False or a NumPy ``np.bool_``."""
    require(isinstance(value, (bool, np.bool_)), name, "True or False", value)
    return bool(value)


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """``value``, if it is one of the strings ``choices``."""
    choices = tuple(choices)
    ok = isinstance(value, str) and value in choices
    require(ok, name, f"one of {choices}", value)
    return value


def check_callable(
    name: str, value, accepted: str = "a callable", *, allow_class: bool = True
) -> Callable:
    """``value``, if it is callable (and, unless ``allow_class``, not a class)."""
    ok = callable(value) and (allow_class or not isinstance(value, type))
    require(ok, name, accepted, value)
    return value


def _is_sequence(value: object, length: int | None, nonempty: bool) -> bool:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return False
    return (length is None or len(value) == length) and (len(value) > 0 or not nonempty)


def _sequence_words(length: int | None, nonempty: bool) -> str:
    if length == 2:
        return "a pair of"
    return "a non-empty sequence of" if nonempty else "a sequence of"


def check_int_sequence(
    name: str, value, *, low: int | None = None, high: int | None = None,
    nonempty: bool = False,
) -> tuple[int, ...]:  # fmt: skip
    """``value`` as a tuple of ``int``, if it is a sequence of integers in bounds."""
    ok = _is_sequence(value, None, nonempty)
    ok = ok and all(_is_int(v, low, high) for v in value)
    words = _int_words(low, high).replace("integer", "integers")
    require(ok, name, f"{_sequence_words(None, nonempty)} {words}", value)
    return tuple(int(v) for v in value)


def check_real_sequence(
    name: str, value, interval: str = "(-inf, inf)", *, length: int | None = None
) -> tuple[float, ...]:
    """``value`` as a tuple of ``float``, if it is a sequence of reals in ``interval``.

    ``length=2`` asks for a pair, e.g. Adam's ``betas``.
    """
    ok = _is_sequence(value, length, False)
    ok = ok and all(_is_real(v, interval) for v in value)
    words = _real_words(interval).replace("a ", "", 1).replace("number", "numbers")
    require(ok, name, f"{_sequence_words(length, False)} {words}", value)
    return tuple(float(v) for v in value)


def check_generator(generator):
    """``generator`` if it is a ``torch.Generator`` or None; TypeError otherwise."""
    if generator is not None and not isinstance(generator, torch.Generator):
        accepted = "a torch.Generator or None"
        raise TypeError(f"generator must be {accepted}, got {generator!r}")
    return generator


def set_fields(obj: object, **values) -> None:
    """Store checked values on a frozen dataclass, from its ``__post_init__``."""
    for field, value in values.items():
        object.__setattr__(obj, field, value)  # frozen: no plain setattr
