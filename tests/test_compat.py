"""The supported PyTorch range, said the same everywhere.

``make test-compat`` installs ``requirements.txt`` with the torch/torchvision
pair of ``requirements-compat.txt`` (the oldest the course supports) and runs
the unit tests there. These checks keep that file, the floor ``pyproject.toml``
declares, ``requirements.txt`` and the sentences that state the range in
agreement, so that the floor users are promised is the pair that was tested.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)$", re.M)


def pins(name: str) -> dict[str, str]:
    """``{package: version}`` of the ``name==version`` lines of a requirements file."""
    return dict(PIN.findall((ROOT / name).read_text()))


def floor(package: str) -> str:
    """The ``package>=version`` lower bound written in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    found = re.findall(rf'"{package}>=([0-9][^",;\s]*)"', text)
    assert len(found) == 1, f"pyproject.toml should state one {package}>= floor"
    return found[0]


COMPAT = pins("requirements-compat.txt")


@pytest.mark.parametrize("package", ["torch", "torchvision"])
def test_the_declared_floor_is_the_tested_pair(package):
    assert floor(package) == COMPAT[package]


def test_the_tested_pair_is_older_than_the_pinned_one():
    current = pins("requirements.txt")
    for package in ("torch", "torchvision"):
        old = tuple(int(p) for p in COMPAT[package].split("."))
        new = tuple(int(p) for p in current[package].split("."))
        assert old < new, package


def test_only_the_pytorch_pair_differs_from_requirements_txt():
    """The compat venv is requirements.txt with its ``torch==`` and
    ``torchvision==`` lines (which the Makefile finds with a grep) swapped for
    requirements-compat.txt's, so a failure there is PyTorch's doing."""
    assert set(COMPAT) == {"torch", "torchvision"}
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    for package in COMPAT:
        assert sum(line.startswith(f"{package}==") for line in lines) == 1, package


@pytest.mark.parametrize("path", ["README.md", "intro.md", "course_lib/notebook.py"])
def test_the_range_is_stated_as_declared(path):
    text = (ROOT / path).read_text()
    stated = set(re.findall(r"torch>=([0-9][0-9.]*[0-9])", text))
    assert stated == {floor("torch")}, (path, stated)
