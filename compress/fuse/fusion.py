"""Fusion of candidate distributions per sequence (FuseLLM §3.3; FuseChat pairwise fusion).

Candidates of a record: the pivot's own top-k (`distill_with_ref_model` in the official code) and
each aligned source (`aligned.py`), all sparse over pivot ids. With CE_c the candidate's cross-entropy
on the record's gold text:

- MinCE: the whole record takes the distributions of  c* = argmin_c CE_c  (ties: the first candidate,
  the pivot);
- AvgCE: P = Σ_c w_c P_c with  w = softmax(−CE)  over the candidates.

`ce_unit` "token" is the official per-token mean; it is not comparable across tokenizers (a
tokenizer with longer tokens has a higher CE per token for the same text), so "byte" (Σ NLL / UTF-8
bytes of the content) is the default for sources with another vocabulary.

The training loss is distill's `kd` on these targets: λ·CE(gold) + (1 − λ)·L_fuse, with L_fuse the soft
cross-entropy over the target's slots renormalised (FuseLLM, `topk_soft_ce`) or the KL over the
slots plus the rest bucket (`kl`: 0 when the student's distribution is the target).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compress.errors import CompressError
from compress.fuse.sparse import mix

FUSIONS = ("min-ce", "avg-ce")
CE_UNITS = ("token", "byte")


def mince_choice(ce: torch.Tensor) -> torch.Tensor:
    """Index of the lowest-CE candidate per record, ce [R, C]; ties to the lowest index."""
    return torch.argmin(ce, dim=-1)


def avgce_weights(ce: torch.Tensor) -> torch.Tensor:
    """w = softmax(−CE) over the candidates, ce [R, C]; rows sum to 1."""
    return torch.softmax(-ce.double(), dim=-1).float()


@dataclass
class Candidate:
    """One candidate's rows over the pivot's labels of every record (row-major), and its CE per record."""

    name: str
    ids: torch.Tensor  # int64 [N, k]
    logprobs: torch.Tensor  # fp32 [N, k]
    rest: torch.Tensor  # fp32 [N]
    ce: torch.Tensor  # fp32 [R]


class FusedTargets:
    """The fused sparse target of every pivot label row, built per record on demand."""

    def __init__(self, candidates: list[Candidate], offsets: torch.Tensor, fusion: str = "min-ce",
                 infer_choice: torch.Tensor | None = None, progressive=None):
        if fusion not in FUSIONS:
            raise CompressError(f"unknown fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
        if not candidates:
            raise CompressError("fusion needs at least one candidate")
        self.cands, self.offsets, self.fusion = candidates, offsets, fusion
        self.ce = torch.stack([c.ce.float() for c in candidates], -1)  # [R, C]
        self.choice = mince_choice(self.ce)
        self.weights = avgce_weights(self.ce)
        self.width = sum(c.ids.shape[1] for c in candidates) if fusion == "avg-ce" else max(
            c.ids.shape[1] for c in candidates)
        # ProFuser: the inference-mode choice per record and the schedule (`profuser.Progressive`)
        self.infer_choice, self.progressive = infer_choice, progressive
        if progressive is not None:
            if fusion != "min-ce" or infer_choice is None:
                raise CompressError("progressive selection needs --fusion min-ce and the inference-mode choices")
            self.width *= 2

    def chosen_counts(self) -> dict[str, int]:
        """How many records each candidate wins under MinCE."""
        n = torch.bincount(self.choice, minlength=len(self.cands))
        return {c.name: int(v) for c, v in zip(self.cands, n, strict=True)}

    def record(self, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids [n, width], log p [n, width], rest [n]) for the labels of record r."""
        a, b = int(self.offsets[r]), int(self.offsets[r + 1])
        if self.progressive is not None:
            ids, lp, rest = self._progressive(r, a, b)
        elif self.fusion == "min-ce":
            c = self.cands[int(self.choice[r])]
            ids, lp, rest = c.ids[a:b].long(), c.logprobs[a:b].float(), c.rest[a:b].float()
        else:
            parts = [(c.ids[a:b].long(), c.logprobs[a:b].float(), c.rest[a:b].float()) for c in self.cands]
            w = self.weights[r].log()[None, :].expand(b - a, -1)
            ids, lp, rest = mix(parts, w)
        pad = self.width - ids.shape[1]
        if pad < 0:
            raise CompressError(f"fused target of record {r} is wider than {self.width} slots")
        if pad > 0:
            ids = torch.cat([ids, ids[:, :1].expand(-1, pad)], -1)
            lp = torch.cat([lp, torch.full((lp.shape[0], pad), float("-inf"))], -1)
        return ids, lp, rest

    def _progressive(self, r: int, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ProFuser's target: the inference-mode choice, then 0.1·P_infer + P_train (normalised)."""
        w_infer, w_train = self.progressive.weights()
        ci, ct = int(self.infer_choice[r]), int(self.choice[r])
        if w_train == 0.0 or ci == ct:
            c = self.cands[ci if w_train == 0.0 else ct]
            return c.ids[a:b].long(), c.logprobs[a:b].float(), c.rest[a:b].float()
        parts = [(c.ids[a:b].long(), c.logprobs[a:b].float(), c.rest[a:b].float())
                 for c in (self.cands[ci], self.cands[ct])]
        w = torch.log(torch.tensor([[w_infer, w_train]])).expand(b - a, -1)
        return mix(parts, w)
