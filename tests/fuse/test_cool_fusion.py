"""Cool-Fusion on two tiny models with different tokenizer kinds (byte-level BPE Llama, SentencePiece Gemma-3).

References are independent computations: `model.generate(do_sample=False)` for greedy equivalence, plain
forwards without cache for the perplexities, the boundary predicate on the final text."""

from __future__ import annotations

import math

import pytest
import torch

from compress.errors import CompressError
from compress.fuse.boundary import is_token_boundary, is_word_boundary
from compress.fuse.cool_fusion import Candidate, CoolFusionDecoder
from compress.fuse.tokens import TokenizerView, clean, complete_prefix

PROMPT = "The history of the city"


def greedy_ids(model, tok, prompt: str, n: int) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("which", ["tiny_bpe", "tiny_sp"])
def test_one_model_and_identical_copies_reproduce_greedy_decoding(which, request):
    model, tok = request.getfixturevalue(which)
    ref = greedy_ids(model, tok, PROMPT, 48)
    one = CoolFusionDecoder([(model, tok)], max_new_tokens=48).generate(PROMPT)
    assert one["ids"]["m0"] == ref and one["finish_reason"] == "length"
    assert one["text"] == clean(complete_prefix(TokenizerView(tok).ids_bytes(ref))[0])
    copies = CoolFusionDecoder([(model, tok)] * 3, max_new_tokens=48, rerank=True).generate(PROMPT, trace=True)
    assert all(copies["ids"][f"m{i}"] == ref for i in range(3))
    assert copies["text"] == one["text"] and copies["agreed"] == len(copies["segments"])
    assert copies["rerank"]["text"] == one["text"] and copies["rerank"]["chosen"] == "fused"


def test_end_token_ends_the_answer_as_in_generate(tiny_bpe):
    model, tok = tiny_bpe
    free = greedy_ids(model, tok, PROMPT, 30)
    stop_id = free[12]  # make a token the model writes an end token: generate stops at its first occurrence
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, stop_id]
    try:
        ref = greedy_ids(model, tok, PROMPT, 30)
        out = CoolFusionDecoder([(model, tok)] * 2, max_new_tokens=30, rerank=True).generate(PROMPT)
    finally:
        model.generation_config.eos_token_id = old
    assert ref[-1] == stop_id and len(ref) < 30
    assert out["ids"]["m0"] == ref and out["ids"]["m1"] == ref
    assert out["finish_reason"] == "eos" and out["rerank"]["text"] == out["text"]


@pytest.mark.parametrize("segment", ["aligned", "shortest"])
def test_fused_pair_invariants(tiny_bpe, tiny_sp, segment):
    dec = CoolFusionDecoder([tiny_bpe, tiny_sp], names=["bpe", "sp"], max_new_tokens=40, max_segment_tokens=8,
                            segment=segment)
    out = dec.generate(PROMPT, trace=True)
    text, segs = out["text"], out["segments"]
    assert "\ufffd" not in text
    assert text == "".join(s["text"] for s in segs)
    contested = [s for s in segs if not s["agree"]]
    assert contested and sum(out["wins"].values()) == len(contested)
    assert set(out["wins"]) == {"bpe", "sp"}
    views = {"bpe": TokenizerView(tiny_bpe[1]), "sp": TokenizerView(tiny_sp[1])}
    for name, view in views.items():  # every model's ids spell the shared answer
        assert clean(complete_prefix(view.ids_bytes(out["ids"][name]))[0]) == text
    end = 0
    for s in segs:  # a segment ends where its writer's next token starts a new word (a common token boundary)
        win = next(c for c in s["candidates"] if c["text"] == s["text"] and not c["eos"])
        if s["reason"] == "boundary" and win["next"]:
            assert is_word_boundary(s["text"], win["next"]), (s["text"], win["next"])
            window = text[:end] + s["text"] + win["next"]
            if segment == "aligned":
                assert all(is_token_boundary(v.offsets(window), end + len(s["text"])) for v in views.values())
        end += len(s["text"])
    for s in contested:  # the winner has the lowest mean PPL, ties to the first candidate
        scores = [c["score"] for c in s["candidates"]]
        best = min(range(len(scores)), key=lambda j: (scores[j], j))
        assert s["candidates"][best]["text"] == s["text"]
        for c in s["candidates"]:
            assert c["score"] == pytest.approx(sum(c["ppl"].values()) / 2)


def test_co_proposers_are_credited_in_backed_and_only_the_first_in_wins(tiny_bpe, tiny_sp):
    dec = CoolFusionDecoder([tiny_bpe, tiny_bpe, tiny_sp], names=["a", "b", "sp"], max_new_tokens=40,
                            max_segment_tokens=8)
    out = dec.generate(PROMPT, trace=True)
    contested = [s for s in out["segments"] if not s["agree"]]
    assert contested
    backed, wins = dict.fromkeys("a b sp".split(), 0), dict.fromkeys("a b sp".split(), 0)
    for s in contested:  # recount from the trace: the lowest mean score wins, ties to the first candidate
        best = min(s["candidates"], key=lambda c: c["score"])
        for name in best["models"]:
            backed[name] += 1
        wins[best["models"][0]] += 1
    assert out["backed"] == backed and out["wins"] == wins
    assert out["wins"]["b"] == 0 and out["backed"]["a"] == out["backed"]["b"]  # b always proposes what a does
    assert out["backed"]["sp"] == out["wins"]["sp"] and sum(out["wins"].values()) == len(contested)


