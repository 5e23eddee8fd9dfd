"""TIES-Merging sign election and disjoint merge (Yadav et al. 2023, arXiv 2306.01708).

Given (already trimmed / dropped) task vectors δ̂_i and weights w_i:
  u_i = w_i · δ̂_i;  s = sign(Σ_i u_i) ("sum", ties to +1) or sign(Σ_i sign(u_i)) ("count");
  m_i = [sign(u_i) = s] (zeros never agree);
  θ = θ_b + λ · Σ_i m_i u_i / Σ_i m_i w_i   (divisor only if normalize; a zero divisor becomes 1).
Without consensus (`consensus=None`) this is task arithmetic on δ̂: θ_b + λ · Σ u_i (/ Σ w_i).
This one function is mergekit's "generalized task arithmetic" core shared by ties, dare_*,
breadcrumbs*, della*.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CONSENSUS = ("sum", "count")


def elect_sign(weighted: torch.Tensor, method: str = "sum") -> torch.Tensor:
    """Majority sign s ∈ {−1, +1} per entry of the stacked weighted deltas [N, ...]."""
    if method == "sum":
        total = weighted.sum(dim=0)
    elif method == "count":
        total = weighted.sign().sum(dim=0)
    else:
        raise ValueError(f"unknown consensus method {method!r}: use sum or count")
    return torch.where(total >= 0, 1.0, -1.0).to(weighted.dtype)


def merge_deltas(base: torch.Tensor, deltas: Sequence[torch.Tensor], weights: Sequence[float], *,
                 consensus: str | None = "sum", normalize: bool = True, lam: float = 1.0,
                 chunk: int = 1 << 20) -> torch.Tensor:
    """Combine sparsified task vectors with optional TIES sign consensus.

    Elementwise, so it runs over flat chunks of `chunk` entries: the stacked [N, chunk]
    temporaries stay small whatever the tensor size.
    """
    out = torch.empty_like(base)
    flat_out, flat_base = out.reshape(-1), base.reshape(-1)
    flats = [d.reshape(-1) for d in deltas]
    w = torch.tensor([float(x) for x in weights], dtype=base.dtype, device=base.device).reshape(-1, 1)
    for start in range(0, flat_base.numel(), chunk):
        sl = slice(start, start + chunk)
        weighted = torch.stack([f[sl] for f in flats]) * w
        if consensus is not None:
            s = elect_sign(weighted, consensus)
            mask = (weighted.sign() == s).to(base.dtype)
            mixed = (weighted * mask).sum(dim=0)
            divisor = (w * mask).sum(dim=0)
            divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
        else:
            mixed = weighted.sum(dim=0)
            divisor = w.sum(dim=0)
            divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
        if normalize:
            mixed = mixed / divisor
        if lam != 1:
            mixed = mixed * lam
        torch.add(flat_base[sl], mixed, out=flat_out[sl])
    return out
