"""What keeps one graded submission from reaching another, or the grader.

Without a container, the grader runs submissions as the grading user, so it
cannot make files unwritable to them. It does four things instead:

- **private copies**: each notebook kernel, and each process that computes a
  submission's answers (:mod:`course_lib.labs.answers`), imports a
  ``course_lib`` written for it alone from the bytes the grader read at start,
  with a cache folder of its own, in a fresh temporary folder;
- **verified files** (:class:`Guard`): ``course_lib``'s own folder, the
  submissions folder, the grades folder and the course cache are read into
  memory before grading; after each submission whatever changed is put back,
  what appeared is removed, and the change is reported;
- **every process ends**: the process that drives a submission is a *child
  subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``), so a process the notebook
  starts stays its descendant even after ``setsid`` and a double fork, and
  :func:`kill_descendants` ends them all with ``SIGKILL``;
- **limits**: a wall-clock budget per notebook (its kernel and everything
  under it are killed when it runs out), and per-process limits on memory
  (``RLIMIT_AS``) and file size (``RLIMIT_FSIZE``).

A container or VM per submission adds what this cannot: processes of
submissions graded side by side (``--jobs`` > 1) could signal or read each
other, and a submission can read any file the grading user can.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
#: Guarded files larger than this are kept as a hash, not a copy.
MAX_GUARDED_BYTES = 64 * 2**20


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def set_limits(memory_bytes: int | None, file_bytes: int | None) -> None:
    """Cap this process's (and its children's) address space and file size."""
    import resource

    for kind, value in ((resource.RLIMIT_AS, memory_bytes),
                        (resource.RLIMIT_FSIZE, file_bytes)):  # fmt: skip
        if value is not None:
            resource.setrlimit(kind, (value, value))


def _process_table() -> dict[int, tuple[int, str]]:
    """``{pid: (parent pid, state)}`` of every process, from /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int | None = None) -> list[int]:
    """Live (not zombie) descendants of ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    states = {}
    for child, (parent, state) in _process_table().items():
        children.setdefault(parent, []).append(child)
        states[child] = state
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if states[child] != "Z":
                found.append(child)
    return found


def kill_descendants(timeout: float = 10.0, reap: bool = True) -> list[int]:
    """SIGKILL every descendant of this process until none is left.

    A killed process's children are adopted by this (subreaper) process, so
    each pass finds them. ``reap`` collects the exit status of dead children
    (leave it False while another thread is waiting for one). Returns the
    pids killed.
    """
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reap:
            _reap()
        pids = descendants()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    if reap:
        _reap()
    return killed


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# ----------------------------------------------------------------- files


def read_tree(root: Path, skip=()) -> dict[str, bytes]:
    """``{relative path: bytes}`` of the regular files under ``root``."""
    root, files = Path(root), {}
    skip = tuple(Path(s).resolve() for s in skip)
    if not root.is_dir():
        return files
    for path in sorted(root.rglob("*")):
        if any(path.resolve().is_relative_to(s) for s in skip):
            continue
        if path.is_file() and not path.is_symlink():
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    root = Path(root)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def package_files() -> dict[str, bytes]:
    """course_lib's source files (no compiled caches), as the grader read them."""
    root = Path(__file__).resolve().parents[1]
    return {
        name: data
        for name, data in read_tree(root).items()
        if "__pycache__" not in name.split("/")
    }


def private_tree(folder: Path, course: dict, cache: dict) -> dict:
    """A fresh ``folder`` with ``lib/course_lib``, ``cache`` and ``work``; the
    environment a process started there needs to use them."""
    write_tree(folder / "lib" / "course_lib", course)
    write_tree(folder / "cache", cache)
    (folder / "work").mkdir(parents=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(folder / "lib")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.update(COURSE_LIB_CACHE=str(folder / "cache"), PYTHONDONTWRITEBYTECODE="1",
               MPLBACKEND="Agg")  # fmt: skip
    return env


def changed_files(root: Path, files: dict[str, bytes]) -> list[str]:
    """Names under ``root`` that differ from ``files`` (changed, gone or new,
    compiled caches included)."""
    now = read_tree(root)
    names = set(files) | {n for n in now if "__pycache__" not in n.split("/")}
    names |= {n for n in now if n.endswith(".pyc")}
    return sorted(n for n in names if now.get(n) != files.get(n))


class Guard:
    """The files under ``root`` as they were; :meth:`restore` puts them back.

    Files over :data:`MAX_GUARDED_BYTES` are kept as a hash: a change to one
    is reported but cannot be undone.
    """

    def __init__(self, root: Path, label: str, skip=()):
        self.root, self.label, self.skip = Path(root), label, tuple(skip)
        self.files = {}
        for name, data in read_tree(self.root, self.skip).items():
            big = len(data) > MAX_GUARDED_BYTES
            self.files[name] = hashlib.sha256(data).hexdigest() if big else data

    def _same(self, kept, data: bytes) -> bool:
        if isinstance(kept, str):
            return hashlib.sha256(data).hexdigest() == kept
        return kept == data

    def restore(self) -> list[str]:
        """Undo every change since the snapshot; describe each one."""
        now = read_tree(self.root, self.skip)
        found = []
        for name in sorted(set(now) | set(self.files)):
            kept, path = self.files.get(name), self.root / name
            if name in now and kept is not None and self._same(kept, now[name]):
                continue
            try:
                if kept is None:
                    path.unlink()
                    found.append(f"{self.label}/{name} was created (removed)")
                elif isinstance(kept, str):
                    found.append(f"{self.label}/{name} was changed (too large to undo)")
                else:
                    if path.is_symlink() or path.exists():
                        path.unlink()
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(kept)
                    what = "changed" if name in now else "deleted"
                    found.append(f"{self.label}/{name} was {what} (restored)")
            except OSError as err:
                found.append(f"{self.label}/{name} was changed and could not be "
                             f"restored: {err}")  # fmt: skip
        return found
