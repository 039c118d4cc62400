"""Small helpers shared by several course_lib modules (not part of the API).

Argument checks live in :mod:`course_lib._args`.
"""

from __future__ import annotations


def history_field(history, key: str):
    """``history.key`` for a ``train.History``, ``history[key]`` for its dict form."""
    return history[key] if isinstance(history, dict) else getattr(history, key)
