"""Static checks of every committed notebook (nbval executes them separately).

`make test` passes chapters/ and labs/ to pytest with --nbval-lax, which runs
every notebook top to bottom; the hidden `remove-cell` check cells inside
them assert each chapter's claims.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from course_lib.notebook import COLAB_SETUP, REPOSITORY, SETUP_TAG

ROOT = Path(__file__).resolve().parents[1]


def tracked_notebooks():
    out = subprocess.run(
        ["git", "ls-files", "*.ipynb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    on_disk = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("chapters/*.ipynb"))
    return sorted(set(out) | set(on_disk))


NOTEBOOKS = tracked_notebooks()
CHAPTERS = [nb for nb in NOTEBOOKS if nb.startswith("chapters/")]


def load(path):
    return json.loads((ROOT / path).read_text())


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def source(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def test_there_are_chapters():
    assert CHAPTERS, "no chapter notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_committed_without_outputs(path):
    dirty = [
        i
        for i, c in enumerate(code_cells(load(path)))
        if c.get("outputs") or c.get("execution_count") is not None
    ]
    assert not dirty, (
        f"{path}: code cells {dirty} carry outputs; clear them before committing"
    )


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_first_code_cell_is_the_colab_setup(path):
    first = code_cells(load(path))[0]
    assert source(first).strip() == COLAB_SETUP, (
        f"{path}: update it with course_lib.notebook.apply_setup_cell"
    )
    # collapsed on the rendered page: a reader's first sight is the chapter
    assert SETUP_TAG in first.get("metadata", {}).get("tags", []), path


def test_the_repository_url_is_the_same_everywhere():
    """course_lib.notebook.REPOSITORY is the one source; the book's config,
    the README and the landing page say the same, and no file names another
    address for the course."""
    import re

    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["url"] == REPOSITORY
    for name in ("README.md", "intro.md"):
        assert f"git clone {REPOSITORY}" in (ROOT / name).read_text(), name
    owner = REPOSITORY.split("github.com/")[1].split("/")[0]
    pattern = re.compile(rf"https://github\.com/{owner}/[\w.-]+")
    for path in ROOT.rglob("*"):
        if path.suffix in {".md", ".ipynb", ".py", ".yml", ".toml"} and not (
            {".venv", "_build", ".git"} & set(path.relative_to(ROOT).parts)
        ):
            for url in pattern.findall(path.read_text(errors="replace")):
                assert url == REPOSITORY, (path, url)


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_kernel_is_plain_python3(path):
    assert load(path)["metadata"]["kernelspec"]["name"] == "python3"


def course_lib_names():
    names = set()
    for py in (ROOT / "course_lib").glob("*.py"):
        names |= set(
            re.findall(r"^(?:def|class)\s+([A-Za-z_]\w*)", py.read_text(), re.M)
        )
    return names


@pytest.mark.parametrize("path", CHAPTERS)
def test_chapters_do_not_redefine_course_lib(path):
    src = "\n".join(source(c) for c in code_cells(load(path)))
    defined = set(re.findall(r"^\s*(?:def|class)\s+([A-Za-z_]\w*)", src, re.M))
    assert not defined & course_lib_names(), (
        f"{path} redefines {defined & course_lib_names()}"
    )


@pytest.mark.parametrize("path", CHAPTERS)
def test_chapter_claims_have_hidden_checks(path):
    hidden = [
        c
        for c in code_cells(load(path))
        if "remove-cell" in c["metadata"].get("tags", [])
    ]
    assert hidden, f"{path} has no hidden check cells"
    assert all("assert" in source(c) for c in hidden), "a hidden cell checks nothing"


@pytest.mark.parametrize("path", CHAPTERS)
def test_chapter_has_the_required_sections(path):
    text = "\n".join(
        source(c) for c in load(path)["cells"] if c["cell_type"] == "markdown"
    )
    for heading in (
        "What you will learn",
        "## In practice",
        "## Exercises",
        "## References",
    ):
        assert heading in text, f"{path} lacks '{heading}'"


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [entry["file"] for entry in part["chapters"]]
    return files


def test_toc_and_notebooks_agree():
    listed = toc_files()
    for name in listed:
        assert any((ROOT / f"{name}{ext}").exists() for ext in (".md", ".ipynb")), name
    for path in CHAPTERS:
        assert path.removesuffix(".ipynb") in listed, f"{path} is not in _toc.yml"
    for solution in ROOT.glob("labs/*/solution.ipynb"):
        lab = solution.parent.name
        assert f"labs/{lab}/{lab}" in listed, f"{lab}: student notebook not in the toc"
        assert f"labs/{lab}/solution" not in listed, "solutions must not be in the book"
