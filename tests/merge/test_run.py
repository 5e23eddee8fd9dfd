"""End to end on tiny real checkpoints: recipes, the CLI, streaming execution, output format, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from compress.cli import main
from compress.merge import merge
from tests.fixtures import make_tiny_model
from tests.merge.conftest import make_variant


def state(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def write(tmp_path: Path, text: str, name: str = "recipe.yml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def nothing_written(out: Path) -> bool:
    return not out.exists() and not any(p.name.startswith(f".{out.name}.tmp") for p in out.parent.iterdir())


# ---- recipes through the streaming executor -------------------------------------------------
def test_task_arithmetic_with_filters_matches_formula(merge_models, tmp_path, capsys):
    m = merge_models
    recipe = write(tmp_path, f"""
merge_method: task_arithmetic
base_model: {m['base']}
models:
  - model: {m['a']}
    parameters:
      weight:
        - filter: self_attn
          value: 0.7
        - filter: mlp
          value: 0.2
        - value: 0.5
  - model: {m['b']}
    parameters:
      weight: 0.3
parameters:
  lambda: 0.9
""")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["merge", str(recipe), "-o", str(out), "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["method"] == "task_arithmetic"
    got, base, a, b = state(out), state(m["base"]), state(m["a"]), state(m["b"])
    assert set(got) == set(base)
    for name in got:
        wa = 0.7 if "self_attn" in name else 0.2 if "mlp" in name else 0.5
        want = base[name] + 0.9 * (wa * (a[name] - base[name]) + 0.3 * (b[name] - base[name]))
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-6)
    prov = json.loads((out / "compress.json").read_text())
    assert "recipe" in json.dumps(prov)
    assert (out / "mergekit_config.yml").read_text() == recipe.read_text()
    assert (out / "tokenizer.json").is_file()


def test_slerp_gradient_over_layers(merge_models, tmp_path, capsys):
    m = merge_models
    recipe = write(tmp_path, f"""
merge_method: slerp
base_model: {m['base']}
slices:
  - sources:
      - model: {m['base']}
        layer_range: [0, 4]
      - model: {m['a']}
        layer_range: [0, 4]
parameters:
  t:
    - filter: self_attn
      value: [0, 1]
    - filter: mlp
      value: [1, 0]
    - value: 0.5
""")
    out = tmp_path / "out"
    assert run_cli(["merge", str(recipe), "-o", str(out)], capsys)[0] == 0
    got, base, a = state(out), state(m["base"]), state(m["a"])
    q = "model.layers.{}.self_attn.q_proj.weight"
    up = "model.layers.{}.mlp.up_proj.weight"
    torch.testing.assert_close(got[q.format(0)], base[q.format(0)])      # t = 0 at the first layer
    torch.testing.assert_close(got[q.format(3)], a[q.format(3)], rtol=1e-5, atol=1e-6)   # t = 1 at the last
    torch.testing.assert_close(got[up.format(0)], a[up.format(0)], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[up.format(3)], base[up.format(3)])
    # layer 1: t = 1/3 for self_attn; independent slerp formula in float64
    x, y = base[q.format(1)].double().ravel(), a[q.format(1)].double().ravel()
    om = math.acos(float(x @ y / x.norm() / y.norm()))
    t = 1 / 3
    want = (math.sin((1 - t) * om) * x + math.sin(t * om) * y) / math.sin(om)
    np.testing.assert_allclose(got[q.format(1)].double().ravel().numpy(), want.numpy(), rtol=1e-4, atol=1e-6)


def test_slices_concatenate_layers(merge_models, tmp_path):
    m = merge_models
    recipe = write(tmp_path, f"""
merge_method: linear
slices:
  - sources:
      - model: {m['a']}
        layer_range: [0, 2]
  - sources:
      - model: {m['b']}
        layer_range: [1, 4]
