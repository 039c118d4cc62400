"""Small helpers shared by several course_lib modules (not part of the API)."""

from __future__ import annotations

import numbers


def check_positive_int(name: str, value) -> None:
    """ValueError naming ``name`` unless ``value`` is an int >= 1 (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def history_field(history, key: str):
    """``history.key`` for a ``train.History``, ``history[key]`` for its dict form."""
    return history[key] if isinstance(history, dict) else getattr(history, key)
