"""`tokenizer_source` (union / base / a model): models whose tokenizers differ, on tiny real checkpoints.

Expected rows are computed here by token string, independently of the code's permutations:
each model's row of a token is its own row when its tokenizer has the token, else mergekit's
default (only one model has it → that row; the base has it → the base's row; else the mean of the
models that have it; none → zeros).
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from compress.merge import merge
from tests.fixtures import WIKI_VALID, make_tiny_model
from tests.merge.conftest import make_variant
from tests.merge.test_run import nothing_written, run_cli, state, write

EMB = "model.embed_tokens.weight"
HEAD = "lm_head.weight"


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _resize(folder: Path, tok, seed: int) -> None:
    """Save `tok` into `folder` and give the embedding/LM head one row per token (new rows random)."""
    tok.save_pretrained(str(folder))
    sd = load_file(str(folder / "model.safetensors"))
    n = len(tok)
    g = torch.Generator().manual_seed(seed)
    for k in (EMB, HEAD):
        if k in sd:
            old = sd[k]
            new = torch.randn(n, old.shape[1], generator=g, dtype=torch.float32).to(old.dtype) * 0.05
            keep = min(n, old.shape[0])
            new[:keep] = old[:keep]
            sd[k] = new.contiguous()
    (folder / "model.safetensors").unlink()
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vocab_size"] = n
    (folder / "config.json").write_text(json.dumps(cfg))


def _with_added(base: Path, out: Path, seed: int, plain: list[str], special: list[str]) -> Path:
    from tokenizers import AddedToken

    make_variant(base, out, seed=seed)
    tok = _tokenizer(out)
    tok.add_tokens(plain)
    tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    _resize(out, tok, seed)
    return out


def _retrained(base: Path, out: Path, seed: int, vocab: int = 400) -> Path:
    """A variant whose BPE tokenizer is trained on other text: many tokens differ, ids are reordered."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    make_variant(base, out, seed=seed)
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|im_end|>", "<|endoftext|>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(WIKI_VALID.read_text(encoding="utf-8").splitlines()[3000:4500], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (out / f).unlink(missing_ok=True)
    _resize(out, fast, seed)
    return out


@pytest.fixture(scope="module")
def vocab_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vocab")
    base = make_tiny_model(root / "base", "llama", layers=2, seed=0)
    return {
        "base": base,
        "x": _with_added(base, root / "x", 1, ["zebra_tok", "<tool>"], ["<|x_special|>"]),
        "y": _with_added(base, root / "y", 2, ["<tool>", "yak_tok"], ["<|y_special|>"]),
        "z": _retrained(base, root / "z", 3),
    }


@functools.lru_cache(maxsize=32)
def _rows(folder: Path, key: str) -> tuple[dict[str, int], torch.Tensor]:
    return _tokenizer(folder).get_vocab(), state(folder)[key].float()


def _expected_aligned(models: list[Path], base: Path | None, token: str, key: str) -> list[torch.Tensor]:
    """Each model's row for `token` under mergekit's rules (by string, from the saved folders)."""
    data = [_rows(m, key) for m in models]
    have = [token in v for v, _ in data]
    own = [t[v[token]] if token in v else None for v, t in data]
    if all(have):
        return own
    if sum(have) == 1:
        default = own[have.index(True)]
    elif sum(have) == 0:
        default = torch.zeros(data[0][1].shape[1])
    elif base is not None and base in models and have[models.index(base)]:
        default = own[models.index(base)]
    else:
        default = sum(o for o in own if o is not None) / sum(have)
    return [o if o is not None else default for o in own]


def test_union_task_arithmetic_rows_and_tokenizer(vocab_models, tmp_path):
    m = vocab_models
    out = tmp_path / "out"
    recipe = write(tmp_path, f"""
merge_method: task_arithmetic
base_model: {m['base']}
tokenizer_source: union
models:
  - model: {m['x']}
    parameters: {{weight: 0.6}}
  - model: {m['y']}
    parameters: {{weight: 0.3}}
  - model: {m['z']}
    parameters: {{weight: 0.5}}
""")
    merge(recipe, out)
    tok = _tokenizer(out)
    vocab = tok.get_vocab()
    # the union: every token of every model; the base's tokens keep their ids
    every = set()
    for k in "base", "x", "y", "z":
        every |= set(_tokenizer(m[k]).get_vocab())
    assert set(vocab) == every
    for t, i in _tokenizer(m["base"]).get_vocab().items():
        assert vocab[t] == i
    assert tok.added_tokens_decoder[vocab["<|x_special|>"]].special
    assert len(set(vocab.values())) == len(vocab)
    got = state(out)
    cfg = json.loads((out / "config.json").read_text())
    assert got[EMB].shape[0] == got[HEAD].shape[0] == len(vocab) == cfg["vocab_size"]
    models = [m["base"], m["x"], m["y"], m["z"]]
    weights = [0.6, 0.3, 0.5]
    for key in (EMB, HEAD):
        exp = torch.empty_like(got[key], dtype=torch.float32)
        for t, i in vocab.items():
            rows = _expected_aligned(models, m["base"], t, key)
            b = rows[0]
            exp[i] = b + sum(w * (r - b) for w, r in zip(weights, rows[1:], strict=True))
        torch.testing.assert_close(got[key].float(), exp, atol=1e-6, rtol=1e-5)
    # a token only x has comes from x alone (its row is x's for every model); check one directly
    vx, tx = _rows(m["x"], EMB)
    vb, tb = _rows(m["base"], EMB)
    i = vocab["zebra_tok"]
    torch.testing.assert_close(got[EMB][i].float(), tx[vx["zebra_tok"]])
    # the merged model and its tokenizer load and run together
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok("zebra_tok <tool> hello", return_tensors="pt").input_ids
    assert int(ids.max()) < model.config.vocab_size
    assert torch.isfinite(model(ids).logits).all()
    meta = json.loads((out / "compress_merge.json").read_text())
    assert meta["tokenizer"]["source"] == "union" and meta["tokenizer"]["rows"] == len(vocab)


def test_linear_union_without_base_averages(vocab_models, tmp_path):
    """No base model: tokens shared by several models but missing in one get the mean of their rows."""
    m = vocab_models
    out = tmp_path / "out"
    merge({"merge_method": "linear", "tokenizer_source": "union",
           "models": [{"model": str(m[k]), "parameters": {"weight": w}} for k, w in (("x", 1.0), ("z", 2.0), ("y", 1.0))]},
          out)
    vocab = _tokenizer(out).get_vocab()
    got = state(out)[EMB].float()
    models = [m["x"], m["z"], m["y"]]
    for t in ("<tool>", "zebra_tok", "yak_tok", "<|y_special|>", next(iter(_tokenizer(m["z"]).get_vocab()))):
        rows = _expected_aligned(models, None, t, EMB)
        exp = (1.0 * rows[0] + 2.0 * rows[1] + 1.0 * rows[2]) / 4.0
        torch.testing.assert_close(got[vocab[t]], exp, atol=1e-6, rtol=1e-5)
    # a base-vocabulary token z lacks: mean of x and y (no base), as a full check over all rows
    exp = torch.empty_like(got)
    for t, i in vocab.items():
        rows = _expected_aligned(models, None, t, EMB)
        exp[i] = (rows[0] + 2 * rows[1] + rows[2]) / 4
    torch.testing.assert_close(got, exp, atol=1e-6, rtol=1e-5)


def test_base_and_model_tokenizer_source(vocab_models, tmp_path):
    m = vocab_models
    for source, tok_folder in (("base", m["base"]), (str(m["z"]), m["z"])):
        out = tmp_path / f"out_{tok_folder.name}"
        merge({"merge_method": "ties", "base_model": str(m["base"]), "tokenizer_source": source,
               "models": [{"model": str(m[k]), "parameters": {"weight": 0.5, "density": 1.0}} for k in "xz"]}, out)
        want = _tokenizer(tok_folder).get_vocab()
        assert _tokenizer(out).get_vocab() == want
        assert (out / "tokenizer.json").read_text() == (tok_folder / "tokenizer.json").read_text()
        got = state(out)[EMB].float()
        assert got.shape[0] == len(want)
        models = [m["base"], m["x"], m["z"]]
        for t, i in list(want.items())[::7]:
            b, x, z = _expected_aligned(models, m["base"], t, EMB)
            dx, dz = x - b, z - b
            # TIES at density 1: sign election on 0.5·δ, disjoint mean over agreeing models
            s = torch.where(0.5 * dx + 0.5 * dz >= 0, 1.0, -1.0)
            ax, az = (dx.sign() == s).float(), (dz.sign() == s).float()
            num = 0.5 * dx * ax + 0.5 * dz * az
            den = 0.5 * ax + 0.5 * az
            exp = b + num / torch.where(den == 0, torch.ones_like(den), den)
            torch.testing.assert_close(got[i], exp, atol=1e-6, rtol=1e-5)


def test_tied_union_stays_tied(tmp_path):
    base = make_tiny_model(tmp_path / "tb", "llama", layers=2, seed=0, tie_word_embeddings=True)
    x = _with_added(base, tmp_path / "tx", 1, ["zebra_tok"], ["<|x_special|>"])
    out = tmp_path / "out"
    merge({"merge_method": "slerp", "base_model": str(base), "tokenizer_source": "union",
           "models": [{"model": str(base)}, {"model": str(x)}], "parameters": {"t": 0.5}}, out)
    got = state(out)
    assert HEAD not in got
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and cfg["vocab_size"] == got[EMB].shape[0] == len(_tokenizer(x))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # the token only x has keeps x's row (slerp of a row with itself direction-wise is not per row,
    # so compare against the per-tensor slerp computed here)
    vb, tb = _rows(base, EMB)
    vx, tx = _rows(x, EMB)
    vo = _tokenizer(out).get_vocab()
    aligned_b = torch.stack([tb[vb[t]] if t in vb else tx[vx[t]] for t, _ in sorted(vo.items(), key=lambda p: p[1])])
    aligned_x = torch.stack([tx[vx[t]] for t, _ in sorted(vo.items(), key=lambda p: p[1])])
    a, b = aligned_b.double().flatten(), aligned_x.double().flatten()
    dot = float((a / a.norm()) @ (b / b.norm()))
    om = torch.arccos(torch.tensor(dot))
    exp = (torch.sin(0.5 * om) * aligned_b.double() + torch.sin(0.5 * om) * aligned_x.double()) / torch.sin(om)
    torch.testing.assert_close(got[EMB].double(), exp, atol=1e-6, rtol=1e-5)


def test_pad_to_multiple_of(vocab_models, tmp_path):
    m = vocab_models
    out = tmp_path / "out"
    merge({"merge_method": "linear", "tokenizer": {"source": "union", "pad_to_multiple_of": 64},
           "models": [{"model": str(m["base"])}, {"model": str(m["x"])}]}, out)
    n = len(_tokenizer(out).get_vocab())
    got = state(out)[EMB].float()
    assert got.shape[0] % 64 == 0 and got.shape[0] >= n
    # padding rows: each model's mean real row, merged (linear, equal weights)
    torch.testing.assert_close(got[n:], got[:n].mean(dim=0).expand(got.shape[0] - n, -1), atol=1e-6, rtol=1e-5)


def test_vocab_errors(vocab_models, tmp_path, capsys):
    m = vocab_models
    out = tmp_path / "out"
    code, _, err = run_cli(["merge", "--method", "task_arithmetic", "--base", str(m["base"]), str(m["x"]),
                            "-o", str(out)], capsys)
    assert code == 1 and "vocabulary sizes differ" in err and "tokenizer_source: union" in err
    assert nothing_written(out)
    r = write(tmp_path, f"merge_method: linear\ntokenizer_source: union\ntokenizer: {{source: base}}\n"
                        f"models:\n  - model: {m['x']}\n")
    code, _, err = run_cli(["merge", str(r), "-o", str(out)], capsys)
    assert code == 1 and "line 1" in err and "not both" in err
    r = write(tmp_path, f"merge_method: linear\ntokenizer:\n  source: union\n  tokens: {{foo: {{source: base}}}}\n"
                        f"models:\n  - model: {m['x']}\n  - model: {m['y']}\n")
    code, _, err = run_cli(["merge", str(r), "-o", str(out)], capsys)
    assert code == 1 and "tokens" in err and "line 4" in err
    # same sizes, different tokenizers (x and y add different tokens): not merged row by row
    code, _, err = run_cli(["merge", "--method", "linear", str(m["x"]), str(m["y"]), "-o", str(out)], capsys)
    assert code == 1 and "tokenizers of x and y differ" in err and "id 512" in err, err
    broken = tmp_path / "broken"
    shutil.copytree(m["y"], broken)
    (broken / "tokenizer.json").write_text("{not json")
    code, _, err = run_cli(["merge", "--method", "linear", str(m["x"]), str(broken), "-o", str(out)], capsys)
    assert code == 1 and "cannot read" in err, err
    r = write(tmp_path, f"merge_method: linear\ntokenizer_source: union\n"
                        f"models:\n  - model: {m['x']}\n  - model: {broken}\n")
    code, _, err = run_cli(["merge", str(r), "-o", str(out)], capsys)
    assert code == 1 and "cannot load the tokenizer" in err and "broken" in err
    assert nothing_written(out)
