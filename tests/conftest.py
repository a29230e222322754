"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch

from retain.data import Benchmark
from tests.synthetic import blobs


@pytest.fixture
def bench() -> Benchmark:
    return blobs()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
