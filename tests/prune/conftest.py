"""Fixtures of the prune tests."""

from __future__ import annotations

import pytest
import torch

from compress.progress import set_quiet


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is much faster than two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def quiet():
    set_quiet(True)
    yield
    set_quiet(False)