dtype: bfloat16
""")
    out = tmp_path / "out"
    merge(recipe, out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 5
    got, a, b = state(out), state(m["a"]), state(m["b"])
    k = "model.layers.{}.mlp.down_proj.weight"
    assert torch.equal(got[k.format(1)], a[k.format(1)].bfloat16())
    assert torch.equal(got[k.format(2)], b[k.format(1)].bfloat16())
    assert torch.equal(got[k.format(4)], b[k.format(3)].bfloat16())
    assert all(t.dtype == torch.bfloat16 for t in got.values())
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == 5


def test_varm_streaming_equals_in_memory_and_output_loads(merge_models, tmp_path, capsys):
    m = merge_models
    out = tmp_path / "out"
    code, _, err = run_cli(["merge", "--method", "varm", "--base", str(m["base"]), str(m["a"]), str(m["b"]),
                            str(m["c"]), "-o", str(out), "--max-shard-size", "100KB", "--threads", "3"], capsys)
    assert code == 0, err
    # In memory, written here: W_j = mean(Δ_j²)/Σ_k mean(Δ_k²) per tensor, θ = θ_b + Σ W_j Δ_j.
    base, ts = state(m["base"]), [state(m[k]) for k in "abc"]
    got = state(out)
    for name, b in base.items():
        stats = [float(((t[name].double() - b.double()) ** 2).mean()) for t in ts]
        w = [s / sum(stats) for s in stats]
        want = b.clone()
        for wj, t in zip(w, ts, strict=True):
            want.add_(t[name] - b, alpha=wj)
        assert torch.equal(got[name], want), name
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(base)
    assert len(set(index["weight_map"].values())) > 1
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    detail = json.loads((out / "compress_merge.json").read_text())
    w = detail["tensors"]["model.norm.weight"]["varm_weights"]
    assert math.isclose(sum(w), 1.0, rel_tol=1e-9)


def official_varm_weights(base: dict, targets: list[dict], name: str, granularity: str) -> list[float]:
    """FuseChat's merge.py rules, written from its analysis: key_to_params[k] = Σ Δ²/numel per tensor;
    avg_layer sums key_to_params over the layer's tensors (".layers.N.") and gives every other tensor
    uniform weights; avg_model pools Σ Δ² / Σ numel over the model; weights = stat / Σ stat."""
    def key_to_params(t):
        return {k: float(((t[k].double() - base[k].double()) ** 2).sum()) / base[k].numel() for k in base}
    if granularity == "model":
        stats = [sum(float(((t[k].double() - base[k].double()) ** 2).sum()) for k in base)
                 / sum(base[k].numel() for k in base) for t in targets]
    elif ".layers." not in name:
        return [1.0 / len(targets)] * len(targets)
    else:
        layer = name.split(".layers.")[1].split(".")[0]
        stats = []
        for t in targets:
            kp = key_to_params(t)
            stats.append(sum(v for k, v in kp.items() if ".layers." in k and k.split(".layers.")[1].split(".")[0] == layer))
    return [s / sum(stats) for s in stats]


def test_varm_layer_and_model_granularity(merge_models, tmp_path):
    m = merge_models
    # target a moves only the MLP of layer 2 a lot: per-tensor means summed (official avg_layer) and
    # pooled Σ Δ² / Σ numel (the old rule) weigh it differently
    def loud(sd):
        for k in sd:
            if k.startswith("model.layers.2.mlp."):
                sd[k] = sd[k] * 1.5
        return sd
    a = make_variant(m["base"], tmp_path / "loud", seed=5, edit=loud)
    base, ts = state(m["base"]), [state(a), state(m["b"])]
    for gran in ("layer", "model"):
        out = tmp_path / gran
        merge(None, out, method="varm", base=str(m["base"]), models=[str(a), str(m["b"])],
              parameters={"granularity": gran})
        got = state(out)
        for name in ["model.layers.2.mlp.up_proj.weight", "model.layers.2.input_layernorm.weight",
                     "model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight", "model.norm.weight"]:
            w = official_varm_weights(base, ts, name, gran)
            want = base[name] + w[0] * (ts[0][name] - base[name]) + w[1] * (ts[1][name] - base[name])
            torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-6)
        detail = json.loads((out / "compress_merge.json").read_text())["tensors"]
        np.testing.assert_allclose(detail["model.layers.2.mlp.up_proj.weight"]["varm_weights"],
                                   official_varm_weights(base, ts, "model.layers.2.mlp.up_proj.weight", gran), rtol=1e-9)


def test_dare_seed_reproducible_independent_of_threads(merge_models, tmp_path):
    m = merge_models
    kw = dict(method="dare_ties", base=str(m["base"]), models=[str(m["a"]), str(m["b"])],
              parameters={"density": 0.5, "weight": 0.5})
    intra = torch.get_num_threads()
    merge(None, tmp_path / "x", seed=1, threads=1, **kw)
    merge(None, tmp_path / "y", seed=1, threads=4, **kw)
    merge(None, tmp_path / "z", seed=2, threads=2, **kw)
    assert torch.get_num_threads() == intra  # the merge's own intra-op setting is undone
    x, y, z = state(tmp_path / "x"), state(tmp_path / "y"), state(tmp_path / "z")
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert not all(torch.equal(x[k], z[k]) for k in x)


@pytest.mark.parametrize("method", ["linear", "ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della",
                                    "della_linear", "model_stock", "sce"])
def test_every_method_runs_via_shortcut(merge_models, tmp_path, method):
    m = merge_models
    params = {"density": 0.6} if method not in ("linear", "model_stock", "sce") else {}
    out = tmp_path / method
    merge(None, out, method=method, base=str(m["base"]), models=[str(m[k]) for k in "abc"], parameters=params,
          dtype="bf16")
    got = state(out)
    assert len(got) == len(state(m["base"]))
    assert all(t.dtype == torch.bfloat16 and bool(torch.isfinite(t.float()).all()) for t in got.values())


def test_tied_embeddings_stay_tied(tmp_path):
    base = make_tiny_model(tmp_path / "tb", "llama", layers=2, seed=0, tie_word_embeddings=True)
    a = make_variant(base, tmp_path / "ta", seed=1)
    out = tmp_path / "out"
    merge(None, out, method="ties", base=str(base), models=[str(a)], parameters={"density": 0.5})
    assert "lm_head.weight" not in state(out)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def _bigger_vocab(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        sd[k] = torch.cat([sd[k], torch.ones(8, sd[k].shape[1], dtype=sd[k].dtype)])
    return sd


def test_vocab_sizes(merge_models, tmp_path, capsys):
    m = merge_models
    big = make_variant(m["base"], tmp_path / "big", seed=9, edit=_bigger_vocab)
    out = tmp_path / "out"
    code, _, err = run_cli(["merge", "--method", "linear", str(m["a"]), str(big), "-o", str(out)], capsys)
    assert code == 1 and "vocabulary sizes differ" in err and "tokenizer_source: union" in err
    assert nothing_written(out)
    recipe = write(tmp_path, f"""
