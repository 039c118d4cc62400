"""The book builds with warnings as errors, and every page is there.

Execution is off here because nbval (same `make test` run) has already executed
every notebook; `make book` renders with outputs.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_notebooks import ROOT, toc_files


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    config_path = out / "_config.yml"
    config_path.write_text(yaml.safe_dump(config))
    jb = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run(
        [
            str(jb),
            "build",
            str(ROOT),
            "--config",
            str(config_path),
            "--path-output",
            str(out),
            "-W",
            "-n",
            "--keep-going",
            "--all",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"PYTHONWARNINGS": ""},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out / "_build" / "html"


def test_every_toc_entry_has_a_page(html):
    assert (html / "index.html").exists()
    for name in toc_files():
        assert (html / f"{name}.html").exists(), name


def test_labs_show_the_student_version(html):
    for name in toc_files():
        if name.startswith("labs/"):
            page = (html / f"{name}.html").read_text()
            assert "not implemented yet" in page and "SOLUTION" not in page, name
            assert not (html / name).with_name("solution.html").exists()


def test_chapter_pages_have_a_colab_button_and_no_hidden_checks(html):
    for name in toc_files()[1:]:
        page = (html / f"{name}.html").read_text()
        assert "colab.research.google.com/github/" in page, name
        assert "# Claim" not in page, f"{name}: a hidden check cell is visible"
        assert "math notranslate" in page or "\\(" in page, f"{name}: no rendered math"
