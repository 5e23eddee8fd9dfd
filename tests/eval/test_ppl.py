"""Perplexity equals an independent computation: transformers' own causal-LM loss per window."""

from __future__ import annotations

import math

import pytest
import torch

import compress
from compress.data import load_windows
from compress.eval.ppl import window_nlls


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2"])
def test_ppl_matches_hf_loss(tiny_models, wiki_test, family):
    model, tok = compress.load(tiny_models[family], dtype="fp32")
    windows = load_windows(wiki_test, tok, seq_len=64)[:6]
    ours = window_nlls(model, windows, batch_size=4)
    with torch.no_grad():
        ref = torch.stack([model(input_ids=w[None], labels=w[None]).loss.float() for w in windows])
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    res = compress.perplexity(model, wiki_test, tokenizer=tok, seq_len=64, max_windows=6)
    assert res["ppl"] == pytest.approx(math.exp(ref.double().mean().item()), rel=1e-4)
    assert res["windows"] == 6 and res["tokens"] == 6 * 63


def test_chunked_head_equals_unchunked(tiny_llama, wiki_test):
    from compress.model.logits import decoder_of, token_nll

    model, tok = compress.load(tiny_llama, dtype="fp32")
    ids = load_windows(wiki_test, tok, seq_len=32)[:3]
    with torch.no_grad():
        h = decoder_of(model)(input_ids=ids).last_hidden_state
        a = token_nll(model, h, ids, rows_per_chunk=7)
        logits = model.lm_head(h)[:, :-1].float()
        b = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    torch.testing.assert_close(a.flatten(), b, rtol=1e-5, atol=1e-5)


def test_bf16_close_to_fp32(tiny_llama, wiki_test):
    a = compress.perplexity(tiny_llama, wiki_test, seq_len=64, max_windows=4, dtype="fp32")["ppl"]
    b = compress.perplexity(tiny_llama, wiki_test, seq_len=64, max_windows=4, dtype="bf16")["ppl"]
    assert math.isfinite(b) and abs(a - b) / a < 0.05


def test_window_count_follows_protocol(tiny_llama, wiki_test):
    from compress.data import read_documents

    _, tok = compress.load(tiny_llama)
    n_tokens = len(tok("\n\n".join(read_documents(wiki_test)))["input_ids"])
    res = compress.perplexity(tiny_llama, wiki_test, seq_len=512, max_windows=1)
    assert res["windows_available"] == n_tokens // 512
