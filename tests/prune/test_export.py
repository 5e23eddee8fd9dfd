"""Physical and zeroed export of pruned models (spec prune.md §8, issue 3 part 3).

Reference: the DENSE input loaded with plain transformers and masked in memory with
`compress.prune.mask.apply_removals` (modules swapped, no weights changed). The exported files are
checked tensor by tensor against the input's safetensors, and the loaded models' logits against the
masked dense model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress.arch import PRUNED_KEY, family_for
from compress.checkpoint import Checkpoint
from compress.errors import CompressError
from compress.model.load import load_model
from compress.prune.export import MODELING_FILE, export_pruned, plan_export
from compress.prune.mask import apply_removals
from tests.fixtures import FAMILIES, make_tiny_model

# 4 layers: layer 0 loses attention, layer 1 its MLP, layer 2 both (deleted), layer 3 intact.
REMOVED = [(0, "attn"), (1, "mlp"), (2, "attn"), (2, "mlp")]


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    ck = Checkpoint(folder)
    return {n: ck.get(n).clone() for n in ck.names()}


def dense(src: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(src), dtype=dtype).eval()


def masked(src: Path, removed, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The reference: the dense model with `removed` masked in memory (compress.prune.mask)."""
    model = dense(src, dtype)
    ck = Checkpoint(src)
    return apply_removals(model, family_for(ck.config, ck.names()), removed)


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits.float()


IDS = torch.randint(3, 500, (2, 48), generator=torch.Generator().manual_seed(0))  # > Gemma's sliding window (32)


