"""Word boundaries shared by several tokenizers: pure functions over strings and token offsets.

A text position `p` (a character index) is a *word boundary* of `text` when

    text[p-1] is not whitespace and (text[p] is whitespace
                                     or text[p-1] or text[p] belongs to an unspaced script)

i.e. a segment ends right before the whitespace that follows a word, or between two characters of a
script written without spaces (CJK ideographs, kana, Thai, ...), where every character boundary is a
word boundary. Positions are characters of a Python string, so a boundary never splits a UTF-8
character.

A position is a *token boundary* of a tokenisation when no token's character span [start, end)
straddles it (start < p < end). Byte-level tokenizers split one character over several tokens that
share the character's span; such a position is never a character index, so the test stays exact.
"""

from __future__ import annotations

from collections.abc import Sequence

# Scripts written without spaces between words (inclusive code point ranges).
UNSPACED_RANGES: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation (、。「」)
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF00, 0xFFEF),  # half- and full-width forms (，！？)
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)


def is_unspaced(ch: str) -> bool:
    """True for a character of a script written without spaces (CJK, kana, Thai, ...)."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in UNSPACED_RANGES)


def is_word_boundary(left: str, right: str) -> bool:
    """Is the junction of `left` (text before the position) and `right` (text after it) a word boundary?

    Only the last character of `left` and the first of `right` matter; an empty side is not a boundary.
    """
    if not left or not right:
        return False
    a, b = left[-1], right[0]
    if a.isspace():
        return False
    return b.isspace() or is_unspaced(a) or is_unspaced(b)


def word_boundaries(text: str, start: int = 0) -> list[int]:
    """All word-boundary positions p of `text` with start < p < len(text)."""
    return [p for p in range(start + 1, len(text)) if is_word_boundary(text[p - 1], text[p])]


def is_token_boundary(offsets: Sequence[tuple[int, int]], pos: int) -> bool:
    """True when no token span (start, end) in `offsets` straddles character position `pos`.

    Spans of special tokens (start == end) are ignored."""
    return not any(s < pos < e for s, e in offsets if e > s)


def last_words_start(text: str, k: int, max_chars: int | None = None) -> int:
    """Character index where the last `k` words of `text` begin (0 when it holds fewer).

    A word starts at a non-whitespace character that follows whitespace, or after a character of an
    unspaced script (each such character counts as a word). `max_chars` caps how far back the start may
    lie: text without spaces is one long word."""
    if k <= 0:
        return len(text)
    seen = 0
    p = len(text)
    while p > 0:
        p -= 1
        if text[p].isspace():
            continue
        prev = text[p - 1] if p > 0 else ""
        if p == 0 or prev.isspace() or is_unspaced(prev) or is_unspaced(text[p]):
            seen += 1
            if seen == k:
                break
    start = p
    if max_chars is not None:
        start = max(start, len(text) - max_chars)
    return start