merge_method: task_arithmetic
base_model: {m['base']}
tokenizer_source: base
models:
  - model: {big}
    parameters: {{weight: 1.0}}
""")
    merge(recipe, out)
    got, b = state(out), state(big)
    assert got["model.embed_tokens.weight"].shape[0] == 512
    torch.testing.assert_close(got["model.embed_tokens.weight"], b["model.embed_tokens.weight"][:512])


# ---- bad input: one line, exit 1, nothing written -------------------------------------------
def _bad(args, capsys, needle, out):
    code, stdout, err = run_cli(args, capsys)
    assert code == 1, err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # one error line (a progress bar may precede it)
    assert needle in err, err
    assert nothing_written(out)


def test_bad_architecture_and_shapes(merge_models, tmp_path, capsys):
    m = merge_models
    out = tmp_path / "out"
    qwen = make_tiny_model(tmp_path / "qwen", "qwen2", layers=4)
    _bad(["merge", "--method", "ties", "--base", str(m["base"]), str(qwen), "-o", str(out)], capsys,
         "different architectures", out)

    def shrink(sd):
        sd["model.layers.1.mlp.up_proj.weight"] = sd["model.layers.1.mlp.up_proj.weight"][:64]
        return sd
    odd = make_variant(m["base"], tmp_path / "odd", seed=3, edit=shrink)
    _bad(["merge", "--method", "ties", "--base", str(m["base"]), str(odd), "-o", str(out)], capsys,
         "model.layers.1.mlp.up_proj.weight", out)


def test_bad_parameters_and_base(merge_models, tmp_path, capsys):
    m = merge_models
    out = tmp_path / "out"
    _bad(["merge", "--method", "ties", str(m["a"]), str(m["b"]), "-o", str(out)], capsys, "needs a base_model", out)
    _bad(["merge", "--method", "ties", "--base", str(m["base"]), str(m["a"]), "--set", "density=1.5", "-o", str(out)],
         capsys, "density must be in (0, 1]", out)
    _bad(["merge", "--method", "ties", "--base", str(m["base"]), str(m["a"]), "--set", "weight=-1", "-o", str(out)],
         capsys, "weight", out)
    _bad(["merge", "--method", "slerp", "--base", str(m["base"]), str(m["a"]), str(m["b"]), "-o", str(out)],
         capsys, "exactly 2 models", out)
    _bad(["merge", "--method", "della", "--base", str(m["base"]), str(m["a"]), "--set", "density=0.1",
          "-o", str(out)], capsys, "epsilon", out)
    recipe = write(tmp_path, f"""merge_method: ties
