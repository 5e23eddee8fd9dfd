"""Token alignment between a pivot and a source tokenisation of the same text: byte offsets first, DTW
where the texts differ. Pure functions over spans and token byte strings; no model code.

FuseLLM / FuseChat align the two token sequences of a text with DTW over token strings (edit-distance
cost) and give pivot position i the source distribution at its DTW partner j when the partners "end
together" (FuseChat-2.0: `blending_token.endswith(base_token)`: the next tokens then start at the same
place, so the two distributions predict text from the same prefix). On identical text that rule is
exact with byte offsets and needs no DTW:

    the pivot label t (the token predicted at a position) takes the distribution that predicted the
    source label u with  start(u) = start(t)  (same prefix, same place), whatever their lengths;
    every other pivot label has no source distribution (its fallback is a one-hot on itself: the
    pivot's **next** token, FuseChat-2.0's fix of FuseLLM's off-by-one).

Spans between byte positions that are token boundaries on both sides ("segments") classify each pivot
label for the report: one_to_one (1 pivot : 1 source token, same span), one_to_many (1 : n),
many_to_one (n : 1), many_to_many (n : m), unaligned (no source token covers it: template or
special tokens, text one side cut by truncation).

Where the two contents differ (a chat template that trims the response, a normalising tokenizer),
byte offsets are matched through the equal blocks of the two byte strings (difflib), and the tokens
inside the differing blocks are aligned by DTW with an edit-distance cost (FuseLLM's rule there: a
pivot token paired with exactly one source token takes its distribution).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

KINDS = ("unaligned", "one_to_one", "one_to_many", "many_to_one", "many_to_many", "dtw")
UNALIGNED, ONE_TO_ONE, ONE_TO_MANY, MANY_TO_ONE, MANY_TO_MANY, DTW = range(len(KINDS))


@dataclass
class Alignment:
    """Per pivot label: `src` = index of the source label whose distribution it takes (−1: none), `kind`."""

    src: np.ndarray  # int64 [n_pivot]
    kind: np.ndarray  # int8 [n_pivot], codes of KINDS


def align_spans(p_start: np.ndarray, p_end: np.ndarray, s_start: np.ndarray, s_end: np.ndarray) -> Alignment:
    """Align pivot labels to source labels by byte spans in the same content (−1 marks a label outside it).

    O((n + m) log(n + m)) with numpy: common boundaries, segment ids by binary search, counts per segment."""
    p_start, p_end = np.asarray(p_start, np.int64), np.asarray(p_end, np.int64)
    s_start, s_end = np.asarray(s_start, np.int64), np.asarray(s_end, np.int64)
    n = len(p_start)
    src = np.full(n, -1, np.int64)
    kind = np.zeros(n, np.int8)
    pin, sin = p_start >= 0, s_start >= 0
    if not pin.any() or not sin.any():
        return Alignment(src, kind)
    s_idx = np.nonzero(sin)[0]
    ss, se = s_start[s_idx], s_end[s_idx]
    order = np.argsort(ss, kind="stable")
    s_idx, ss, se = s_idx[order], ss[order], se[order]
    lo, hi = ss.min(), se.max()
    p_idx = np.nonzero(pin & (p_start >= lo) & (p_end <= hi))[0]
    ps, pe = p_start[p_idx], p_end[p_idx]
    common = np.intersect1d(np.union1d(ps, pe), np.union1d(ss, se))
    # segment of a token: the last common boundary at or before its start
    pseg = np.searchsorted(common, ps, side="right") - 1
    sseg = np.searchsorted(common, ss, side="right") - 1
    nseg = len(common) + 1
    pc = np.bincount(pseg + 1, minlength=nseg)
    sc = np.bincount(sseg + 1, minlength=nseg)
    a, b = pc[pseg + 1], sc[pseg + 1]
    k = np.where(b == 0, UNALIGNED, np.where(a == 1, np.where(b == 1, ONE_TO_ONE, ONE_TO_MANY),
                                             np.where(b == 1, MANY_TO_ONE, MANY_TO_MANY)))
    kind[p_idx] = k
    at = np.searchsorted(ss, ps)
    ok = (at < len(ss)) & (ss[np.minimum(at, len(ss) - 1)] == ps) & (b > 0)
    src[p_idx[ok]] = s_idx[at[ok]]
    return Alignment(src, kind)


def edit_distance(a: str | bytes, b: str | bytes) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of unit cost)."""
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(a, b))


