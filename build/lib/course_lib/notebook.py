"""Conventions every course notebook follows, in one place.

``COLAB_SETUP`` is the first code cell of every chapter and lab: on Colab it
installs ``course_lib`` from the repository (Colab already has torch, so
nothing big is reinstalled); anywhere else it does nothing. The notebook tests
check that each notebook starts with exactly this text.
"""

COLAB_SETUP = """\
# Colab setup: on Google Colab, install this course's library (course_lib)
# from the repository. Anywhere else this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    repo = "https://github.com/training-neural-networks/course"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", f"course_lib @ git+{repo}"],
        check=True,
    )"""