@torch.no_grad()
def hand_ppl(model, ids: list[int], start: int) -> float:
    """exp(-mean log p(ids[i] | ids[:i]) for i >= start), one plain forward without cache."""
    logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    lps = [float(logp[i - 1, ids[i]]) for i in range(start, len(ids))]
    return math.exp(-sum(lps) / len(lps))


@pytest.mark.parametrize("scorer", [0, 1])
def test_scorer_matches_a_hand_computed_conditional_perplexity(tiny_bpe, tiny_sp, scorer):
    dec = CoolFusionDecoder([tiny_bpe, tiny_sp], names=["bpe", "sp"], max_new_tokens=40)
    st = dec._start(dec.sources[scorer], PROMPT, 40)
    model, view = dec.sources[scorer].model, dec.sources[scorer].view
    prompt = list(st.prompt)
    cands = [Candidate(" the city", False, "boundary", [0]), Candidate(" of", False, "boundary", [1]),
             Candidate("", True, "eos", [1])]
    scores, plans = dec._score(st, None, cands, "")
    for c, got in zip(cands[:2], scores[:2], strict=True):
        assert got == pytest.approx(hand_ppl(model, prompt + view.encode_fragment(c.text).ids, len(prompt)), rel=1e-4)
    eos = dec.sources[scorer].eos_id
    assert scores[2] == pytest.approx(hand_ppl(model, prompt + [eos], len(prompt)), rel=1e-4)
    # the loser takes " the city" from the scoring forward; its next logits are those of a fresh forward
    dec._accept(st, None, cands[0], plans[0], "")
    first = view.encode_fragment(" the city").ids
    assert st.ids == prompt + first
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([st.ids])).logits[0, -1].float()
    torch.testing.assert_close(st.logits, ref, atol=1e-4, rtol=1e-4)
    # second round: conditional on prompt + " the city"
    nxt = [Candidate(" was built", False, "boundary", [0])]
    (score,), _ = dec._score(st, None, nxt, " the city")
    ids = st.ids + view.encode_fragment(" was built").ids
    assert score == pytest.approx(hand_ppl(model, ids, len(st.ids)), rel=1e-4)


def test_rerank_is_the_argmin_of_mean_perplexity(tiny_bpe, tiny_sp):
    dec = CoolFusionDecoder([tiny_bpe, tiny_sp], names=["bpe", "sp"], max_new_tokens=24, rerank=True)
    out = dec.generate(PROMPT)
    rr = out["rerank"]
    assert [a["source"] for a in rr["answers"]] == ["fused", "bpe", "sp"]
    assert rr["answers"][0]["text"] == out["text"]
    assert {k: v["text"] for k, v in out["singles"].items()} == {a["source"]: a["text"] for a in rr["answers"][1:]}
    scores = [a["score"] for a in rr["answers"]]
    best = min(range(3), key=lambda j: (scores[j], j))
    assert rr["chosen"] == rr["answers"][best]["source"] and rr["text"] == rr["answers"][best]["text"]
    for src in dec.sources:  # each reported PPL is exp(-mean log p(answer | prompt)) under that model
        tok = src.tokenizer
        chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                       tokenize=False)
        prompt = tok(chat, add_special_tokens=False).input_ids
        for a in rr["answers"]:
            ids = prompt + src.view.encode_fragment(a["text"]).ids
            assert a["ppl"][src.name] == pytest.approx(hand_ppl(src.model, ids, len(prompt)), rel=1e-4)


def test_single_answers_are_the_greedy_answers(tiny_bpe, tiny_sp):
    out = CoolFusionDecoder([tiny_bpe, tiny_sp], names=["bpe", "sp"], max_new_tokens=24, rerank=True).generate(PROMPT)
    for name, pair in (("bpe", tiny_bpe), ("sp", tiny_sp)):
        alone = CoolFusionDecoder([pair], names=[name], max_new_tokens=24).generate(PROMPT)
        assert out["singles"][name]["text"] == alone["text"]
        assert alone["ids"][name] == greedy_ids(*pair, PROMPT, 24)


def test_stop_string_cuts_the_answer_and_its_segments(tiny_bpe):
    full = CoolFusionDecoder([tiny_bpe], max_new_tokens=40).generate(PROMPT)["text"]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    out = CoolFusionDecoder([tiny_bpe], max_new_tokens=40).generate(PROMPT, stop=[stop])
    assert out["finish_reason"] == "stop" and out["text"] == full[: full.index(stop)]
    assert "".join(s["text"] for s in out["segments"]) == out["text"]


def test_bad_input_is_one_error(tiny_bpe, tiny_sp):
    model, tok = tiny_sp
    with pytest.raises(CompressError, match="no model"):
        CoolFusionDecoder([])
    with pytest.raises(CompressError, match="max-new-tokens"):
        CoolFusionDecoder([tiny_bpe], max_new_tokens=0)
    with pytest.raises(CompressError, match="max-new-tokens"):
        CoolFusionDecoder([tiny_bpe]).generate(PROMPT, max_new_tokens=0)
    with pytest.raises(CompressError, match="longer than its context"):
        CoolFusionDecoder([tiny_bpe]).generate("the " * 600)
    plain = tok.__class__(tokenizer_object=tok.backend_tokenizer, bos_token="<bos>", eos_token="<eos>")
    dec = CoolFusionDecoder([tiny_bpe, (model, plain)], names=["bpe", "plain"], max_new_tokens=4)
    with pytest.raises(CompressError, match="plain has no chat template"):
        dec.generate([{"role": "user", "content": "hi"}])
    assert dec.generate("hi")["finish_reason"] in ("length", "eos")  # plain text: plain prompt for that model
