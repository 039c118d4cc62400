"""A pytest plugin that holds every chapter to its time budget.

nbval runs a notebook as one test per cell; this adds up the cells' call
durations per notebook and fails the session if a chapter took more than
:data:`CHAPTER_SECONDS` (the landing page's promise: 90 s on a 2-core CPU).
It is loaded with ``-p notebook_budget`` (the Makefile does) and, under
pytest-xdist, counts on the controller, which sees every worker's reports.
"""

import os
from collections import defaultdict

# COURSE_NOTEBOOK_BUDGET=5 shows the plugin failing a session.
CHAPTER_SECONDS = float(os.environ.get("COURSE_NOTEBOOK_BUDGET", "90"))

_seconds: dict = defaultdict(float)


def pytest_runtest_logreport(report):
    path, sep, _ = report.nodeid.partition(".ipynb::")
    if sep and path.startswith("chapters/") and report.when in ("setup", "call"):
        _seconds[path + ".ipynb"] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    terminalreporter.section("notebook time budget")
    for path, seconds in sorted(_seconds.items()):
        verdict = "over" if seconds > CHAPTER_SECONDS else "within"
        terminalreporter.write_line(
            f"{path}: {seconds:.0f} s ({verdict} the {CHAPTER_SECONDS:.0f} s budget)"
        )


def pytest_sessionfinish(session, exitstatus):
    over = {p: s for p, s in _seconds.items() if s > CHAPTER_SECONDS}
    if over and exitstatus == 0:
        session.exitstatus = 1
