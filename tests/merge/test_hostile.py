"""Hostile input to `compress merge`: each case is one `error:` line, exit 1, nothing written, no hang."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.merge import merge
from tests.fixtures import make_tiny_model
from tests.merge.conftest import make_variant
from tests.merge.reference import sce_fork_reference
from tests.merge.test_run import _bad, state, write


# ---- recipes that would never end ---------------------------------------------------------------
def test_alias_bomb_recursive_alias_and_deep_nesting_are_refused(merge_models, tmp_path, capsys):
    out = tmp_path / "out"
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):  # 9^8 = 43 million leaves once expanded
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb = write(tmp_path, "\n".join(lines) + "\nmerge_method: linear\nmodels: *h\n", "bomb.yml")
    _bad(["merge", str(bomb), "-o", str(out)], capsys, "more than 100000 YAML nodes", out)
    loop = write(tmp_path, "merge_method: linear\nmodels: &a [*a]\n", "loop.yml")
    _bad(["merge", str(loop), "-o", str(out)], capsys, "nested", out)
    deep = write(tmp_path, "merge_method: linear\nmodels: " + "[" * 3000 + "]" * 3000 + "\n", "deep.yml")
    _bad(["merge", str(deep), "-o", str(out)], capsys, "nested more than 64 levels", out)
    # aliases within the budget still work (mergekit recipes use anchors)
    ok = write(tmp_path, f"merge_method: linear\nmodels:\n  - model: {merge_models['a']}\n    parameters: &w {{weight: 1}}\n"
                         f"  - model: {merge_models['b']}\n    parameters: *w\n", "ok.yml")
    merge(ok, tmp_path / "fine")
    assert (tmp_path / "fine" / "model.safetensors").is_file()


def test_absurd_sizes_are_refused_up_front(merge_models, tmp_path, capsys):
    m = merge_models
    out = tmp_path / "out"
    pad = write(tmp_path, f"merge_method: task_arithmetic\nbase_model: {m['base']}\nmodels:\n  - model: {m['a']}\n"
                          f"tokenizer:\n  source: base\n  pad_to_multiple_of: 1000000000\n", "pad.yml")
    _bad(["merge", str(pad), "-o", str(out)], capsys, "tokenizer.pad_to_multiple_of (line 7): 1000000000", out)
    _bad(["merge", "--method", "linear", str(m["a"]), str(m["b"]), "--threads", "1000000", "-o", str(out)], capsys,
         "--threads 1000000", out)
    neg = write(tmp_path, f"merge_method: linear\nslices:\n  - sources:\n      - model: {m['a']}\n"
                          f"        layer_range: [-2, 2]\n", "neg.yml")
    _bad(["merge", str(neg), "-o", str(out)], capsys, "0 <= start < end", out)


# ---- weights ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e999"])
def test_non_finite_weights_are_one_error_before_work(merge_models, tmp_path, capsys, value):
    m = merge_models
    out = tmp_path / "out"
    for method in ("linear", "task_arithmetic", "ties"):
        recipe = write(tmp_path, f"merge_method: {method}\nbase_model: {m['base']}\nmodels:\n  - model: {m['a']}\n"
                                 f"    parameters: {{weight: {value}, density: 0.5}}\n  - model: {m['b']}\n"
                                 f"    parameters: {{weight: 1, density: 0.5}}\n".replace(", density: 0.5", "" if method != "ties" else ", density: 0.5"))
        _bad(["merge", str(recipe), "-o", str(out)], capsys, "weight must be a finite number", out)
    _bad(["merge", "--method", "ties", "--base", str(m["base"]), str(m["a"]), "--set", f"lambda={value}",
          "-o", str(out)], capsys, "lambda must be a finite number", out)


def test_linear_weights_summing_to_zero_are_refused(merge_models, tmp_path, capsys):
    m = merge_models
    out = tmp_path / "out"
    _bad(["merge", "--method", "linear", str(m["a"]), str(m["b"]), "--set", "weight=0", "-o", str(out)],
         capsys, "sum to 0", out)
    recipe = write(tmp_path, f"merge_method: linear\nparameters: {{normalize: false}}\nmodels:\n  - model: {m['a']}\n"
                             f"    parameters: {{weight: [0, 1]}}\n  - model: {m['b']}\n    parameters: {{weight: 0}}\n")
    _bad(["merge", str(recipe), "-o", str(out)], capsys, "model.embed_tokens.weight sum to 0", out)


# ---- damaged checkpoints --------------------------------------------------------------------------
def _header_edit(src: Path, dst: Path, edit) -> Path:
    """Copy a model folder, rewriting its safetensors header with `edit(header)` (data kept as is)."""
    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return dst


def _set(name: str, key: str, value):
    def edit(h):
        h[name][key] = value
    return edit


Q, OPROJ = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight"


def test_damaged_safetensors_headers_are_refused(merge_models, tmp_path, capsys):
    m = merge_models
    out = tmp_path / "out"

    def overlap(h):
        h[OPROJ]["data_offsets"] = list(h[Q]["data_offsets"])  # two tensors on the same bytes, a gap elsewhere
    cases = {
        "overlap": (overlap, "invalid offset for tensor"),
        "i32": (_set(Q, "dtype", "I32"), "stored as int32"),
        "dtype_list": (_set(Q, "dtype", ["F32"]), "expected string"),
        "str_offsets": (lambda h: h[Q].update(data_offsets=[str(x) for x in h[Q]["data_offsets"]]), "expected usize"),
        "null_shape": (_set(Q, "shape", None), "expected a sequence"),
        "trailing": (lambda h: h.pop(max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][1])),
                     "not fully covered"),
    }
    for name, (edit, needle) in cases.items():
        bad = _header_edit(m["a"], tmp_path / name, edit)
        _bad(["merge", "--method", "linear", str(m["b"]), str(bad), "-o", str(out)], capsys, needle, out)


def test_damaged_configs_indexes_and_bins_are_refused(merge_models, tmp_path, capsys):
    m = merge_models
    out = tmp_path / "out"
    cfg = tmp_path / "cfg"
    shutil.copytree(m["a"], cfg)
    (cfg / "config.json").write_text("[1, 2]")
    _bad(["merge", "--method", "linear", str(m["b"]), str(cfg), "-o", str(out)], capsys, "a JSON object", out)
    idx = tmp_path / "idx"
    shutil.copytree(m["a"], idx)
    (idx / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model.safetensors"]}))
    _bad(["merge", "--method", "linear", str(m["b"]), str(idx), "-o", str(out)], capsys, "weight_map must map", out)
    binf = tmp_path / "bin"
    shutil.copytree(m["a"], binf)
    (binf / "model.safetensors").unlink()
    torch.save([torch.ones(2)], binf / "pytorch_model.bin")
    _bad(["merge", "--method", "linear", str(m["b"]), str(binf), "-o", str(out)], capsys, "holds a list", out)


# ---- same seed, same bits, whatever the thread count -------------------------------------------------
@pytest.fixture(scope="module")
def wide_models(tmp_path_factory) -> dict[str, Path]:
    """Tensors of 262k entries: large enough for torch to split a whole-tensor sum across threads."""
    root = tmp_path_factory.mktemp("wide")
    base = make_tiny_model(root / "base", "llama", layers=1, seed=0, hidden_size=256, intermediate_size=1024)
    return {"base": base, "a": make_variant(base, root / "a", 1), "b": make_variant(base, root / "b", 2)}


@pytest.mark.parametrize("method", ["dare_ties", "della_linear"])
def test_random_and_rescaled_methods_same_bits_on_any_thread_count(wide_models, tmp_path, method):
    """The L1 rescale's sums were whole-tensor torch sums: their rounding followed the thread split."""
    m = wide_models
    params = {"density": 0.5, "weight": 0.5, "rescale": True}
    outs = []
    for threads in (1, 3):
        out = tmp_path / f"t{threads}"
        merge(None, out, method=method, base=str(m["base"]), models=[str(m["a"]), str(m["b"])],
              parameters=params, threads=threads, seed=7)
        outs.append(state(out))
    for other in outs[1:]:
        assert all(torch.equal(outs[0][k], other[k]) for k in outs[0]), method


