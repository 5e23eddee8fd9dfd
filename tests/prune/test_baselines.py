"""ShortGPT's Block Influence against an independent computation; SLEB's barriers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.arch import summarize
from compress.checkpoint.reader import Checkpoint
from compress.model import load
from compress.prune.baselines import SLEB_BARRIERS, block_influence, rank_by_score, shortgpt_scores
from compress.prune.units import layer_units


def test_block_influence_is_one_minus_rowwise_cosine():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 5, 16, generator=g), torch.randn(3, 5, 16, generator=g)
    xn, yn = x.numpy().astype(np.float64), y.numpy().astype(np.float64)
    ref = 1 - (xn * yn).sum(-1) / (np.linalg.norm(xn, axis=-1) * np.linalg.norm(yn, axis=-1))
    np.testing.assert_allclose(block_influence(x, y).numpy(), ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(block_influence(x, x), torch.zeros(3, 5), atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_shortgpt_scores_match_hidden_states(tiny_models, family):
    """Reference from transformers' output_hidden_states (inputs of every layer); the last layer's
    output is read with the final norm replaced by the identity (HF's last entry is after the norm)."""
    path = tiny_models[family]
    model, _ = load(path, "cpu", "fp32")
    fam = summarize(Checkpoint(path)).family
    win = torch.randint(3, 512, (3, 24), generator=torch.Generator().manual_seed(0))
    bi = shortgpt_scores(model, fam, win, batch_size=2)
    norm = model.model.norm
    model.model.norm = torch.nn.Identity()
    try:
        with torch.no_grad():
            hs = model(input_ids=win, output_hidden_states=True).hidden_states
    finally:
        model.model.norm = norm
    for i in range(len(bi)):
        a, b = hs[i].double(), hs[i + 1].double()
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        assert bi[i] == pytest.approx(float(1 - cos.mean()), rel=1e-4)


def test_rank_and_sleb_barriers():
    params = {(i, k): 10 for i in range(5) for k in ("attn", "mlp")}
    units = layer_units(5, set(range(10)), params, SLEB_BARRIERS)
    assert [u.name for u in units] == ["layer 1", "layer 2", "layer 3"]
    ranked = rank_by_score(layer_units(5, set(range(10)), params), [0.3, 0.1, 0.2, 0.1, 0.5])
    assert [u.name for u in ranked] == ["layer 1", "layer 3", "layer 2", "layer 0", "layer 4"]
    # an already pruned layer keeps only its remaining block
    partial = layer_units(3, {0, 1, 3, 4, 5}, {(i, k): 10 for i in range(3) for k in ("attn", "mlp")})
    assert [(u.name, u.blocks, u.params) for u in partial][1] == ("layer 1", ((1, "mlp"),), 10)
