"""Cool-Fusion with the real pair: SmolLM2-135M-Instruct (byte-level BPE, 49k, chat template) and
Gemma-3-270M (SentencePiece with byte fallback, 262k, base model without a chat template)."""

from __future__ import annotations

import pytest
import torch

from compress.fuse.boundary import is_token_boundary, is_word_boundary
from compress.fuse.cool_fusion import CoolFusionDecoder
from compress.fuse.tokens import clean, complete_prefix


@pytest.fixture(scope="module")
def smol(smollm2):
    from compress.model.load import load

    return load(smollm2)


@pytest.fixture(scope="module")
def gemma(gemma3):
    from compress.model.load import load

    return load(gemma3)


def test_smollm2_alone_and_as_two_copies_is_greedy_decoding_with_its_end_token(smol):
    model, tok = smol
    msgs = [{"role": "user", "content": "What is 2+3? Answer in one short sentence."}]
    ids = tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), add_special_tokens=False,
              return_tensors="pt").input_ids
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=40)[0, ids.shape[1]:]
    ref = ref.tolist()
    assert ref[-1] == tok.eos_token_id  # a full answer, ended by <|im_end|>
    out = CoolFusionDecoder([smol, smol], names=["a", "b"], max_new_tokens=40, rerank=True).generate(msgs)
    assert out["ids"]["a"] == ref and out["ids"]["b"] == ref and out["finish_reason"] == "eos"
    assert out["text"] == tok.decode(ref, skip_special_tokens=True)
    assert out["rerank"]["text"] == out["text"]


@pytest.mark.parametrize("prompt", [
    "Question: A shop sells 12 apples at $0.50 each and 3 melons at $2.25 each. How much money does it make?\nAnswer:",
    "日本の首都は東京です。大阪は",
])
def test_smollm2_and_gemma3_fuse_segment_by_segment(smol, gemma, prompt):
    dec = CoolFusionDecoder([smol, gemma], names=["smollm2", "gemma3"], max_new_tokens=20, chat=False)
    out = dec.generate(prompt, trace=True)
    text, segs = out["text"], out["segments"]
    assert text and "\ufffd" not in text and text == "".join(s["text"] for s in segs)
    for src in dec.sources:  # both models hold exactly the shared answer in their own tokens
        assert clean(complete_prefix(src.view.ids_bytes(out["ids"][src.name]))[0]) == text
    end = 0
    for s in segs:
        win = next(c for c in s["candidates"] if c["text"] == s["text"] and not c["eos"])
        if s["reason"] == "boundary" and win["next"]:
            at = end + len(s["text"])
            window = text[:end] + s["text"] + win["next"]
            assert is_word_boundary(s["text"], win["next"])
            assert all(is_token_boundary(src.view.offsets(window), at) for src in dec.sources)
        end += len(s["text"])
    assert sum(out["wins"].values()) + out["agreed"] == len(segs)
