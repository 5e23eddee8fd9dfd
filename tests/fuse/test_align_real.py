"""Alignment of the real SmolLM2 (byte-level BPE, 49k, no BOS added) and Gemma-3 (SentencePiece, 262k, BOS)
tokenizers against spans computed by hand, and their vocabulary maps (tokenizers only, no weights)."""

from __future__ import annotations

import numpy as np
import pytest

from compress.fuse.align import MANY_TO_ONE, ONE_TO_ONE, align_spans, edit_distance
from compress.fuse.records import PLAIN_NAME, Record, Renderer
from compress.fuse.vocabmap import EDIT, EXACT, LOST, VocabMap


@pytest.fixture(scope="module")
def pair(smollm2, gemma3):
    from compress.model import load_tokenizer

    return Renderer(load_tokenizer(smollm2), "smollm2"), Renderer(load_tokenizer(gemma3), "gemma3")


def _toks(r: Renderer, ids):
    return [r.tok.convert_ids_to_tokens(int(i)) for i in ids]


def test_text_record_spans_by_hand(pair):
    smol, gemma = pair
    rec = Record(1, 0, text="Hi café 日本\n\nx")
    p, s = smol.render(rec), gemma.render(rec)
    # SmolLM2 adds no BOS: its first token is context only; Gemma's <bos> is its prompt
    assert _toks(smol, p.prompt) == ["Hi"] and _toks(gemma, s.prompt) == ["<bos>"]
    # SmolLM2 splits 日 (E6 97 A5) over three byte-level tokens, the first with the space
    assert _toks(smol, p.labels) == ["ĠcafÃ©", "Ġæ", "Ĺ", "¥", "æľ¬", "Ċ", "Ċ", "x"]
    assert list(zip(p.starts, p.ends, strict=True)) == [(2, 8), (8, 10), (10, 11), (11, 12), (12, 15), (15, 16), (16, 17), (17, 18)]
    assert _toks(gemma, s.labels) == ["Hi", "▁café", "▁日本", "\n\n", "x"]
    assert list(zip(s.starts, s.ends, strict=True)) == [(0, 2), (2, 8), (8, 15), (15, 17), (17, 18)]
    ali = align_spans(np.array(p.starts), np.array(p.ends), np.array(s.starts), np.array(s.ends))
    assert ali.src.tolist() == [1, 2, -1, -1, -1, 3, -1, 4]
    assert ali.kind.tolist() == [ONE_TO_ONE] + [MANY_TO_ONE] * 4 + [MANY_TO_ONE] * 2 + [ONE_TO_ONE]


def test_byte_fallback_tokens_align(pair):
    smol, gemma = pair
    rec = Record(1, 0, text="z\u0378 y")  # an unassigned code point: Gemma spells it with <0xCD><0xB8>
    p, s = smol.render(rec), gemma.render(rec)
    assert _toks(gemma, s.labels)[:3] == ["z", "<0xCD>", "<0xB8>"]
    assert list(zip(s.starts, s.ends, strict=True))[:3] == [(0, 1), (1, 2), (2, 3)]
    ali = align_spans(np.array(p.starts), np.array(p.ends), np.array(s.starts), np.array(s.ends))
    # every SmolLM2 label starting where a Gemma label starts takes that distribution
    for t, u in enumerate(ali.src):
        if u >= 0:
            assert s.starts[u] == p.starts[t]
        else:
            assert p.starts[t] not in s.starts


def test_chat_records_own_template_and_plain(pair):
    smol, gemma = pair
    rec = Record(1, 0, prompt=[{"role": "user", "content": "2+2?"}], response="It is 4.\nSure.")
    p, s = smol.render(rec), gemma.render(rec)
    assert smol.template_name == "own" and gemma.template_name == PLAIN_NAME
    # SmolLM2: the response is followed by <|im_end|> and "\n" (template text outside the content)
    assert _toks(smol, p.labels)[-2:] == ["<|im_end|>", "Ċ"] and p.starts[-2:] == [-1, -1]
    assert _toks(gemma, s.labels)[-1] == "<eos>" and s.starts[-1] == -1
    assert smol.tok.decode(p.prompt).endswith("<|im_start|>assistant\n")
    assert gemma.tok.decode(gemma.render(rec).prompt).startswith("<bos>User: 2+2?\n\nAssistant: ")
    content = rec.response.encode()
    for r, x in ((smol, p), (gemma, s)):
        got = b"".join(r.view.token_bytes(t)[: e - b] for t, b, e in zip(x.labels, x.starts, x.ends, strict=True) if b >= 0)
        assert got == content


def test_vocab_maps_real(pair):
    smol, gemma = pair
    exact = VocabMap(smol.view, gemma.view, "exact")
    g = gemma.tok.get_vocab()
    sv = smol.tok.get_vocab()
    ids = np.array([g["▁the"], g["<0x0A>"], g["\n\n"], gemma.tok.eos_token_id, g["<start_of_turn>"]])
    pid, route = exact.lookup(ids)
    assert pid[:3].tolist() == [sv["Ġthe"], sv["Ċ"], sv["ĊĊ"]]
    assert pid[3] == smol.tok.eos_token_id  # EOS to EOS
    assert pid[4] == -1 and route[4] == LOST
    assert route[:4].tolist() == [EXACT] * 4
    # a Gemma token with no SmolLM2 twin: mined maps it to the pivot token at the minimum edit distance,
    # never to id 0 (FuseChat-2.0's editdistance.eval(str, array) bug)
    mined = VocabMap(smol.view, gemma.view, "mined")
    word = next(t for t in ("▁Unterstützung", "▁Schmetterling", "▁желательно") if t in g)
    tb = gemma.view.token_bytes(g[word])
    assert tb not in mined.exact
    pid, route = mined.lookup(np.array([g[word]]))
    assert route[0] == EDIT and pid[0] != 0
    best = min(edit_distance(tb.decode("latin-1"), smol.view.token_bytes(i).decode("latin-1"))
               for i in mined.choice_ids.tolist())
    assert edit_distance(tb.decode("latin-1"), smol.view.token_bytes(int(pid[0])).decode("latin-1")) == best
