"""Weighted averaging and task arithmetic.

- `linear` (model soups, Wortsman et al. 2022, arXiv 2203.05482):
  θ = Σ_i w_i θ_i / Σ_i w_i (normalize) or Σ_i w_i θ_i.
- `task_arithmetic` (Ilharco et al. 2023, arXiv 2212.04089):
  θ = θ_b + λ · Σ_i w_i δ_i (/ Σ_i w_i if normalize; a divisor with |Σw| < 1e-8 becomes 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from compress.merge.methods.stream import f32, spans


def linear(tensors: Iterable[torch.Tensor], weights: Sequence[float], normalize: bool = True,
           out_dtype: torch.dtype | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Weighted sum of the tensors, divided by the weight sum when `normalize`.

    `tensors` may be a generator: each tensor is added and released before the next is produced.
    Inputs in any float dtype; the sum is accumulated in fp32 chunk by chunk.
    """
    out: torch.Tensor | None = None
    for t, w in zip(tensors, weights, strict=True):
        first = out is None
        if out is None:  # the first term is written, not added to zeros (0 + w·x = w·x exactly)
            out = torch.empty(t.shape, dtype=torch.float32, device=device or t.device)
        flat = out.reshape(-1)
        for sl in spans(t.numel()):
            if first:
                torch.mul(f32(t, sl, flat.device), float(w), out=flat[sl])
            else:
                flat[sl].add_(f32(t, sl, flat.device), alpha=float(w))
        del t
    if out is None:
        raise ValueError("linear merge of zero tensors")
    if normalize:
        total = float(sum(weights))
        if abs(total) < 1e-8:
            total = 1.0
        out /= total
    return out if out_dtype in (None, torch.float32) else out.to(out_dtype)


def task_arithmetic(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
                    normalize: bool = False, lam: float = 1.0) -> torch.Tensor:
    """θ_b + λ · Σ w_i (θ_i − θ_b), the sum divided by Σ w_i when `normalize`."""
    deltas = [t - base for t in tensors]
    return base + lam * linear(deltas, weights, normalize)
