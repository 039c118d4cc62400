"""Conventions every course notebook follows, in one place.

``COLAB_SETUP`` is the first code cell of every chapter and lab: on Colab it
installs ``course_lib`` from the repository (Colab already has torch, and
``course_lib`` asks only for ``torch>=2.6.0``, the oldest release CI tests, so
pip keeps Colab's own);
anywhere else it does nothing. The notebook tests
check that each notebook starts with exactly this text.
"""

#: Where the course lives. The setup cell, the README and the book's
#: ``_config.yml`` (``repository.url``) all say this; a test keeps them equal.
REPOSITORY = "https://github.com/training-neural-networks/course"

#: The first code cell of every notebook. Its one setting is the environment
#: variable ``COURSE_LIB_SOURCE`` (a pip source, e.g.
#: ``file:///path/to/a/checkout``), which installs course_lib from there
#: instead of the repository; the Colab simulation test uses it.
COLAB_SETUP = f"""\
# Colab setup: on Google Colab, install this course's library (course_lib)
# from the repository. Anywhere else this cell does nothing.
import os
import sys

if "google.colab" in sys.modules:
    import subprocess

    default = "git+{REPOSITORY}"
    source = os.environ.get("COURSE_LIB_SOURCE", default)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", f"course_lib @ {{source}}"],
        check=True,
    )"""

#: The tag that collapses the setup cell on the rendered page (it still runs).
SETUP_TAG = "hide-input"


def apply_setup_cell(nb) -> bool:
    """Make ``nb``'s first code cell the current :data:`COLAB_SETUP`, tagged
    :data:`SETUP_TAG`; True if anything changed (for a script that updates
    every notebook after this text changes)."""
    cell = next(c for c in nb.cells if c.cell_type == "code")
    tags = list(cell.metadata.get("tags", []))
    changed = cell.source != COLAB_SETUP or SETUP_TAG not in tags
    cell.source = COLAB_SETUP
    if SETUP_TAG not in tags:
        cell.metadata["tags"] = tags + [SETUP_TAG]
    return changed
