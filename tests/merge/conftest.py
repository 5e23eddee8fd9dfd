"""Tiny base model + perturbed variants ("fine-tunes") saved as real checkpoints, for merge tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.fixtures import make_tiny_model


def make_variant(base: Path, out: Path, seed: int, scale: float = 0.01, dtype: torch.dtype | None = None,
                 edit=None) -> Path:
    """Copy `base` to `out` with every tensor perturbed by seeded Gaussian noise (a stand-in fine-tune)."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    sd = load_file(str(out / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    new = {}
    for name in sorted(sd):
        t = sd[name].float()
        t = t + scale * t.abs().mean().clamp(min=1e-3) * torch.randn(t.shape, generator=g)
        new[name] = t.to(dtype or sd[name].dtype).contiguous()
    if edit is not None:
        new = edit(new)
    (out / "model.safetensors").unlink()
    save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="session")
def merge_models(tmp_path_factory) -> dict[str, Path]:
    """base (tiny llama, fp32, 4 layers) and three perturbed variants a, b, c."""
    root = tmp_path_factory.mktemp("merge")
    base = make_tiny_model(root / "base", "llama", layers=4, seed=0)
    return {"base": base, **{k: make_variant(base, root / k, seed=i + 1) for i, k in enumerate("abc")}}
