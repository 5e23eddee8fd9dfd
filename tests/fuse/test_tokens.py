"""Token bytes and fragment encoding of the two tokenizer kinds (tiny fixtures: byte-level BPE, SentencePiece)."""

from __future__ import annotations

import pytest

from compress.errors import CompressError
from compress.fuse.tokens import TokenizerView, clean, complete_prefix, utf8
from tests.fixtures import tiny_sp_tokenizer, tiny_tokenizer

TEXT = " The cat sat.\n\nNew line 123 = 45. 日本語 café 😀 end"


@pytest.mark.parametrize("make", [tiny_tokenizer, tiny_sp_tokenizer], ids=["bpe", "sp"])
def test_token_bytes_spell_the_text_exactly(make):
    tok = make()
    view = TokenizerView(tok)
    frag = view.encode_fragment(TEXT)
    assert view.ids_bytes(frag.ids) == TEXT.encode()
    assert frag.byte_ends[-1] == len(TEXT.encode())
    # each token's bytes are what the tokenizer itself decodes when the pieces are whole characters
    for i in frag.ids:
        b = view.token_bytes(i)
        if b.decode("utf-8", "ignore").encode() == b:
            assert tok.decode([i]) == b.decode()
    # special tokens stand for no bytes; a fragment never starts with BOS
    assert view.token_bytes(tok.eos_token_id) == b"" and frag.ids[0] != tok.bos_token_id


def test_sentencepiece_byte_fallback_tokens_are_bytes():
    view = TokenizerView(tiny_sp_tokenizer())
    ids = view.encode_fragment("😀").ids
    assert [view.backend.id_to_token(i) for i in ids] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert view.ids_bytes(ids) == "😀".encode()


@pytest.mark.parametrize("make", [tiny_tokenizer, tiny_sp_tokenizer], ids=["bpe", "sp"])
def test_invalid_bytes_round_trip_and_are_never_shown(make):
    view = TokenizerView(make())
    raw = b"ok \xb8\xb8 x \xf0\x9f"  # stray continuation bytes, then an unfinished 4-byte character
    text, used = complete_prefix(raw)
    assert used == len(raw) - 2 and utf8(text) == raw[:used]
    frag = view.encode_fragment(text)
    assert view.ids_bytes(frag.ids) == raw[:used]
    assert clean(text) == "ok  x " and "\ufffd" not in clean(text)


def test_text_spelling_a_special_token_is_text():
    view = TokenizerView(tiny_sp_tokenizer())
    frag = view.encode_fragment("a <eos> b")
    assert view.ids_bytes(frag.ids) == b"a <eos> b" and view.tokenizer.eos_token_id not in frag.ids


def test_a_tokenizer_that_rewrites_text_is_refused():
    from tokenizers import normalizers

    tok = tiny_tokenizer()
    tok = tok.__class__(tokenizer_object=tok.backend_tokenizer.__class__.from_str(tok.backend_tokenizer.to_str()))
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    with pytest.raises(CompressError, match="does not reproduce text"):
        TokenizerView(tok, "lower")
