"""Parameter accounting as the paper counts it (embeddings and head included, tied weights once)."""

from __future__ import annotations

import pytest

from compress.checkpoint.reader import Checkpoint
from compress.model import load
from compress.prune.params import checkpoint_params, config_params


def test_llama2_7b_ratios_of_the_paper():
    """Config only: the Table 1 ratios of BlockPruner (12 MHA + 5 MLP) and of the layer baselines (7 layers)."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)
    pc = config_params(cfg)
    assert pc.total == 6_738_415_616
    assert pc.blocks[(0, "attn")] == 4 * 4096 * 4096 + 4096  # q, k, v, o + input_layernorm
    assert pc.blocks[(0, "mlp")] == 3 * 4096 * 11008 + 4096  # gate, up, down + post_attention_layernorm
    mix = [(i, "attn") for i in range(12)] + [(i, "mlp") for i in range(5)]
    assert round(100 * pc.ratio(mix), 2) == 21.99
    assert round(100 * pc.ratio([(i, k) for i in range(7) for k in ("attn", "mlp")]), 2) == 21.02


# The block each module belongs to, written out independently of compress.arch.
SANDWICH = {"attn": ("input_layernorm", "self_attn", "post_attention_layernorm"),
            "mlp": ("pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm")}
PRENORM = {"attn": ("input_layernorm", "self_attn"), "mlp": ("post_attention_layernorm", "mlp")}


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2", "phi3"])
def test_checkpoint_counts_match_the_loaded_model(tiny_models, family):
    path = tiny_models[family]
    model, _ = load(path, "cpu", "fp32")
    pc = checkpoint_params(Checkpoint(path))
    # model.parameters() yields a tied embedding/head once
    assert pc.total == sum(p.numel() for p in model.parameters())
    assert config_params(model.config).total == pc.total
    layout = SANDWICH if family.startswith("gemma") else PRENORM
    for i, layer in enumerate(model.model.layers):
        for kind, mods in layout.items():
            want = sum(p.numel() for m in mods for p in getattr(layer, m).parameters())
            assert pc.blocks[(i, kind)] == want
    assert pc.ratio([]) == 0
