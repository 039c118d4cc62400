"""Small helpers shared by several course_lib modules (not part of the API).

Argument checks live in :mod:`course_lib._args`.
"""

from __future__ import annotations


def history_field(history, key: str):
    """``history.key`` for a ``train.History``, ``history[key]`` for its dict form."""
    return history[key] if isinstance(history, dict) else getattr(history, key)


def cached_weights(model, name: str, spec: list, train, *, cache: bool, what: str):
    """``model`` with weights read from the course cache, or trained and stored.

    The file is ``cache_dir() / f"{name}-<digest>.pt"``, the digest that of
    ``spec`` (every setting, the shifted seed, the torch version), so a change
    of any of them trains again. An unreadable file is only a cache: ``train``
    runs again. Otherwise ``train(model)`` trains it in place and, with
    ``cache``, the weights are written then renamed, so a reader never sees
    half a file; a failed write (a read-only home) warns, naming ``what``.
    """
    import hashlib
    import json
    import pickle

    import torch

    from .data import cache_dir

    digest = hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:12]
    path = cache_dir() / f"{name}-{digest}.pt"
    if cache and path.exists():
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
            pass  # unreadable: train again
    train(model)
    if cache:
        _save_atomic(model.state_dict(), path, what)
    return model


def _save_atomic(state: dict, path, what: str) -> None:
    import os
    import tempfile
    import warnings
    from pathlib import Path

    import torch

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:  # e.g. a read-only home: still usable, just slower
        warnings.warn(f"could not cache {what}: {err}", stacklevel=4)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
