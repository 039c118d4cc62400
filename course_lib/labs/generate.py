"""Make the student notebook of a lab from its solution notebook.

In ``labs/<lab>/solution.ipynb`` every answer sits between the markers

.. code-block:: python

    # BEGIN SOLUTION
    ...the answer...
    # END SOLUTION

:func:`student_version` replaces each such block by a stub that raises
``NotImplementedError`` (indented like the block), keeping any ``# HINT:``
comment lines from inside it; cells tagged ``solution-only`` are dropped; all
other cells (instructions, checks) are kept as they are, without outputs.

A lab whose students *repair* code (the bug zoo, lab 6) puts the broken lines
inside the solution block, commented out, between a second pair of markers:

.. code-block:: python

    # BEGIN SOLUTION
    optimizer.zero_grad()
    loss = F.cross_entropy(model(X), y)
    # BEGIN BROKEN
    # loss = F.cross_entropy(model(X).softmax(dim=1), y)
    # END BROKEN
    # END SOLUTION

The solution runs the block's other lines (the fix); the student version
drops them and puts the broken lines in their place, uncommented. Such a
block gets no stub: the student starts from the broken code. A fix that only
adds lines marks its block with an empty broken part (``# BEGIN BROKEN``
right above ``# END BROKEN``). Every line of a broken part must be a comment
(``# code``, ``# # a comment`` for a comment the student sees, or a bare
``#`` for an empty line), so that the solution never runs broken code by
mistake; ``# HINT:`` lines outside the broken parts are kept.

``python -m course_lib.labs.generate [labs_dir]`` (``make labs``) rewrites every
``labs/<lab>/<lab>.ipynb``; ``--check`` only reports which are out of date.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
BEGIN_BROKEN = re.compile(r"^\s*# BEGIN BROKEN\s*$")
END_BROKEN = re.compile(r"^\s*# END BROKEN\s*$")
COMMENTED = re.compile(r"^(\s*)#(?: |$)(.*)$")  # "    # code" -> ("    ", "code")
HINT = re.compile(r"^\s*# HINT:")
STUB = '{indent}raise NotImplementedError("{what}: not implemented yet")'


def _enclosing_def(lines: list[str]) -> str:
    """Name of the innermost ``def`` above the block, for the stub's message."""
    for line in reversed(lines):
        match = re.match(r"\s*def\s+(\w+)", line)
        if match:
            return match.group(1)
    return "this answer"


def _broken_lines(block: list[str], first: int) -> list[str] | None:
    """The student's lines for one solution block (starting at line ``first``):
    its broken parts uncommented, or None if it has no broken part."""
    out: list[str] = []
    broken, seen = None, False
    for number, line in enumerate(block, start=first):
        if broken is None and BEGIN_BROKEN.match(line):
            broken, seen = [], True
        elif broken is not None and END_BROKEN.match(line):
            out += broken
            broken = None
        elif broken is not None:
            if BEGIN_BROKEN.match(line):
                raise ValueError(f"line {number}: BEGIN BROKEN inside another part")
            match = COMMENTED.match(line)
            if not match:
                raise ValueError(
                    f"line {number}: a broken line must be commented out, got {line!r}"
                )
            code = match.group(2)
            out.append(match.group(1) + code if code else "")
        elif END_BROKEN.match(line):
            raise ValueError(f"line {number}: END BROKEN without BEGIN BROKEN")
        elif HINT.match(line):
            out.append(line)
    if broken is not None:
        raise ValueError("BEGIN BROKEN without END BROKEN")
    return out if seen else None


def strip_solutions(source: str) -> str:
    """The cell source with every solution block replaced by its stub, or by
    its broken lines when it has any."""
    out: list[str] = []
    block: list[str] | None = None
    indent, start = "", 0
    for number, line in enumerate(source.splitlines(), start=1):
        if block is None and (match := BEGIN.match(line)):
            block, indent, start = [], match.group(1), number + 1
        elif block is not None and END.match(line):
            broken = _broken_lines(block, start)
            if broken is not None:
                out += broken
            else:
                out += [h for h in block if HINT.match(h)]
                out.append(STUB.format(indent=indent, what=_enclosing_def(out)))
            block = None
        elif block is not None:
            if BEGIN.match(line):
                raise ValueError(f"line {number}: BEGIN SOLUTION inside another block")
            block.append(line)
        elif END.match(line):
            raise ValueError(f"line {number}: END SOLUTION without BEGIN SOLUTION")
        elif BEGIN_BROKEN.match(line) or END_BROKEN.match(line):
            raise ValueError(f"line {number}: a broken part outside a solution block")
        else:
            out.append(line)
    if block is not None:
        raise ValueError("BEGIN SOLUTION without END SOLUTION")
    return "\n".join(out)


def student_version(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``solution`` with answers stubbed and solution-only cells dropped."""
    nb = copy.deepcopy(solution)
    cells = []
    for cell in nb.cells:
        if "solution-only" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    nb.cells = cells
    return nb


def lab_dirs(labs_dir: Path) -> list[Path]:
    return sorted(p.parent for p in Path(labs_dir).glob("*/solution.ipynb"))


def student_path(lab_dir: Path) -> Path:
    return lab_dir / f"{lab_dir.name}.ipynb"


def render(lab_dir: Path) -> str:
    """The text the student notebook of ``lab_dir`` must have."""
    solution = nbformat.read(lab_dir / "solution.ipynb", as_version=4)
    return nbformat.writes(student_version(solution)) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("labs_dir", nargs="?", default="labs")
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = []
    for lab_dir in lab_dirs(Path(args.labs_dir)):
        text, path = render(lab_dir), student_path(lab_dir)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
            print(f"wrote {path}")
    if args.check and stale:
        print("out of date (run `make labs`):", *map(str, stale), sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
