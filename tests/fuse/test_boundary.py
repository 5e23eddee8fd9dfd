"""The word-boundary predicate and the token-boundary test, on real tokenizer strings."""

from __future__ import annotations

import pytest

from compress.fuse.boundary import (
    is_token_boundary,
    is_unspaced,
    is_word_boundary,
    last_words_start,
    word_boundaries,
)
from compress.fuse.tokens import TokenizerView, complete_prefix

TEXT = "Janet has 12.5 eggs, $18 each.\n\n日本語です 😀 end"


def test_word_boundaries_of_english_math_newlines_and_cjk():
    got = word_boundaries(TEXT)
    cuts = [TEXT[:p] for p in got]
    assert cuts[:6] == ["Janet", "Janet has", "Janet has 12.5", "Janet has 12.5 eggs,", "Janet has 12.5 eggs, $18",
                        "Janet has 12.5 eggs, $18 each."]
    # CJK: every character boundary; the last CJK character before a space too; the emoji is one word
    assert [TEXT[p - 1] for p in got[6:]] == ["日", "本", "語", "で", "す", "😀"]
    # never inside "12.5" or "$18", never after whitespace
    assert all(not TEXT[p - 1].isspace() for p in got)
    assert 12 not in got and 13 not in got and 22 not in got


@pytest.mark.parametrize("left,right,expected", [
    ("has", " eggs", True), ("12", ".5", False), ("$", "18", False), ("each.", "\n\n", True),
    ("each.", "\nNext", True), ("。", "次", True), ("a", "日", True), ("日", "a", True), (" ", "x", False),
    ("x", "", False), ("", " x", False), ("😀", " end", True), ("word", "\t", True),
])
def test_is_word_boundary(left, right, expected):
    assert is_word_boundary(left, right) is expected


def test_unspaced_scripts():
    assert all(is_unspaced(c) for c in "日本語ですカタカナ。，ไทย")
    assert not any(is_unspaced(c) for c in "aé1$ 😀\n")


def test_last_words_start():
    assert "Janet has 12.5 eggs, $18 each."[last_words_start("Janet has 12.5 eggs, $18 each.", 2):] == "$18 each."
    assert last_words_start("one two", 4) == 0
    assert "x 日本語"[last_words_start("x 日本語", 2):] == "本語"
    assert len("a" * 100) - last_words_start("a" * 100, 4, max_chars=64) == 64


@pytest.fixture(scope="module")
def views(smollm2, gemma3):
    from compress.model.load import load_tokenizer

    return {"smollm2": TokenizerView(load_tokenizer(smollm2)), "gemma3": TokenizerView(load_tokenizer(gemma3))}


def test_word_boundaries_are_token_boundaries_in_english_and_math(views):
    english = [p for p in word_boundaries(TEXT) if p <= TEXT.index("日")]
    for name, view in views.items():
        offs = view.offsets(TEXT)
        assert all(is_token_boundary(offs, p) for p in english), name


def test_cjk_boundaries_differ_between_real_tokenizers(views):
    """Gemma writes 日本語 and です as single tokens; SmolLM2 splits them into byte tokens per character:
    only the aligned positions (common to both) may end a segment."""
    cjk = [p for p in word_boundaries(TEXT) if TEXT.index("日") < p <= TEXT.index("す") + 1]
    smol = {p for p in cjk if is_token_boundary(views["smollm2"].offsets(TEXT), p)}
    gem = {p for p in cjk if is_token_boundary(views["gemma3"].offsets(TEXT), p)}
    after = lambda s: TEXT.index(s) + len(s)  # noqa: E731
    assert smol == set(cjk)
    assert gem == {after("日本語"), after("です")}


def test_emoji_split_across_byte_tokens_never_gives_a_replacement_character(views):
    smol = views["smollm2"]
    frag = smol.encode_fragment(" 😀 end")
    pieces = [smol.token_bytes(i) for i in frag.ids]
    assert b"".join(pieces) == " 😀 end".encode()
    assert any(len(p) and not p.decode("utf-8", "ignore") == p.decode("utf-8", "replace") for p in pieces)
    for n in range(len(frag.ids) + 1):  # every token prefix decodes to whole characters only
        text, used = complete_prefix(b"".join(pieces[:n]))
        assert "\ufffd" not in text and text.encode() == b"".join(pieces[:n])[:used]
    # the position between the space and the emoji lies inside SmolLM2's "Ġ + first emoji bytes" token
    assert not is_token_boundary(smol.offsets(" 😀 end"), 1)
    assert is_token_boundary(views["gemma3"].offsets(" 😀 end"), 2)
