"""Model Stock (Jang et al. 2024, arXiv 2403.19522).

δ_i = θ_i − θ_b for N ≥ 2 fine-tuned models; c = mean over pairs i<j of cos(δ_i, δ_j) (whole
tensor, or per row with `filter_wise`; a 1-D tensor is one row);
t = N·c / (1 + (N−1)·c);  θ = t · mean_i θ_i + (1 − t) · θ_b.
t is not clamped (mergekit parity) unless `clamp_t` is given; where 1 + (N−1)c ≈ 0, t = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def model_stock_t(base: torch.Tensor, tensors: Sequence[torch.Tensor], filter_wise: bool = False,
                  eps: float = 1e-6) -> torch.Tensor:
    """The interpolation ratio t (a scalar tensor, or one per row with `filter_wise`)."""
    if filter_wise:
        rows = (lambda x: x.reshape(1, -1)) if base.dim() < 2 else (lambda x: x.reshape(x.shape[0], -1))
    else:
        def rows(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(1, -1)
    b = rows(base)
    offsets = [rows(t) - b for t in tensors]
    cos = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            num = (offsets[i] * offsets[j]).sum(dim=-1)
            den = (offsets[i].norm(dim=-1) * offsets[j].norm(dim=-1)).clamp(min=eps)
            cos.append((num / den).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0)
    n = len(offsets)
    den = 1 + (n - 1) * c
    singular = den.abs() < 1e-6  # c -> -1/(N-1): no finite estimate, keep the base (as mergekit)
    return torch.where(singular, torch.zeros_like(c), n * c / torch.where(singular, torch.ones_like(den), den))


def model_stock(base: torch.Tensor, tensors: Sequence[torch.Tensor], filter_wise: bool = False,
                clamp_t: tuple[float, float] | None = None) -> torch.Tensor:
    """θ = t · mean θ_i + (1 − t) · θ_b with t from the pairwise cosines of the offsets."""
    if len(tensors) < 2:
        raise ValueError("model_stock needs at least two models besides the base")
    t = model_stock_t(base, tensors, filter_wise)
    if clamp_t is not None:
        t = t.clamp(clamp_t[0], clamp_t[1])
    avg = torch.stack(list(tensors)).mean(dim=0)
    if filter_wise and base.dim() >= 2:
        t = t.reshape(-1, *([1] * (base.dim() - 1)))
    else:
        t = t.reshape(()) if t.numel() == 1 else t
    return t * avg + (1 - t) * base
