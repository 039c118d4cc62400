"""Shared fixtures. Tests never touch the network and never write outside tmp."""

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(scope="session")
def mnist1d(tmp_path_factory):
    """MNIST-1D splits, generated once per test session into a temporary cache."""
    from course_lib.data import load_dataset

    return load_dataset("mnist1d", cache_dir=tmp_path_factory.mktemp("cache"))

