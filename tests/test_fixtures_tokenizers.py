"""The two tiny tokenizer kinds the cross-tokenizer tests rely on behave like their real counterparts."""

from __future__ import annotations

from tests.fixtures import tiny_sp_tokenizer, tiny_tokenizer


def test_sentencepiece_style_tokenizer_round_trips_with_byte_fallback():
    tok = tiny_sp_tokenizer()
    text = "The cat sat.\nNew line 123 = 45. 日本語 café 😀"
    ids = tok(text).input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "<bos>" and "<0x0A>" in pieces and "▁the" in tok.get_vocab()
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok("cat").input_ids[1:]) == "cat"


def test_byte_level_tokenizer_round_trips_without_bos():
    tok = tiny_tokenizer()
    text = "The cat sat.\nNew line 123 = 45. 日本語 café 😀"
    ids = tok(text).input_ids
    assert "Ċ" in tok.convert_ids_to_tokens(ids) and tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(ids)[0] == "T"  # no BOS added