@pytest.mark.parametrize("family", FAMILIES)
def test_physical_export_all_families(tiny_models, tmp_path, family):
    src = tiny_models[family]
    out = export_pruned(src, tmp_path / "out", REMOVED)
    cfg = json.loads((out / "config.json").read_text())
    src_cfg = json.loads((src / "config.json").read_text())
    fam = family_for(src_cfg)
    assert cfg["num_hidden_layers"] == 3
    assert cfg[PRUNED_KEY] == {"attn": [0], "mlp": [1]}
    assert cfg["auto_map"]["AutoModelForCausalLM"].startswith("modeling_compress_pruned.CompressPruned")
    assert (out / MODELING_FILE).is_file()
    if "layer_types" in src_cfg:
        assert cfg["layer_types"] == [src_cfg["layer_types"][i] for i in (0, 1, 3)]

    # Files: every kept tensor byte-identical under its renumbered name, nothing else.
    before, after = tensors(src), tensors(out)
    rename = {0: 0, 1: 1, 3: 2}
    expected = {}
    for name, t in before.items():
        if not name.startswith("model.layers."):
            expected[name] = t
            continue
        layer = int(name.split(".")[2])
        rel = name.split(".", 3)[3]
        attn_part = any(rel.startswith(m + ".") for m in fam.attn)
        if layer == 2 or (layer == 0 and attn_part) or (layer == 1 and not attn_part):
            continue
        expected[f"model.layers.{rename[layer]}.{rel}"] = t
    assert set(after) == set(expected)
    for name, t in expected.items():
        assert torch.equal(after[name], t), name

    # compress.load (no remote code) and the folder's own modeling code both == the masked dense model.
    from transformers import AutoModelForCausalLM

    ref = logits(masked(src, REMOVED), IDS)
    model = load_model(out, dtype="fp32")
    torch.testing.assert_close(logits(model, IDS), ref, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for t in after.values())
    remote = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, dtype=torch.float32).eval()
    assert type(remote).__name__.startswith("CompressPruned")
    assert type(remote).__module__.startswith("transformers_modules.")
    torch.testing.assert_close(logits(remote, IDS), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_zeroed_export_all_families(tiny_models, tmp_path, family):
    src = tiny_models[family]
    out = export_pruned(src, tmp_path / "out", REMOVED, mode="zeroed")
    cfg = json.loads((out / "config.json").read_text())
    src_cfg = json.loads((src / "config.json").read_text())
    assert PRUNED_KEY not in cfg and "auto_map" not in cfg and not (out / MODELING_FILE).exists()
    assert cfg["num_hidden_layers"] == src_cfg["num_hidden_layers"]
    fam = family_for(src_cfg)
    before, after = tensors(src), tensors(out)
    assert set(before) == set(after)
    zero = set()
    for layer, kind in REMOVED:
        for m in fam.attn_out if kind == "attn" else fam.mlp_out:
            zero |= {f"model.layers.{layer}.{m}.{p}" for p in ("weight", "bias")} & set(before)
    assert zero
    for name in before:
        if name in zero:
            assert not after[name].any(), name
        else:  # everything else unchanged, in particular every norm (Gemma scales by 1 + w)
            assert torch.equal(after[name], before[name]), name
    # Plain transformers, no custom code.
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    torch.testing.assert_close(logits(plain, IDS), logits(masked(src, REMOVED), IDS), rtol=1e-5, atol=1e-5)


def test_whole_layers_only_gives_a_plain_checkpoint(tiny_llama, tmp_path):
    removed = [(1, "attn"), (1, "mlp"), (3, "mlp"), (3, "attn")]
    out = export_pruned(tiny_llama, tmp_path / "out", removed)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and PRUNED_KEY not in cfg and "auto_map" not in cfg
    assert not (out / MODELING_FILE).exists()
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert [layer.self_attn.layer_idx for layer in plain.model.layers] == [0, 1]
    torch.testing.assert_close(logits(plain, IDS), logits(masked(tiny_llama, removed), IDS), rtol=1e-5, atol=1e-5)


def test_gemma3_layer_types_follow_deleted_layers(tmp_path):
    # 8 layers, pattern 6: layers 0-4 and 6-7 sliding, 5 global. Deleting layers 1 and 2 must keep layer 5 global
    # (index 3 after renumbering) although transformers' default pattern would make index 5 the global one.
    src = make_tiny_model(tmp_path / "g3", "gemma3", layers=8)
    removed = [(1, "attn"), (1, "mlp"), (2, "attn"), (2, "mlp"), (6, "attn")]
    out = export_pruned(src, tmp_path / "out", removed)
    cfg = json.loads((out / "config.json").read_text())
    src_types = json.loads((src / "config.json").read_text())["layer_types"]
    assert src_types[5] == "full_attention"
    kept = [0, 3, 4, 5, 6, 7]
    assert cfg["layer_types"] == [src_types[i] for i in kept]
    assert cfg[PRUNED_KEY] == {"attn": [4], "mlp": []}
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(str(out)).layer_types == cfg["layer_types"]
    model = load_model(out, dtype="fp32")
    torch.testing.assert_close(logits(model, IDS), logits(masked(src, removed), IDS), rtol=1e-5, atol=1e-5)


def test_layer_types_written_explicitly_when_the_config_had_none(tmp_path):
    # A Gemma2 config.json without layer_types (as on the Hub): transformers derives [s, f, s, f] from the index.
    # After deleting layer 0 the kept layers are [f, s, f]; the default for 3 layers would be [s, f, s].
    src = make_tiny_model(tmp_path / "g2", "gemma2", layers=4)
    cfg = json.loads((src / "config.json").read_text())
    del cfg["layer_types"]
    (src / "config.json").write_text(json.dumps(cfg))
    removed = [(0, "attn"), (0, "mlp"), (2, "mlp")]
    out = export_pruned(src, tmp_path / "out", removed)
    assert json.loads((out / "config.json").read_text())["layer_types"] == [
        "full_attention", "sliding_attention", "full_attention"]
    torch.testing.assert_close(logits(load_model(out, dtype="fp32"), IDS), logits(masked(src, removed), IDS),
                               rtol=1e-5, atol=1e-5)


def test_refuses_when_transformers_would_recompute_layer_types():
    from compress.arch import FAMILIES as FAMS
    from compress.prune.export import _check_layer_config

    gemma2 = next(f for f in FAMS if f.name == "gemma2")
    cfg = {"model_type": "gemma2", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16}
    with pytest.raises(CompressError, match="recompute layer_types"):
        _check_layer_config(cfg, gemma2, {"layer_types": ["full_attention", "full_attention"]})


def test_prune_an_already_pruned_checkpoint(tiny_models, tmp_path):
    src = make_tiny_model(tmp_path / "src", "qwen2", layers=6)
    first = [(0, "attn"), (2, "attn"), (2, "mlp"), (4, "mlp")]
    a = export_pruned(src, tmp_path / "a", first)  # layers 0 1 3 4 5 -> 0 1 2 3 4; pruned attn [0], mlp [3]
    # Second round in a's indices: mlp of a's layer 0 (src 0: layer deleted), attn of a's 3 (src 4: deleted),
    # attn of a's 4 (src 5).
    second = [(0, "mlp"), (3, "attn"), (4, "attn")]
    b = export_pruned(a, tmp_path / "b", second)
    union = first + [(0, "mlp"), (4, "attn"), (5, "attn")]
    direct = export_pruned(src, tmp_path / "direct", union)
    cb, cd = (json.loads((p / "config.json").read_text()) for p in (b, direct))
    assert cb[PRUNED_KEY] == cd[PRUNED_KEY] == {"attn": [2], "mlp": []}
    assert cb["num_hidden_layers"] == cd["num_hidden_layers"] == 3
    tb, td = tensors(b), tensors(direct)
    assert set(tb) == set(td) and all(torch.equal(tb[k], td[k]) for k in tb)
    torch.testing.assert_close(logits(load_model(b, dtype="fp32"), IDS), logits(masked(src, union), IDS),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(CompressError, match="already removed"):
        export_pruned(a, tmp_path / "c", [(0, "attn")])
    # zeroed export of a pruned checkpoint keeps its map and its modeling code
    z = export_pruned(a, tmp_path / "z", second, mode="zeroed")
    cz = json.loads((z / "config.json").read_text())
    assert cz[PRUNED_KEY] == {"attn": [0], "mlp": [3]} and (z / MODELING_FILE).is_file()
    torch.testing.assert_close(logits(load_model(z, dtype="fp32"), IDS), logits(masked(src, union), IDS),
                               rtol=1e-5, atol=1e-5)


def test_provenance_before_commit_and_sharding(tiny_llama, tmp_path):
    seen = []

    def before_commit(tmp: Path) -> None:
        (tmp / "prune_report.json").write_text("{}")
        seen.append(sorted(p.name for p in tmp.iterdir()))

    out = export_pruned(tiny_llama, tmp_path / "out", REMOVED, extra={"prune": {"method": "blockpruner"}},
                        before_commit=before_commit, max_shard_size="100KB")
    assert (out / "prune_report.json").is_file() and "config.json" in seen[0]
    prov = json.loads((out / "compress.json").read_text())
    text = json.dumps(prov)
    assert "blockpruner" in text and '"kept_layers": [0, 1, 3]' in text
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not any(k.startswith("model.layers.3.") for k in index["weight_map"])
    assert Checkpoint(out).size_on_disk() < Checkpoint(tiny_llama).size_on_disk()
    assert (out / "tokenizer.json").is_file()


def test_inspect_shows_the_block_map(tiny_llama, tmp_path, capsys):
    from compress import inspect
    from compress.cli import main

    out = export_pruned(tiny_llama, tmp_path / "out", REMOVED)
    info = inspect(out)
    assert info["layers"] == 3 and info["block_map"] == "MAB" and info["pruned"]
    assert info["blocks"] == {"attn": 2, "mlp": 2, "total": 4}
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["block_map"] == "MAB"
    assert main(["inspect", str(out)]) == 0
    assert "MAB" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("removed", "mode", "message"),
    [
        ([(4, "attn")], "physical", "layers 0..3"),
        ([(-1, "mlp")], "physical", "layers 0..3"),
        ([(0, "ffn")], "physical", "unknown block kind"),
        ([(0, "attn"), (0, "attn")], "physical", "listed twice"),
        ([(i, k) for i in range(4) for k in ("attn", "mlp")], "physical", "every block"),
        ([(i, k) for i in range(4) for k in ("attn", "mlp")], "zeroed", "every block"),
        ([(0, "attn")], "pruned", "unknown export mode"),
        (["attn0"], "physical", "must be"),
    ],
)
def test_bad_input(tiny_llama, tmp_path, removed, mode, message):
    with pytest.raises(CompressError, match=message):
        export_pruned(tiny_llama, tmp_path / "out", removed, mode=mode)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_llama_shaped_unknown_architecture(tmp_path):
    src = make_tiny_model(tmp_path / "src", "llama")
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "mystery"
    (src / "config.json").write_text(json.dumps(cfg))
    # Partially pruned layers need transformers' class for the modeling code: refused before writing anything.
    with pytest.raises(CompressError, match="no causal-LM class for model_type 'mystery'"):
        export_pruned(src, tmp_path / "out", [(1, "attn")])
    assert not (tmp_path / "out").exists()
    # Whole layers only: a plain checkpoint of the same (unknown) type, renumbered.
    out = export_pruned(src, tmp_path / "out", [[1, "attn"], [1, "mlp"]])
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    assert "model.layers.2.mlp.up_proj.weight" in Checkpoint(out) and "model.layers.3.mlp.up_proj.weight" not in Checkpoint(out)


def test_existing_output_needs_force(tiny_llama, tmp_path):
    out = export_pruned(tiny_llama, tmp_path / "out", REMOVED)  # --force replaces only a compress output
    (out / "keep.txt").write_text("x")
    with pytest.raises(CompressError, match="--force"):
        export_pruned(tiny_llama, out, REMOVED)
    assert (out / "keep.txt").read_text() == "x"
    export_pruned(tiny_llama, out, REMOVED, force=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_plan_reads_no_tensor_data(tiny_llama, monkeypatch):
    ck = Checkpoint(tiny_llama)
    monkeypatch.setattr(Checkpoint, "get", lambda *a, **k: pytest.fail("plan_export read tensor data"))
    plan = plan_export(ck, REMOVED)
    assert plan.kept == [0, 1, 3] and plan.pruned_out == {"attn": [0], "mlp": [1]}


def test_transformers_without_dummy_layer_is_a_clear_error(tiny_models, tmp_path, monkeypatch):
    """Cache slots of removed attention need transformers>=5.23: an older one is told so at load."""
    import transformers.cache_utils as cu
    from transformers import AutoModelForCausalLM

    out = export_pruned(tiny_models["llama"], tmp_path / "p", [(1, "attn"), (2, "mlp")])
    monkeypatch.delattr(cu, "DummyLayer")
    with pytest.raises(CompressError, match=r"needs transformers>=5\.23 .* this is transformers"):
        load_model(out, "cpu", "fp32")
    with pytest.raises(ImportError, match=r"needs transformers>=5\.23"):
        AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    mlp_only = export_pruned(tiny_models["llama"], tmp_path / "m", [(2, "mlp")])
    assert load_model(mlp_only, "cpu", "fp32") is not None  # no attention removed: no cache slot to fix
