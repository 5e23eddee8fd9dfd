"""Vocabulary mapping: a source token id -> a pivot token id, on byte-normalised token strings.

Token strings are compared as the bytes they stand for (`tokens.TokenizerView`), so SentencePiece
`▁the` and byte-level `Ġthe` are the same string b" the", and `<0x0A>` and `Ċ` are both b"\\n".

- `exact` (FuseChat-2.0 `hard`, EM): the pivot token with the same bytes, else the mass is lost;
- `mined` (`soft`, MinED): exact if there is one, else the pivot token at the minimum edit distance
  (Levenshtein over bytes; ties: the lowest pivot id, the earlier BPE merge). FuseChat-2.0's code called
  `editdistance.eval(str, array)`, got one number, and so mapped every inexact token to id 0;
- `ms` (FuseChat-2.0 `default`): exact if there is one, else among the pivot tokens the source token
  was aligned with in the corpus (same start byte, `align.align_spans`) the one at the minimum edit
  distance, ties to the **most frequent** pair (the released code weighted the distance by
  sigmoid(count), so the rarer pair won); a token never aligned falls back to `mined`.

Maps are computed lazily, only for the source ids that occur (stored top-k and labels), and each id
once: never a source-vocabulary × pivot-vocabulary matrix. Special tokens (no bytes) map only EOS to
EOS. Routes: 0 lost, 1 exact, 2 edit distance (mined or statistics).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

VOCAB_MAPS = ("exact", "mined", "ms")
LOST, EXACT, EDIT = 0, 1, 2
ROUTES = ("lost", "exact", "edit")
_QUERY_CHUNK = 256


class VocabMap:
    """Source id -> (pivot id, route), computed on demand and cached in two arrays over the source vocabulary."""

    def __init__(self, pivot_view, source_view, kind: str = "mined", same_vocab: bool = False):
        if kind not in VOCAB_MAPS:
            raise ValueError(f"unknown vocabulary map {kind!r}: choose one of {', '.join(VOCAB_MAPS)}")
        self.kind, self.same = kind, same_vocab
        self.pview, self.sview = pivot_view, source_view
        pv = pivot_view.tokenizer.get_vocab()
        sv = source_view.tokenizer.get_vocab()
        self.n_src = max(sv.values()) + 1
        self.map = np.full(self.n_src, -2, np.int64)  # -2: not computed yet, -1: lost
        self.route = np.zeros(self.n_src, np.int8)
        ids = sorted(pv.values())
        self.p_bytes = {i: pivot_view.token_bytes(i) for i in ids}
        self.exact: dict[bytes, int] = {}
        for i in ids:
            b = self.p_bytes[i]
            if b and b not in self.exact:
                self.exact[b] = i
        self.choice_ids = np.asarray([i for i in ids if self.p_bytes[i]], np.int64)
        self.choices = [self.p_bytes[int(i)].decode("latin-1") for i in self.choice_ids]
        self.p_eos = pivot_view.tokenizer.eos_token_id
        self.s_eos = source_view.tokenizer.eos_token_id
        self.pairs: dict[int, Counter] = defaultdict(Counter)

    # ------------------------------------------------------------------ statistics (ms)
    def observe(self, source_labels: np.ndarray, pivot_labels: np.ndarray) -> None:
        """Count co-aligned (source label, pivot label) pairs: the statistics of `ms`."""
        for s, p in zip(source_labels.tolist(), pivot_labels.tolist(), strict=True):
            self.pairs[s][p] += 1

    # ------------------------------------------------------------------ lookup
    def lookup(self, source_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pivot ids, routes) of `source_ids` (any shape); −1 where the mass is lost."""
        flat = np.asarray(source_ids, np.int64).reshape(-1)
        todo = np.unique(flat[self.map[flat] == -2])
        if len(todo):
            self._compute(todo)
        return self.map[flat].reshape(np.shape(source_ids)), self.route[flat].reshape(np.shape(source_ids))

    def _compute(self, todo: np.ndarray) -> None:
        if self.same:
            self.map[todo], self.route[todo] = todo, EXACT
            return
        need_edit = []
        for s in todo.tolist():
            b = self.sview.token_bytes(s)
            if not b:
                ok = s == self.s_eos and self.p_eos is not None
                self.map[s], self.route[s] = (self.p_eos, EXACT) if ok else (-1, LOST)
            elif b in self.exact:
                self.map[s], self.route[s] = self.exact[b], EXACT
            elif self.kind == "exact":
                self.map[s], self.route[s] = -1, LOST
            elif self.kind == "ms" and self.pairs.get(s):
                self.map[s], self.route[s] = self._by_statistics(b, self.pairs[s]), EDIT
            else:
                need_edit.append(s)
        if need_edit:
            self._mine(np.asarray(need_edit, np.int64))

    def _by_statistics(self, b: bytes, seen: Counter) -> int:
        """Among co-aligned pivot tokens: minimum edit distance, then the most frequent pair, then the lowest id."""
        from compress.fuse.align import edit_distance

        cands = [(edit_distance(b, self.p_bytes[p]), -c, p) for p, c in seen.items() if self.p_bytes.get(p)]
        return min(cands)[2] if cands else -1

    def _mine(self, ids: np.ndarray) -> None:
        """Minimum edit distance to every pivot token, in chunks of queries (rapidfuzz, C++)."""
        from rapidfuzz.distance import Levenshtein
        from rapidfuzz.process import cdist

        for a in range(0, len(ids), _QUERY_CHUNK):
            chunk = ids[a: a + _QUERY_CHUNK]
            queries = [self.sview.token_bytes(int(s)).decode("latin-1") for s in chunk]
            d = cdist(queries, self.choices, scorer=Levenshtein.distance, dtype=np.int32, workers=1)
            best = np.argmin(d, axis=1)  # first minimum: the lowest pivot id
            self.map[chunk] = self.choice_ids[best]
            self.route[chunk] = EDIT

    def table(self) -> dict[str, np.ndarray]:
        """The computed part of the map: source ids, pivot ids (−1 lost), routes."""
        done = np.nonzero(self.map != -2)[0]
        return {"source_ids": done, "pivot_ids": self.map[done], "routes": self.route[done]}
