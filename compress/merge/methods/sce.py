"""SCE: Select, Calculate, Erase (FuseChat-2.0, Wan et al. 2024, arXiv 2408.07990).

Per tensor with pivot θ_b and K targets, δ_j = θ_j − θ_b:
  Select:    v_p = Var_j(δ_{j,p}) (population); M_p = 1 on the ⌊τ·nnz(v)⌋ largest v_p (M = 1 if τ ≥ 1).
  Calculate: η_j = mean((M⊙δ_j)²) / Σ_l mean((M⊙δ_l)²)   (uniform 1/K when the sum is ~0).
  Erase:     δ'_j = M⊙δ_j (upstream mergekit, `mask_deltas=True`) or δ_j (FuseAI fork, False);
             s_p = +1 where Σ_j δ'_{j,p} ≥ 0 else −1; E_j = [sign(δ'_j) = s].
  Merge:     θ = θ_b + Σ_j η_j E_j δ'_j / Σ_j η_j E_j   (upstream: divisor clamped at ≥ 1e-6;
             fork: a zero divisor becomes 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sce_select(deltas: torch.Tensor, topk: float) -> torch.Tensor:
    """Mask of the top-τ fraction (of the non-zero-variance entries) by variance across models."""
    if topk >= 1:
        return torch.ones_like(deltas[0])
    if topk <= 0:
        return torch.zeros_like(deltas[0])
    var = deltas.var(dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(var)) * topk)
    mask = torch.zeros_like(var)
    if k == 0:
        return mask
    idx = torch.topk(var.reshape(-1).abs(), k, largest=True).indices
    mask.view(-1)[idx] = 1
    return mask


def sce_weights(masked: torch.Tensor, threshold: float = 1e-6) -> torch.Tensor:
    """η_j = mean(δ_j²) / Σ_l mean(δ_l²) over the stacked (masked) deltas; uniform if the sum < threshold."""
    stat = (masked**2).reshape(masked.shape[0], -1).mean(dim=1)
    total = float(stat.sum())
    if abs(total) < threshold:
        return torch.full_like(stat, 1.0 / stat.numel())
    return stat / total


def sce(base: torch.Tensor, tensors: Sequence[torch.Tensor], topk: float = 1.0, mask_deltas: bool = True) -> torch.Tensor:
    """Merge one tensor with SCE; `mask_deltas` picks upstream mergekit (True) or the FuseAI fork (False)."""
    if not tensors:
        return base
    deltas = torch.stack([t - base for t in tensors])
    mask = sce_select(deltas, topk)
    masked = deltas * mask
    eta = sce_weights(masked, threshold=1e-6 if mask_deltas else 0.0)
    used = masked if mask_deltas else deltas
    s = torch.where(used.sum(dim=0) >= 0, 1.0, -1.0).to(used.dtype)
    erase = (used.sign() == s).to(used.dtype)
    ew = eta.reshape(-1, *([1] * base.dim())) * erase
    merged = (used * ew).sum(dim=0)
    div = ew.sum(dim=0)
    div = div.clamp(min=1e-6) if mask_deltas else torch.where(div == 0, torch.ones_like(div), div)
    return base + merged / div
