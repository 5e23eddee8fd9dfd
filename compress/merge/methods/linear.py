"""Weighted averaging and task arithmetic.

- `linear` (model soups, Wortsman et al. 2022, arXiv 2203.05482):
  θ = Σ_i w_i θ_i / Σ_i w_i (normalize) or Σ_i w_i θ_i.
- `task_arithmetic` (Ilharco et al. 2023, arXiv 2212.04089):
  θ = θ_b + λ · Σ_i w_i δ_i (/ Σ_i w_i if normalize; a divisor with |Σw| < 1e-8 becomes 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def linear(tensors: Iterable[torch.Tensor], weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """Weighted sum of the tensors, divided by the weight sum when `normalize`.

    `tensors` may be a generator: each tensor is added and released before the next is produced.
    """
    out: torch.Tensor | None = None
    for t, w in zip(tensors, weights, strict=True):
        if out is None:
            out = torch.zeros_like(t)
        out.add_(t, alpha=float(w))
    if out is None:
        raise ValueError("linear merge of zero tensors")
    if normalize:
        total = float(sum(weights))
        if abs(total) < 1e-8:
            total = 1.0
        out /= total
    return out


def task_arithmetic(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
                    normalize: bool = False, lam: float = 1.0) -> torch.Tensor:
    """θ_b + λ · Σ w_i (θ_i − θ_b), the sum divided by Σ w_i when `normalize`."""
    deltas = [t - base for t in tensors]
    return base + lam * linear(deltas, weights, normalize)
