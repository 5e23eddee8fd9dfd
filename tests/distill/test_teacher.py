"""Teacher signals: cache round trip, cached == online loss, hash / tokenizer / reference checks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from compress.cli import main
from compress.data.preference import read_preference
from compress.distill.teacher import CachedTeacher, OnlineTeacher, check_same_vocab, write_cache
from compress.distill.train import DistillConfig, batch_loss
from compress.errors import CompressError
from compress.model import load, load_model
from tests.distill.conftest import make_pairs


@pytest.fixture(scope="module")
def setup(distill_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache")
    pairs = make_pairs(tmp / "pairs.jsonl", generated=True)
    teacher, tok = load(distill_models["teacher"], "cpu", "fp32")
    ref = load_model(distill_models["ref"], "cpu", "fp32")
    data = read_preference(pairs, tok, max_length=64)
    cache = write_cache(tmp / "cache", teacher, tok, data, ("chosen", "rejected", "generated"), 8,
                        str(distill_models["teacher"]), ref, str(distill_models["ref"]), batch_size=3)
    return teacher, ref, tok, data, cache, pairs


def test_cache_round_trip_layout(setup):
    teacher, ref, tok, data, cache, _ = setup
    meta = json.loads((cache / "cache.json").read_text())
    assert meta["k"] == 8 and set(meta["shards"]) == {"chosen", "rejected", "generated"}
    sh = load_file(str(cache / meta["shards"]["chosen"][0]))
    assert sh["ids"].dtype == torch.int32 and sh["logprobs"].dtype == torch.float16
    assert sh["rest_logprob"].dtype == torch.float32 and sh["offsets"].dtype == torch.int64
    n_tok = sum(len(e.responses["chosen"]) for e in data.examples)
    assert sh["ids"].shape == (n_tok, 8) and int(sh["offsets"][-1]) == n_tok
    total = sh["logprobs"].double().exp().sum(-1) + sh["rest_logprob"].double().exp()
    assert torch.allclose(total, torch.ones_like(total), atol=5e-3)  # fp16 storage
    # independent: the teacher's own full softmax at the first response token of pair 0
    ex = data.examples[0]
    seq = torch.tensor([ex.prompt + ex.responses["chosen"]])
    with torch.no_grad():
        logp = teacher(seq).logits[0, len(ex.prompt) - 1].log_softmax(-1)
    top = logp.topk(8)
    assert sh["ids"][0].tolist() == top.indices.tolist()
    assert torch.allclose(sh["logprobs"][0].float(), top.values, atol=2e-3)
    with torch.no_grad():
        rlogp = ref(seq).logits[0, len(ex.prompt) - 1].log_softmax(-1)
    assert torch.allclose(sh["ref_logprobs"][0].float(), rlogp[top.indices], atol=2e-3)
    assert sh["labels"][: len(ex.responses["chosen"])].tolist() == ex.responses["chosen"]


@pytest.mark.parametrize("method", ["kd", "dckd", "adpa"])
def test_cached_loss_equals_online_loss(distill_models, setup, method):
    teacher, ref, tok, data, cache, _ = setup
    student = load_model(distill_models["student"], "cpu", "fp32")
    from compress.distill.forward import response_logits

    cfg = DistillConfig(method=method, k=8)
    slots = ("generated",) if method == "adpa" else ("chosen", "rejected")
    cached = CachedTeacher(cache, data, tok, slots, need_ref=method == "adpa")
    online = OnlineTeacher(teacher, 8, ref if method == "adpa" else None)
    exs = data.examples[:5]
    with torch.no_grad():
        a, _ = batch_loss(cfg, lambda b: response_logits(student, b), exs, tok.pad_token_id, cached)
        b, _ = batch_loss(cfg, lambda b: response_logits(student, b), exs, tok.pad_token_id, online)
    assert float(a) == pytest.approx(float(b), abs=2e-3, rel=1e-3)


def test_cache_for_other_data_or_teacher_is_refused(distill_models, setup, tmp_path):
    _, _, tok, data, cache, pairs = setup
    other = read_preference(make_pairs(tmp_path / "other.jsonl", seed=5), tok, max_length=64)
    with pytest.raises(CompressError, match="other data"):
        CachedTeacher(cache, other, tok, ("chosen",))
    with pytest.raises(CompressError, match="made for other data"):
        CachedTeacher(cache, read_preference(pairs, tok, max_length=36), tok, ("chosen",))
    with pytest.raises(CompressError, match="not by"):
        CachedTeacher(cache, data, tok, ("chosen",), teacher_path=str(distill_models["ref"]))
    assert CachedTeacher(cache, data, tok, ("rejected",)).k == 8


def _swapped_tokenizer_model(src, dst):
    shutil.copytree(src, dst)
    tj = json.loads((dst / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (dst / "tokenizer.json").write_text(json.dumps(tj))
    return dst, a, b


def test_tokenizer_mismatch_names_first_differing_tokens(distill_models, pairs, tmp_path, capsys):
    bad, a, b = _swapped_tokenizer_model(distill_models["teacher"], tmp_path / "bad_teacher")
    from compress.model import load_tokenizer

    with pytest.raises(CompressError, match=r"id 300 is .* for the student but .* for the teacher"):
        check_same_vocab(load_tokenizer(distill_models["student"]), load_tokenizer(bad))
    rc = main(["distill", "train", str(distill_models["student"]), "--data", str(pairs), "--method", "kd",
               "--teacher", str(bad), "-o", str(tmp_path / "out"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "tokenizers differ: id 300" in err and not (tmp_path / "out").exists()


def test_adpa_without_reference_teacher_is_an_error(distill_models, pairs, tmp_path, capsys):
    base = ["distill", "train", str(distill_models["student"]), "--data", str(pairs), "--method", "adpa",
            "--max-length", "64", "-o", str(tmp_path / "out"), "--max-steps", "1"]
    assert main(base + ["--teacher", str(distill_models["teacher"])]) == 1
    assert "needs the reference teacher" in capsys.readouterr().err
    assert main(["distill", "cache-teacher", str(distill_models["teacher"]), "--data", str(pairs), "--max-length", "64",
                 "--slots", "generated", "--k", "4", "-o", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(base + ["--teacher-cache", str(tmp_path / "c")]) == 1
    assert "no reference-teacher log-probs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
