"""Fixtures of the fusion tests: two tiny models with different tokenizer kinds, loaded once per module.

The tests run torch on one thread: decoding is a long chain of one-token forwards, which a second
thread does not speed up on small models, and on a shared CPU it slows them down several times."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.distill.conftest import distill_models  # noqa: F401  (the distill pair, for fuse data)
from tests.fixtures import make_tiny_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_pair_paths(tmp_path_factory) -> dict[str, Path]:
    """A Llama with a byte-level BPE tokenizer and a Gemma-3 with a SentencePiece-style one (byte fallback)."""
    root = tmp_path_factory.mktemp("fuse")
    return {"bpe": make_tiny_model(root / "llama-bpe", "llama", tokenizer="bpe", seed=1),
            "sp": make_tiny_model(root / "gemma3-sp", "gemma3", tokenizer="sp", seed=2)}


@pytest.fixture(scope="module")
def tiny_bpe(tiny_pair_paths):
    from compress.model.load import load

    return load(tiny_pair_paths["bpe"])


@pytest.fixture(scope="module")
def tiny_sp(tiny_pair_paths):
    from compress.model.load import load

    return load(tiny_pair_paths["sp"])