# ---- SCE: FuseChat-2.0's own recipe ------------------------------------------------------------------
def test_fusechat2_sce_recipe_gives_the_fork_semantics(merge_models, tmp_path):
    """FuseChat-2.0's fusechat-sce.yml (pivot listed among the models, select_topk 0.1, no variant key)
    merges as the FuseAI fork does; one target that left a tensor unchanged gives no NaN."""
    m = merge_models

    def keep_norm(sd):
        base = state(m["base"])
        sd["model.norm.weight"] = base["model.norm.weight"].clone()
        return sd
    c = make_variant(m["base"], tmp_path / "c", seed=8, edit=keep_norm)
    text = (f"models:\n  - model: {m['base']}\n  - model: {m['a']}\n  - model: {c}\nmerge_method: sce\n"
            f"base_model: {m['base']}\nparameters:\n  select_topk: 0.1\n")
    out = tmp_path / "out"
    merge(write(tmp_path, text), out)
    got, base, a, cc = state(out), state(m["base"]), state(m["a"]), state(c)
    for name in ("model.layers.1.mlp.up_proj.weight", "model.norm.weight"):
        want = sce_fork_reference(base[name].numpy(), [a[name].numpy(), cc[name].numpy()], 0.1)
        np.testing.assert_allclose(got[name].numpy(), want, rtol=1e-5, atol=1e-7)
    rec = json.loads((out / "compress_merge.json").read_text())
    assert rec["resolved"]["parameters"]["sce_mask_deltas"] is False
    # every target unchanged: the pivot, finite
    same = tmp_path / "same"
    merge(None, same, method="sce", base=str(m["base"]), models=[str(m["base"]), str(tmp_path / "c")],
          parameters={"select_topk": 0.1})
    assert torch.equal(state(same)["model.norm.weight"], base["model.norm.weight"])
