"""Real SmolLM2-135M-Instruct: merge perturbed variants through the CLI, load the result with transformers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compress.cli import main

pytestmark = pytest.mark.slow


def _variant(src, out, seed, names):
    """A perturbed copy of the real model: a few layers get seeded noise, the rest is shared."""
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("model*.safetensors*", "compress.json"))
    sd = load_file(str(src / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    for n in names:
        t = sd[n].float()
        sd[n] = (t + 0.02 * float(t.std()) * torch.randn(t.shape, generator=g)).to(sd[n].dtype)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_varm_and_ties_on_smollm2(smollm2, tmp_path, capsys):
    names = ["model.layers.3.mlp.up_proj.weight", "model.layers.10.self_attn.q_proj.weight",
             "model.embed_tokens.weight"]
    a = _variant(smollm2, tmp_path / "a", 1, names)
    b = _variant(smollm2, tmp_path / "b", 2, names[:2])
    out = tmp_path / "varm"
    code = main(["merge", "--method", "varm", "--base", str(smollm2), str(a), str(b), "-o", str(out), "--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert json.loads(cap.out)["method"] == "varm"

    def get(folder, n):
        with safe_open(str(folder / "model.safetensors"), "pt") as h:
            return h.get_tensor(n).float()
    # VaRM by hand: weights ∝ mean squared change from the pivot
    for n in names:
        p, x, y = get(smollm2, n).double(), get(a, n).double(), get(b, n).double()
        sx, sy = float(((x - p) ** 2).mean()), float(((y - p) ** 2).mean())
        want = p + (sx * (x - p) + sy * (y - p)) / (sx + sy)
        err = (get(out, n).double() - want).abs()
        assert bool((err <= want.abs() * 2**-8 + 1e-7).all()), n  # within bf16 rounding of the fp64 formula
    # untouched tensors stay bit-identical to the pivot; embed: only `a` moved -> equals a
    k = "model.layers.20.mlp.down_proj.weight"
    assert torch.equal(get(out, k), get(smollm2, k))
    assert torch.equal(get(out, "model.embed_tokens.weight"), get(a, "model.embed_tokens.weight"))

    recipe = tmp_path / "ties.yml"
    recipe.write_text(f"""merge_method: ties
base_model: {smollm2}
models:
  - model: {a}
    parameters: {{weight: 0.5, density: [0.3, 0.7]}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.5}}
dtype: bfloat16
""")
    out2 = tmp_path / "ties"
    assert main(["merge", str(recipe), "-o", str(out2)]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(out2, output_loading_info=True)
    assert not info["missing_keys"]
    tok = AutoTokenizer.from_pretrained(out2)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    assert torch.isfinite(loss) and float(loss) < 8
