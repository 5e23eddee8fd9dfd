"""Weighted averaging (model soups, Wortsman et al. 2022, arXiv 2203.05482).

θ = Σ_i w_i θ_i / Σ_i w_i (normalize) or Σ_i w_i θ_i. The weights must not all be 0 (the plan
refuses that: the result would be an all-zero model). Task arithmetic is in `task_arithmetic`.
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
        if total == 0:
            raise ValueError("linear merge with weights summing to 0")
        out /= total
    return out if out_dtype in (None, torch.float32) else out.to(out_dtype)
