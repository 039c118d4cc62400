"""The Colab path, simulated: a notebook's setup cell on a machine that has
PyTorch and the scientific stack but no course_lib.

The environment is a fresh virtual environment that sees this one's installed
packages (torch, numpy, matplotlib, scikit-learn, mnist1d, ipykernel, ...)
through a folder of links, every course_lib entry left out, so it holds what
Colab has before the cell runs. A stand-in ``google.colab`` module makes the
cell take its Colab branch, and ``COURSE_LIB_SOURCE`` points it at a copy of
this checkout. pip runs offline (``PIP_NO_INDEX``): had it wanted a torch it
would fail. Then one chapter and one lab execute there with nbclient, and the
hidden checks of the chapter run as cells like any other.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "chapters/02_optimizers.ipynb"
LAB = "labs/lab02_optim/lab02_optim.ipynb"
COPY = shutil.ignore_patterns(".venv", "_build", ".git", "__pycache__", "*.egg-info",
                              ".pytest_cache", ".ruff_cache")  # fmt: skip


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """``(python, env, site)``: the simulated Colab's interpreter, environment
    and its own site-packages folder."""
    base = tmp_path_factory.mktemp("colab")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", base / "venv"],
                   check=True)  # fmt: skip
    python = base / "venv" / "bin" / "python"
    site = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())  # fmt: skip
    stack = base / "stack"  # what Colab has: everything here except course_lib
    stack.mkdir()
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        if "course_lib" in entry.name or entry.suffix == ".pth":
            continue
        (stack / entry.name).symlink_to(entry)
    (site / "colab_stack.pth").write_text(f"{stack}\n")
    fake = base / "google_colab"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "__init__.py").write_text("")
    (fake / "google" / "colab" / "__init__.py").write_text('"""A stand-in."""\n')
    # Colab's kernel has google.colab imported before any cell runs
    (fake / "sitecustomize.py").write_text("import google.colab\n")
    checkout = base / "checkout"
    shutil.copytree(ROOT, checkout, ignore=COPY, symlinks=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL", "JUPYTER"))}  # fmt: skip
    env.update(
        PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(fake),  # google.colab is in sys.modules, as on Colab
        COURSE_LIB_SOURCE=checkout.as_uri(),
        # offline; build with the stack's setuptools ("0" is how pip's
        # environment spells --no-build-isolation)
        PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        COURSE_LIB_CACHE=str(base / "cache"), MPLBACKEND="Agg",
    )  # fmt: skip
    # pip itself: Colab has one; here it is reached through the stack folder
    check = subprocess.run([python, "-c", "import course_lib"], env=env, cwd=base,
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode != 0, "course_lib must not be there before the cell"
    return python, env, site


def _kernel(python: Path, env: dict, folder: Path) -> str:
    """A kernelspec for the simulated Colab's python, in a folder of its own."""
    spec = folder / "kernels" / "colab"
    spec.mkdir(parents=True)
    spec_json = {"argv": [str(python), "-m", "ipykernel_launcher", "-f",
                          "{connection_file}"],
                 "display_name": "Colab (simulated)", "language": "python"}  # fmt: skip
    (spec / "kernel.json").write_text(json.dumps(spec_json))
    env["JUPYTER_PATH"] = str(folder)
    return "colab"


def _run(path: str, python, env, tmp_path) -> nbformat.NotebookNode:
    nb = nbformat.read(ROOT / path, 4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import course_lib, torch\nprint('course_lib from', course_lib.__file__)\n"
        "print('torch', torch.__version__, 'from', torch.__file__)"
    ))  # fmt: skip
    work = tmp_path / Path(path).stem
    work.mkdir()
    kernel = _kernel(python, env, tmp_path / f"k-{work.name}")
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits the simulated environment
    try:
        resources = {"metadata": {"path": str(work)}}
        client = NotebookClient(nb, timeout=300, kernel_name=kernel,
                                resources=resources)  # fmt: skip
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def _printed(nb) -> str:
    return "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code"
        for o in c.get("outputs", []) if o.get("output_type") == "stream"
    )  # fmt: skip


def test_the_setup_cell_installs_course_lib_and_keeps_colabs_torch(colab, tmp_path):
    python, env, site = colab
    nb = _run(CHAPTER, python, env, tmp_path)  # raises if a cell (a check) fails
    printed = _printed(nb)
    assert f"course_lib from {site}" in printed, printed[-500:]
    assert f"torch {torch.__version__} from" in printed
    assert not any(p.name.startswith("torch") for p in site.iterdir()), (
        "the setup cell installed a torch"
    )
    lab = _printed(_run(LAB, python, env, tmp_path))  # course_lib is there now
    assert lab.count("[FAIL]") == 3 and "not implemented yet" in lab