base_model: {m['base']}
models:
  - model: {m['a']}
    parameters:
      weight: 1.0
      density: [0.5, 1.7]
""")
    _bad(["merge", str(recipe), "-o", str(out)], capsys, "line 7", out)


def test_bad_yaml_and_fields(merge_models, tmp_path, capsys):
    m = merge_models
    out = tmp_path / "out"
    broken = write(tmp_path, f"merge_method: ties\nbase_model: {m['base']}\nmodels: [\n  {{model: x\n", "broken.yml")
    _bad(["merge", str(broken), "-o", str(out)], capsys, "malformed YAML", out)
    unknown = write(tmp_path, f"merge_method: ties\nbase_model: {m['base']}\nmodels:\n  - model: {m['a']}\n"
                              f"    paramters: {{weight: 1}}\n", "unknown.yml")
    _bad(["merge", str(unknown), "-o", str(out)], capsys, "line 5: models[0].paramters", out)
    method = write(tmp_path, f"merge_method: tis\nmodels:\n  - model: {m['a']}\n", "method.yml")
    _bad(["merge", str(method), "-o", str(out)], capsys, "unknown merge_method 'tis'", out)
    param = write(tmp_path, f"merge_method: linear\nmodels:\n  - model: {m['a']}\nparameters:\n  densty: 0.5\n", "p.yml")
    _bad(["merge", str(param), "-o", str(out)], capsys, "line 5", out)


def test_nan_input_named_and_nothing_written(merge_models, tmp_path, capsys):
    m = merge_models

    def poison(sd):
        sd["model.layers.2.self_attn.v_proj.weight"][0, 0] = float("nan")
        return sd
    bad = make_variant(m["base"], tmp_path / "nan", seed=4, edit=poison)
    out = tmp_path / "out"
    _bad(["merge", "--method", "task_arithmetic", "--base", str(m["base"]), str(m["a"]), str(bad), "-o", str(out)],
         capsys, "model.layers.2.self_attn.v_proj.weight", out)


def test_output_is_input_or_exists(merge_models, tmp_path, capsys):
    m = merge_models
    code, _, err = run_cli(["merge", "--method", "linear", str(m["a"]), str(m["b"]), "-o", str(m["a"])], capsys)
    assert code == 1 and "inside the input" in err
    assert sorted(p.name for p in m["a"].iterdir()) == sorted(p.name for p in m["b"].iterdir())
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run_cli(["merge", "--method", "linear", str(m["a"]), str(m["b"]), "-o", str(out)], capsys)
    assert code == 1 and "--force" in err and (out / "keep.txt").read_text() == "x"


def test_chat_template_from_recipe(merge_models, tmp_path):
    m = merge_models
    jinja = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    recipe = {"merge_method": "linear", "models": [{"model": str(m["a"])}, {"model": str(m["b"])}],
              "chat_template": jinja}
    out = tmp_path / "out"
    merge(recipe, out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "[user] hi\n"


def test_tie_break_index_through_the_cli(merge_models, tmp_path, capsys):
    """bf16 task vectors tie at the threshold: `tie_break: index` picks by position, on any thread count."""
    m = merge_models
    a = make_variant(m["base"], tmp_path / "a16", 3, dtype=torch.bfloat16)
    b = make_variant(m["base"], tmp_path / "b16", 4, dtype=torch.bfloat16)
    args = ["merge", "--method", "ties", "--base", str(m["base"]), str(a), str(b), "--set", "density=0.3"]
    outs = {}
    for name, extra in (("sort", []), ("index1", ["--set", "tie_break=index", "--threads", "1"]),
                        ("index2", ["--set", "tie_break=index", "--threads", "2"])):
        code, _, err = run_cli([*args, *extra, "-o", str(tmp_path / name)], capsys)
        assert code == 0, err
        outs[name] = state(tmp_path / name)
    assert all(torch.equal(outs["index1"][k], outs["index2"][k]) for k in outs["sort"])
    assert not all(torch.equal(outs["index1"][k], outs["sort"][k]) for k in outs["sort"])  # other tied entries
    rec = json.loads((tmp_path / "index1" / "compress_merge.json").read_text())
    assert "tie_break" in json.dumps(rec)
    code, _, err = run_cli([*args, "--set", "tie_break=random", "-o", str(tmp_path / "bad")], capsys)
    assert code == 1 and "tie_break" in err and "sort, index" in err and not (tmp_path / "bad").exists()
