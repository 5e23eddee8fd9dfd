"""Every dtype spelling - compress's fp32/bf16/fp16, torch's and mergekit's float32/bfloat16/float16,
torch dtypes - is accepted by the Python API and the eval commands, and means the same."""

from __future__ import annotations

import json

import pytest
import torch

import compress
from compress.cli import main
from compress.errors import CompressError


@pytest.fixture(scope="module")
def small_wiki(wiki_test, tmp_path_factory):
    """The first 300 lines of WikiText-2 test, under WikiText's file name."""
    p = tmp_path_factory.mktemp("wiki") / "wiki.test.raw"
    p.write_text("".join(wiki_test.read_text(encoding="utf-8").splitlines(keepends=True)[:300]), encoding="utf-8")
    return p


@pytest.mark.parametrize(("spelling", "dtype"), [("fp32", torch.float32), ("float32", torch.float32),
                                                 ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16),
                                                 ("FP16", torch.float16), ("float16", torch.float16),
                                                 (torch.bfloat16, torch.bfloat16)])
def test_load_accepts_both_spellings(tiny_llama, spelling, dtype):
    model, _ = compress.load(tiny_llama, dtype=spelling)
    assert next(model.parameters()).dtype == dtype


def test_perplexity_and_evaluate_accept_both_spellings(tiny_llama, small_wiki):
    kw = dict(seq_len=32, max_windows=2)
    a = compress.perplexity(tiny_llama, small_wiki, dtype="bf16", **kw)
    b = compress.perplexity(tiny_llama, small_wiki, dtype="bfloat16", **kw)
    assert a["ppl"] == b["ppl"] and a["dtype"] == b["dtype"] == "bfloat16"
    runs = [compress.evaluate(str(tiny_llama), "ppl", data=small_wiki, dtype=d, hash_models=False, **kw)
            for d in ("float32", "fp32", torch.float32)]
    assert {r["settings"]["dtype"] for r in runs} == {"fp32"}  # eval.json records one spelling
    assert len({r["models"][0]["results"]["ppl"]["ppl"] for r in runs}) == 1
    with pytest.raises(CompressError, match="unknown dtype 'float64'"):
        compress.perplexity(tiny_llama, small_wiki, dtype="float64", **kw)
    with pytest.raises(CompressError, match="unknown dtype 'float64'"):
        compress.evaluate(str(tiny_llama), "ppl", data=small_wiki, dtype="float64", **kw)


def test_eval_commands_accept_both_spellings(tiny_llama, small_wiki, capsys):
    args = ["--data", str(small_wiki), "--seq-len", "32", "--max-windows", "1", "--json"]
    assert main(["eval", "ppl", str(tiny_llama), *args, "--dtype", "bfloat16"]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "bfloat16"
    assert main(["eval", str(tiny_llama), "--tasks", "ppl", *args, "--dtype", "float32"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["settings"]["dtype"] == "fp32"
    assert main(["eval", "ppl", str(tiny_llama), *args, "--dtype", "float64"]) == 1
    assert capsys.readouterr().err.strip().startswith("error: ")