def dtw_pairs(a: list[bytes], b: list[bytes]) -> list[list[int]]:
    """DTW over two token lists with an edit-distance cost (FuseLLM's `dtw`, talcs/simpledtw):
    D(i, j) = c(i, j) + min(D(i−1, j), D(i, j−1), D(i−1, j−1)), backtracked from the last cell
    (ties: diagonal, then up, then left). Returns, per token of `a`, the indices of `b` on its path."""
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return [[] for _ in range(n)]
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    cost = np.asarray(cdist([x.decode("latin-1") for x in a], [y.decode("latin-1") for y in b],
                            scorer=Levenshtein.distance), dtype=np.float64)
    d = np.full((n + 1, m + 1), np.inf)
    d[0, 0] = 0.0
    for i in range(1, n + 1):
        row, prev = d[i], d[i - 1]
        for j in range(1, m + 1):
            row[j] = cost[i - 1, j - 1] + min(prev[j], row[j - 1], prev[j - 1])
    i, j = n, m
    pairs = [[] for _ in range(n)]
    while True:
        pairs[i - 1].append(j - 1)
        if i == 1 and j == 1:
            break
        opts = (d[i - 1, j - 1] if i > 1 and j > 1 else np.inf, d[i - 1, j] if i > 1 else np.inf,
                d[i, j - 1] if j > 1 else np.inf)
        move = int(np.argmin(opts))
        i, j = (i - 1, j - 1) if move == 0 else ((i - 1, j) if move == 1 else (i, j - 1))
    for p in pairs:
        p.reverse()
    return pairs


def content_bytes(tokens: list[bytes], start: np.ndarray, end: np.ndarray) -> bytes:
    """The content rebuilt from its tokens (start ≥ 0); a token clipped at the content's edge keeps the
    part inside it (its tail at the start of the content, its head elsewhere)."""
    out = []
    for t, s, e in zip(tokens, start, end, strict=True):
        if s >= 0:
            n = int(e - s)
            out.append(t[len(t) - n:] if s == 0 and n < len(t) else t[:n])
    return b"".join(out)


def align_texts(p_tokens: list[bytes], p_start: np.ndarray, p_end: np.ndarray,
                s_tokens: list[bytes], s_start: np.ndarray, s_end: np.ndarray) -> Alignment:
    """Alignment of two tokenisations of *different* contents: source byte offsets mapped into the pivot's
    through the equal blocks of the two contents; the tokens of each differing block aligned by DTW."""
    p_start, p_end = np.asarray(p_start, np.int64), np.asarray(p_end, np.int64)
    s_start, s_end = np.asarray(s_start, np.int64), np.asarray(s_end, np.int64)
    p_bytes, s_bytes = content_bytes(p_tokens, p_start, p_end), content_bytes(s_tokens, s_start, s_end)
    sm = difflib.SequenceMatcher(None, p_bytes, s_bytes, autojunk=False)
    pos = np.full(len(s_bytes) + 1, -1, np.int64)  # source byte position -> pivot byte position
    eq = np.zeros(len(s_bytes) + 1, np.int64)  # eq[j]: 1 when source byte j lies in an equal block
    blocks = []
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            pos[j1: j2 + 1] = np.arange(i1, i2 + 1)
            eq[j1:j2] = 1
        else:
            blocks.append((i1, i2, j1, j2))
    n_eq = np.concatenate([[0], np.cumsum(eq)])
    ms, me = np.full(len(s_start), -1, np.int64), np.full(len(s_start), -1, np.int64)
    ok = s_start >= 0
    ms[ok], me[ok] = pos[s_start[ok]], pos[s_end[ok]]
    good = (ms >= 0) & (me > ms)
    # a span maps only if every byte of it lies in an equal block, and the mapped span is as long
    good &= ok & (n_eq[np.maximum(s_end, 0)] - n_eq[np.maximum(s_start, 0)] == s_end - s_start)
    good &= (me - ms) == (s_end - s_start)
    ali = align_spans(p_start, p_end, np.where(good, ms, -1), np.where(good, me, -1))
    for i1, i2, j1, j2 in blocks:
        pi = [t for t in range(len(p_start)) if p_start[t] >= 0 and p_start[t] < max(i2, i1 + 1) and p_end[t] > i1]
        si = [u for u in range(len(s_start)) if s_start[u] >= 0 and s_start[u] < max(j2, j1 + 1) and s_end[u] > j1]
        if not pi or not si:
            continue
        pairs = dtw_pairs([p_tokens[t] for t in pi], [s_tokens[u] for u in si])
        used = np.bincount([j for p in pairs for j in p], minlength=len(si))
        for t, p in zip(pi, pairs, strict=True):
            if ali.src[t] >= 0:
                continue
            ali.kind[t] = DTW
            if len(p) == 1 and used[p[0]] == 1:
                ali.src[t] = si[p[0]]
    return ali


def coverage_counts(ali: Alignment) -> dict[str, int]:
    """Pivot labels per kind, and how many take a source distribution."""
    counts = np.bincount(ali.kind.astype(np.int64), minlength=len(KINDS))
    out = {k: int(c) for k, c in zip(KINDS, counts, strict=True)}
    out["with_source"] = int((ali.src >= 0).sum())
    out["pivot_tokens"] = len(ali.src)
    return out
