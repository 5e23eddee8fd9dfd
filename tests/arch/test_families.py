"""Block maps of every family, checked against the models transformers builds from their configs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from compress.arch import ATTN, MLP, block_of, family_for, kind_of, summarize
from compress.checkpoint import Checkpoint
from compress.errors import CompressError
from tests.fixtures import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_tensor_has_a_block(tiny_models, family):
    ckpt = Checkpoint(tiny_models[family])
    fam = family_for(ckpt.config, ckpt.names())
    seen = {}
    for name in ckpt.names():
        blk = block_of(fam, name)
        if name.startswith("model.layers."):
            assert blk is not None
            seen.setdefault(blk, []).append(name)
        else:
            assert blk is None
    layers = ckpt.config["num_hidden_layers"]
    assert set(seen) == {(i, k) for i in range(layers) for k in (ATTN, MLP)}
    # The MLP block holds the MLP projections and exactly one (Llama-style) or two (sandwich) norms.
    mlp0 = seen[(0, MLP)]
    norms = [n for n in mlp0 if "norm" in n]
    assert len(norms) == (2 if family.startswith("gemma") else 1)
    attn0 = seen[(0, ATTN)]
    if family.startswith("gemma"):
        assert "model.layers.0.post_attention_layernorm.weight" in attn0
    else:
        assert "model.layers.0.post_attention_layernorm.weight" in mlp0


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_matches_transformers(tiny_models, family):
    from transformers import AutoModelForCausalLM

    s = summarize(Checkpoint(tiny_models[family]))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_models[family]))
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert s.total_params == sum(unique.values())
    # The attention / MLP split agrees with the modules transformers builds.
    attn = sum(p.numel() for n, p in model.named_parameters() if ".self_attn." in n)
    mlp = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n)
    assert s.params_by_kind["attention"] == attn
    assert s.params_by_kind["mlp"] == mlp
    assert s.block_count() == 2 * model.config.num_hidden_layers


def test_unknown_architecture_names_supported():
    with pytest.raises(CompressError, match="supported are llama, mistral"):
        family_for({"model_type": "gpt2"}, ["transformer.h.0.attn.c_attn.weight"])


def test_llama_shaped_detection():
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
        f"model.layers.0.{r}" for r in (
            "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
            "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
            "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
    ]
    fam = family_for({"model_type": "my_llama_clone"}, names)
    assert fam.name.startswith("llama-like")
    assert block_of(fam, "model.layers.0.mlp.up_proj.weight") == (0, MLP)
    assert kind_of(fam, "model.layers.0.input_layernorm.weight") == "norms"


def test_llama_shaped_detection_rejects_extras():
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight",
             "model.layers.0.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
             "model.layers.0.weird.weight"]
    with pytest.raises(CompressError, match="unsupported architecture"):
        family_for({"model_type": "odd"}, names)


def test_unsupported_architecture_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "num_hidden_layers": 1}')
    save_file({"transformer.h.0.attn.c_attn.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CompressError, match="unsupported architecture 'gpt2'"):
        summarize(Checkpoint(tmp_path))
