"""Token alignment by byte spans, DTW where the texts differ, sparse distribution helpers (pure functions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compress.fuse.align import (
    DTW,
    MANY_TO_MANY,
    MANY_TO_ONE,
    ONE_TO_MANY,
    ONE_TO_ONE,
    UNALIGNED,
    align_spans,
    align_texts,
    dtw_pairs,
)
from compress.fuse.sparse import merge_duplicates, mix, onehot, topk_rows


def _spans(lengths, start=0):
    s, out_s, out_e = start, [], []
    for n in lengths:
        if n is None:  # a special token: no bytes
            out_s.append(-1)
            out_e.append(-1)
            continue
        out_s.append(s)
        out_e.append(s + n)
        s += n
    return np.array(out_s), np.array(out_e)


def test_identical_tokenisations_align_one_to_one():
    ps, pe = _spans([3, 1, 4, 2])
    ali = align_spans(ps, pe, ps, pe)
    assert ali.src.tolist() == [0, 1, 2, 3]
    assert set(ali.kind.tolist()) == {ONE_TO_ONE}


def test_segments_by_hand():
    # content "abcdefghij" (10 bytes)
    # pivot : [ab][c][def][g][h][ij]   source : [abc][de][f][gh][ij]
    ps, pe = _spans([2, 1, 3, 1, 1, 2])
    ss, se = _spans([3, 2, 1, 2, 2])
    ali = align_spans(ps, pe, ss, se)
    # common boundaries: 0, 3, 6, 8, 10 -> segments [0,3) 2:1, [3,6) 1:2, [6,8) 2:1, [8,10) 1:1
    assert ali.kind.tolist() == [MANY_TO_ONE, MANY_TO_ONE, ONE_TO_MANY, MANY_TO_ONE, MANY_TO_ONE, ONE_TO_ONE]
    # the distribution predicting the source token that starts at the same byte
    assert ali.src.tolist() == [0, -1, 1, 3, -1, 4]


def test_many_to_many_and_specials_and_uncovered_tail():
    # pivot [ab][cd] <special> [ef][g]  ; source [a][bc][d][e] (source cut after 5 bytes)
    ps, pe = _spans([2, 2, None, 2, 1])
    ss, se = _spans([1, 2, 1, 1])
    ali = align_spans(ps, pe, ss, se)
    assert ali.kind.tolist() == [MANY_TO_MANY, MANY_TO_MANY, UNALIGNED, UNALIGNED, UNALIGNED]
    assert ali.src.tolist() == [0, -1, -1, -1, -1]


def test_source_labels_starting_later_bos_one_side():
    # the pivot predicts from byte 0, the source's first content token is its prompt (labels from byte 2)
    ps, pe = _spans([2, 3, 1])
    ss, se = _spans([3, 1], start=2)
    ali = align_spans(ps, pe, ss, se)
    assert ali.src.tolist() == [-1, 0, 1]
    assert ali.kind.tolist() == [UNALIGNED, ONE_TO_ONE, ONE_TO_ONE]


def _ref_dtw(a, b):
    """FuseLLM's rule written out: full matrix, backtrack preferring diagonal, up, left."""
    import rapidfuzz.distance.Levenshtein as L

    n, m = len(a), len(b)
    d = [[math.inf] * (m + 1) for _ in range(n + 1)]
    d[0][0] = 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = L.distance(a[i - 1], b[j - 1]) + min(d[i - 1][j], d[i][j - 1], d[i - 1][j - 1])
    path, i, j = [], n, m
    while (i, j) != (1, 1):
        path.append((i - 1, j - 1))
        opts = [d[i - 1][j - 1] if i > 1 and j > 1 else math.inf, d[i - 1][j] if i > 1 else math.inf,
                d[i][j - 1] if j > 1 else math.inf]
        mv = opts.index(min(opts))
        i, j = (i - 1, j - 1) if mv == 0 else ((i - 1, j) if mv == 1 else (i, j - 1))
    path.append((0, 0))
    return sorted(path)


def test_dtw_identical_is_diagonal_and_matches_reference():
    toks = [b" the", b" cat", b" sat"]
    assert dtw_pairs(toks, toks) == [[0], [1], [2]]
    a = [b" un", b"believ", b"able", b"!"]
    b = [b" unbel", b"iev", b"able", b"!", b"!"]
    pairs = dtw_pairs(a, b)
    got = sorted((i, j) for i, js in enumerate(pairs) for j in js)
    assert got == _ref_dtw([x.decode() for x in a], [y.decode() for y in b])


def test_texts_that_differ_use_offsets_then_dtw():
    # pivot content "Hello world  " (two trailing spaces), source's template trimmed it: "Hello world"
    p = [b"Hello", b" world", b"  "]
    s = [b"Hello", b" wor", b"ld"]
    ps, pe = _spans([5, 6, 2])
    ss, se = _spans([5, 4, 2])
    ali = align_texts(p, ps, pe, s, ss, se)
    assert ali.src.tolist()[:2] == [0, 1]
    assert ali.kind.tolist()[:2] == [ONE_TO_ONE, ONE_TO_MANY]
    # the trailing block exists only on the pivot side: nothing to pair
    assert ali.src[2] == -1
    # a substituted word: DTW pairs the differing tokens one to one
    p = [b"I", b" like", b" tea", b"."]
    s = [b"I", b" like", b" tee", b"."]
    ps, pe = _spans([1, 5, 4, 1])
    ali = align_texts(p, ps, pe, s, ps, pe)
    assert ali.src.tolist() == [0, 1, 2, 3]
    assert ali.kind[2] == DTW


def test_onehot_merge_mix_topk():
    ids, lp, rest = onehot(torch.tensor([5, 7]), 3)
    assert ids.tolist() == [[5, 5, 5], [7, 7, 7]] and lp[:, 0].tolist() == [0, 0] and torch.isinf(lp[:, 1:]).all()
    assert torch.isinf(rest).all()
    ids = torch.tensor([[3, 1, 3, 2]])
    lp = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.15]]))
    mi, ml = merge_duplicates(ids, lp)
    got = {int(i): float(p) for i, p in zip(mi[0], ml[0].exp(), strict=True) if p > 0}
    assert got == pytest.approx({1: 0.2, 2: 0.15, 3: 0.4})
    assert int((ml[0] > float("-inf")).sum()) == 3
    # mixture of two distributions with weights .25/.75
    a = (torch.tensor([[1, 2]]), torch.log(torch.tensor([[0.5, 0.3]])), torch.log(torch.tensor([0.2])))
    b = (torch.tensor([[2, 3]]), torch.log(torch.tensor([[0.6, 0.4]])), torch.tensor([float("-inf")]))
    w = torch.log(torch.tensor([[0.25, 0.75]]))
    ids, lp, rest = mix([a, b], w)
    got = {int(i): float(p) for i, p in zip(ids[0], lp[0].exp(), strict=True) if p > 0}
    assert got == pytest.approx({1: 0.125, 2: 0.25 * 0.3 + 0.75 * 0.6, 3: 0.3})
    assert float(rest.exp()) == pytest.approx(0.05)
    ids, lp, rest = topk_rows(ids, lp, rest, 1)
    assert ids[0, 0] == 2 and float(rest.exp()) == pytest.approx(0.05 + 0.125 + 0.3)
