import os

import numpy as np
import pytest
import torch

from course_lib import device as dev


def test_auto_picks_cuda_exactly_when_available(monkeypatch):
    monkeypatch.delenv("COURSE_LIB_REQUIRE_CUDA", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.get_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.get_device() == torch.device("cuda")
    assert dev.get_device("cpu") == torch.device("cpu")


def test_cuda_requested_without_gpu_is_an_error(monkeypatch):
    monkeypatch.delenv("COURSE_LIB_REQUIRE_CUDA", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        dev.get_device("cuda")
    monkeypatch.setenv("COURSE_LIB_REQUIRE_CUDA", "1")
    with pytest.raises(RuntimeError, match="COURSE_LIB_REQUIRE_CUDA"):
        dev.get_device()


@pytest.mark.parametrize("prefer", ["gpu", "CUDA", "", None])
def test_unknown_device_names_the_argument(prefer):
    with pytest.raises(ValueError, match="prefer"):
        dev.get_device(prefer)


def test_seed_everything_makes_all_generators_repeat():
    def draw():
        return (np.random.rand(), torch.rand(3), __import__("random").random())

    g1 = dev.seed_everything(7)
    a = draw(), torch.rand(2, generator=g1)
    g2 = dev.seed_everything(7)
    b = draw(), torch.rand(2, generator=g2)
    assert a[0][0] == b[0][0] and a[0][2] == b[0][2]
    assert torch.equal(a[0][1], b[0][1]) and torch.equal(a[1], b[1])
    dev.seed_everything(8)
    assert not torch.equal(torch.rand(3), a[0][1])


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seed_names_the_argument(seed):
    with pytest.raises(ValueError, match="seed"):
        dev.seed_everything(seed)


def test_set_deterministic_round_trip():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        dev.set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"]
        dev.set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
        with pytest.raises(ValueError, match="enabled"):
            dev.set_deterministic("yes")
    finally:
        torch.use_deterministic_algorithms(before)


def test_describe_environment_names_torch_version():
    assert torch.__version__ in dev.describe_environment()


def test_seed_shift_moves_every_seed(monkeypatch):
    monkeypatch.delenv(dev.SEED_SHIFT_VARIABLE, raising=False)
    assert dev.seed_shift() == 0 and dev.shifted_seed(3) == 3
    plain = torch.randn(3, generator=dev.generator(3))
    monkeypatch.setenv(dev.SEED_SHIFT_VARIABLE, "1000")
    assert dev.shifted_seed(3) == 1003
    moved = torch.randn(3, generator=dev.generator(3))
    expected = torch.randn(3, generator=torch.Generator().manual_seed(1003))
    assert torch.equal(moved, expected)
    assert not torch.equal(plain, moved)
    dev.seed_everything(3)
    a = torch.randn(2)
    torch.manual_seed(1003)
    assert torch.equal(a, torch.randn(2))


@pytest.mark.parametrize("text", ["-1", "ten", "1.5"])
def test_bad_seed_shift_names_the_variable(monkeypatch, text):
    monkeypatch.setenv(dev.SEED_SHIFT_VARIABLE, text)
    with pytest.raises(ValueError, match="COURSE_LIB_SEED_SHIFT"):
        dev.generator(0)


NUMPY_ARGUMENTS = [
    ("seed", dev.shifted_seed, np.int64(3)),
    ("seed", lambda v: torch.randn(2, generator=dev.generator(v)).tolist(),
     np.int32(3)),
    ("prefer", lambda v: str(dev.get_device(v)), "cpu"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "call", "value"), NUMPY_ARGUMENTS)
def test_numpy_scalars_pass_bools_and_strings_do_not(name, call, value):
    plain = value if isinstance(value, str) else value.item()
    assert call(value) == call(plain)
    for bad in (True, "3", None):
        with pytest.raises(ValueError, match=rf"^{name} must be "):
            call(bad)


def test_set_deterministic_takes_a_numpy_bool_and_no_int():
    before = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    try:
        dev.set_deterministic(np.bool_(True))
        assert torch.are_deterministic_algorithms_enabled()
        with pytest.raises(ValueError, match=r"^enabled must be True or False"):
            dev.set_deterministic(1)
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = before
