"""Sparse next-token distributions: k (id, log p) slots per position plus the log of the remaining mass.

The layout of the distill teacher cache (`ids` [N, k], `logprobs` [N, k], `rest` [N]). An empty slot
has log p = −inf and repeats a real id of its row, so gathers stay in range and it weighs nothing.
Nothing here is ever of size positions × vocabulary.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def onehot(labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All mass on `labels` [N]: ids [N, k] (the label repeated), log p [0, −inf, ...], rest −inf."""
    n = labels.shape[0]
    ids = labels.to(torch.int64)[:, None].expand(n, k).contiguous()
    lp = torch.full((n, k), NEG_INF)
    lp[:, 0] = 0.0
    return ids, lp, torch.full((n,), NEG_INF)


def merge_duplicates(ids: torch.Tensor, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold slots that hold the same id into one: log p = logsumexp over them; freed slots get −inf.

    Rows are sorted by id (descending log p within an id first), duplicates found by comparing
    neighbours, and their masses summed with a scatter over the first slot of each run."""
    if ids.shape[-1] <= 1:
        return ids, logprobs
    sid, order = torch.sort(ids, dim=-1, stable=True)
    slp = logprobs.gather(-1, order)
    new = torch.ones_like(sid, dtype=torch.bool)
    new[:, 1:] = sid[:, 1:] != sid[:, :-1]
    run = new.long().cumsum(-1) - 1  # index of the run each slot belongs to
    m = torch.full_like(slp, NEG_INF).scatter_reduce(-1, run, slp, "amax", include_self=True)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.zeros_like(slp).scatter_add(-1, run, (slp - m_safe.gather(-1, run)).exp())
    total = torch.where(s > 0, s.log() + m_safe, torch.full_like(s, NEG_INF))
    first_id = torch.zeros_like(sid).scatter_reduce(-1, run, sid, "amax", include_self=False)
    n_runs = new.sum(-1, keepdim=True)
    slot = torch.arange(ids.shape[-1], device=ids.device).expand_as(sid)
    live = slot < n_runs
    out_ids = torch.where(live, first_id, sid[:, :1].expand_as(sid))
    out_lp = torch.where(live, total, torch.full_like(total, NEG_INF))
    return out_ids, out_lp


def mix(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], log_weights: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Σ_c w_c P_c of C sparse distributions (log_weights [N, C], each row summing to 1 in probability):
    the union of their slots with duplicates merged, and the weighted rests."""
    ids = torch.cat([p[0] for p in parts], -1)
    lp = torch.cat([p[1] + log_weights[:, c: c + 1] for c, p in enumerate(parts)], -1)
    rest = torch.logsumexp(torch.stack([p[2] + log_weights[:, c] for c, p in enumerate(parts)], -1), -1)
    ids, lp = merge_duplicates(ids, lp)
    return ids, lp, rest


def topk_rows(ids: torch.Tensor, logprobs: torch.Tensor, rest: torch.Tensor, k: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the k most probable slots of each row; the mass of the others joins the rest."""
    if ids.shape[-1] <= k:
        return ids, logprobs, rest
    top, at = torch.topk(logprobs, k, dim=-1)
    dropped = logprobs.scatter(-1, at, NEG_INF)
    rest = torch.logsumexp(torch.stack([rest, torch.logsumexp(dropped, -1)], -1), -1)
    return ids.gather(-1, at), top, rest
