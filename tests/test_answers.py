"""The pieces that keep grading honest, without a kernel: what the answers
process runs of a notebook, what the watch catches, the file guard."""

import sys
import threading

import pytest
import torch

from course_lib.labs import answers, forbid, sandbox
from course_lib.labs.checks import run_one
from course_lib.labs.lab02_optim import QUESTIONS as LAB2


def test_only_definitions_are_run():
    cells = [
        "import torch\nfrom math import pi\nEPS = 1e-8\nact = torch.relu\n"
        "W = torch.randn(3)\ntorch.save = None\nprint('hi')\n",
        "%timeit 1\ndef f(x):\n    return x + EPS\n",
        "class A:\n    pass\nfor i in range(3):\n    pass\nx: int = 3\n",
        "def broken(:\n",
        "a, (b, c) = 1, (2, 3)\nd = [i for i in range(3)]\ne = lambda: print(1)\n",
    ]
    codes, skipped = answers.definitions(cells)
    namespace = {}
    for code in codes:
        exec(code, namespace)  # noqa: S102
    kept = {k for k in namespace if not k.startswith("__")}
    assert kept == {"torch", "pi", "EPS", "act", "f", "A", "x", "a", "b", "c", "e"}
    assert namespace["f"](1) == 1 + 1e-8
    assert {"W", "d"} <= skipped
    assert torch.save is not None and codes[0].co_filename == "<cell 0>"


def _plain_sgd(body):
    class Plain(torch.optim.Optimizer):
        def __init__(self, params, lr=0.1, momentum=0.0):
            super().__init__(params, {"lr": lr, "momentum": momentum})

        def step(self, closure=None):
            return body(self)

    return Plain


@pytest.mark.parametrize(
    "body, used",
    [
        (lambda self: sys.setprofile(None), "sys.setprofile"),
        (lambda self: sys._getframe(0), "sys._getframe"),
        (lambda self: __import__("gc").get_referrers(self), "gc.get_referrers"),
        (lambda self: threading.setprofile(None), "threading.setprofile"),
    ],
)
def test_switching_the_watch_off_is_a_forbidden_use(body, used):
    outcome = run_one(LAB2["q1"], _plain_sgd(body), LAB2["q1"].public_cases()[0][1])
    assert outcome.type_name == "ForbiddenUse" and used in outcome.message
    assert sys.getprofile() is None


def test_a_thread_started_by_an_answer_is_watched():
    def body(self):
        worker = threading.Thread(target=lambda: torch.optim.SGD(
            [torch.zeros(1, requires_grad=True)], lr=0.1))  # fmt: skip
        worker.start()
        worker.join()

    outcome = run_one(LAB2["q1"], _plain_sgd(body), LAB2["q1"].public_cases()[0][1])
    assert outcome.type_name == "ForbiddenUse" and "torch.optim.SGD" in outcome.message


def test_a_use_is_reported_the_moment_it_is_seen():
    seen = []
    watch = forbid.Watch(forbid.rules(("torch.optim.SGD",)), on_use=seen.append)
    with watch:
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        watch.used = None  # an answer that found the watch and reset it
    assert seen[0] == "torch.optim.SGD"  # a second use: leaving the watch here


def test_rules_cannot_be_emptied():
    rules = forbid.rules(("torch.optim.SGD",))
    assert isinstance(rules.codes, frozenset) and isinstance(rules.folders, tuple)
    with pytest.raises(AttributeError):
        rules.codes.clear()


def test_a_rebinding_is_named():
    from course_lib.labs import harness

    bindings = answers.Bindings(LAB2)
    assert bindings.changed() is None
    original = harness.tiny_net
    try:
        harness.tiny_net = lambda *a, **k: None
        assert bindings.changed() == "course_lib.labs.harness.tiny_net"
    finally:
        harness.tiny_net = original
    assert bindings.changed() is None


def test_only_plain_values_are_saved():
    class Sneaky(list):
        def __reduce__(self):
            raise RuntimeError("runs code when saved")

    assert answers.plain({"a": [1, 2.0, None, "s", (torch.ones(2),)]})["a"][1] == 2.0
    for bad in [Sneaky(), {1.5: 2}, torch.ones(2).to_sparse(), object()]:
        with pytest.raises(TypeError):
            answers.plain(bad)
    deep = []
    for _ in range(30):
        deep = [deep]
    with pytest.raises(TypeError, match="nested"):
        answers.plain(deep)


def test_frames_survive_a_truncated_tail():
    data = answers.encode_frame(b"A", b"one") + answers.encode_frame(b"U", b"two")
    assert answers.read_frames(data + data[:6]) == [(b"A", b"one"), (b"U", b"two")]


def test_the_guard_puts_files_back(tmp_path):
    (tmp_path / "keep.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "gone.txt").write_text("here")
    guard = sandbox.Guard(tmp_path, "root")
    assert guard.restore() == []
    (tmp_path / "keep.py").write_text("x = 2\n")
    (tmp_path / "sub" / "gone.txt").unlink()
    (tmp_path / "new.txt").write_text("planted")
    found = guard.restore()
    assert found == ["root/keep.py was changed (restored)",
                     "root/new.txt was created (removed)",
                     "root/sub/gone.txt was deleted (restored)"]  # fmt: skip
    assert (tmp_path / "keep.py").read_text() == "x = 1\n"
    assert (tmp_path / "sub" / "gone.txt").read_text() == "here"
    assert not (tmp_path / "new.txt").exists()


SUBREAPER = """
import subprocess, sys, time
from course_lib.labs import sandbox
assert sandbox.become_subreaper()
# a child that starts a process in a session of its own, then exits at once
subprocess.run([sys.executable, "-c", "import subprocess\\n"
                "subprocess.Popen(['sleep', '60'], start_new_session=True)"])
deadline = time.monotonic() + 10
while not sandbox.descendants() and time.monotonic() < deadline:
    time.sleep(0.05)
orphans = sandbox.descendants()
killed = sandbox.kill_descendants()
print(len(orphans), set(killed) >= set(orphans), sandbox.descendants())
"""


def test_descendants_in_sessions_of_their_own_are_killed():
    """In a process of its own: kill_descendants ends *every* descendant,
    which in the test process would include pytest's own helpers."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", SUBREAPER], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True", "[]"], done.stdout
