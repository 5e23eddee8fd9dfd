"""TIES-Merging sign election and disjoint merge (Yadav et al. 2023, arXiv 2306.01708).

Given (already trimmed / dropped) task vectors δ̂_i and weights w_i:
  u_i = w_i · δ̂_i;  s = sign(Σ_i u_i) ("sum", ties to +1) or sign(Σ_i sign(u_i)) ("count");
  m_i = [sign(u_i) = s] (zeros never agree);
  θ = θ_b + λ · Σ_i m_i u_i / Σ_i m_i w_i   (divisor only if normalize; a zero divisor becomes 1).
Without consensus (`consensus=None`) this is task arithmetic on δ̂: θ_b + λ · Σ u_i (/ Σ w_i).
`merge_sparse` is the consensus combine of ties, dare_ties, breadcrumbs_ties and della
(`task_arithmetic.generalized_task_arithmetic`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compress.merge.methods.stream import Sparse, f32, spans

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


def merge_sparse(base: torch.Tensor, inputs: Sequence[torch.Tensor], plans: Sequence[Sparse],
                 weights: Sequence[float], *, consensus: str | None = "sum", normalize: bool = True,
                 lam: float = 1.0, out_dtype: torch.dtype | None = None,
                 device: torch.device | None = None) -> torch.Tensor:
    """TIES combine of δ_i = inputs_i − base sparsified by `plans`, built chunk by chunk.

    The combine is elementwise: inputs stay in their stored dtype, each chunk of δ_i is formed in
    fp32, sparsified (the plans hold whole-tensor selections) and combined, and the result chunk is
    written in `out_dtype`; the [N, chunk] temporaries stay small whatever the tensor size.
    """
    dev = device or base.device
    out = torch.empty(base.shape, dtype=out_dtype or torch.float32)
    flat_out = out.reshape(-1)
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32, device=dev).reshape(-1, 1)
    fast = consensus == "sum" and all(float(x) >= 0 for x in weights)
    for sl in spans(base.numel()):
        b = f32(base, sl, dev)
        ds = [p.apply(f32(x, sl, dev) - b, sl) for x, p in zip(inputs, plans, strict=True)]
        mixed = _combine_sum(b, ds, weights, normalize, lam) if fast else _combine(b, ds, w, consensus, normalize, lam)
        flat_out[sl] = mixed.to(out.dtype)
    return out


def _combine_sum(b: torch.Tensor, ds: list[torch.Tensor], weights: Sequence[float], normalize: bool,
                 lam: float) -> torch.Tensor:
    """`_combine` with "sum" consensus and weights ≥ 0, in fewer passes (consumes `ds`).

    u_i = w_i δ_i agrees with s = sign(Σ u_i) exactly when s·u_i > 0, so
    Σ_i m_i u_i = s · Σ_i max(s·u_i, 0): the same magnitudes added in the same order, hence the same
    value (negation is exact), and Σ_i m_i w_i adds the agreeing w_i in the same order.
    """
    for d, w in zip(ds, weights, strict=True):
        d.mul_(float(w))
    total = ds[0].clone()
    for d in ds[1:]:
        total.add_(d)
    s = torch.where(total >= 0, 1.0, -1.0).to(b.dtype)
    mixed = torch.zeros_like(b)
    divisor = torch.zeros_like(b) if normalize else None
    for d, w in zip(ds, weights, strict=True):
        d.mul_(s)
        if divisor is not None:
            divisor.add_((d > 0).to(b.dtype), alpha=float(w))
        mixed.add_(d.clamp_min_(0))
    mixed.mul_(s)
    if divisor is not None:
        mixed.div_(divisor.masked_fill_(divisor == 0, 1.0))
    if lam != 1:
        mixed.mul_(lam)
    return mixed.add_(b)


def _combine(b: torch.Tensor, ds: list[torch.Tensor], w: torch.Tensor, consensus: str | None, normalize: bool,
             lam: float) -> torch.Tensor:
    weighted = torch.stack(ds) * w
    if consensus is not None:
        s = elect_sign(weighted, consensus)
        mask = (weighted.sign() == s).to(b.dtype)
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
    return torch.add(b, mixed)
