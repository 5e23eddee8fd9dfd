"""VaRM: variation-ratio merge (FuseChat v1, Wan et al. 2024, arXiv 2402.16107, §3.3).

For each parameter matrix m and target j (a pivot fused with source j), Δθ_{j,m} = θ_{j,m} − θ_{b,m}:
  statistic  S_{j,m} = mean(Δθ_{j,m}²)            (over the matrix, a decoder layer, or the model)
  weight     W_{j,m} = S_{j,m} / Σ_k S_{k,m}       (or softmax(S/temperature) across targets)
  merge      θ_m = Σ_j W_{j,m} θ_{j,m} = θ_{b,m} + Σ_j W_{j,m} Δθ_{j,m}   (Σ_j W = 1)

Implemented as the paper means it, not as the released script behaves (shared/specs/merge.md §2.2):
each target's statistic is measured against the pivot (not the targets against each other, not one
shared analysis file), and a target with S = 0 gets weight 0. If every target has S = 0 the tensor
is the pivot's (`zero_fallback="pivot"`); `zero_fallback="uniform"` reproduces the script's rule
(any zero statistic -> uniform weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from compress.merge.methods.stream import f32, spans

NORMS = ("sum", "softmax")
ZERO_FALLBACKS = ("pivot", "uniform")
GRANULARITIES = ("matrix", "layer", "model")


def squared_change(base: torch.Tensor, tensor: torch.Tensor) -> tuple[float, int]:
    """(Σ Δθ², numel) of one tensor against the pivot, accumulated in fp64 over 1M-element chunks."""
    a, b = tensor.reshape(-1), base.reshape(-1)
    total = 0.0
    for sl in spans(a.numel(), 1 << 20):
        d = a[sl].double() - b[sl].double()
        total += float(d.square_().sum())
    return total, a.numel()


def varm_weights(stats: Sequence[float], norm: str = "sum", temperature: float = 1.0,
                 zero_fallback: str = "pivot") -> torch.Tensor:
    """W_j from the statistics S_j (mean squared change) of K targets; Σ W = 1 unless all S are 0."""
    s = torch.tensor([float(x) for x in stats], dtype=torch.float64)
    if zero_fallback == "uniform" and bool((s == 0).any()):
        return torch.full_like(s, 1.0 / s.numel())
    if norm == "softmax":
        if bool((s == 0).all()) and zero_fallback == "pivot":
            return torch.zeros_like(s)
        return torch.softmax(s / temperature, dim=0)
    if norm != "sum":
        raise ValueError(f"unknown norm {norm!r}: use sum or softmax")
    total = float(s.sum())
    if total == 0:
        return torch.zeros_like(s)  # every target equals the pivot: the merge is the pivot
    return s / total


def varm_merge(base: torch.Tensor, tensors: Iterable[torch.Tensor], weights: torch.Tensor,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """θ = θ_b + Σ_j W_j (θ_j − θ_b); `tensors` may be a generator (one target resident at a time).

    Inputs in any float dtype; accumulated in fp32 chunk by chunk.
    """
    out = torch.empty(base.numel(), dtype=torch.float32, device=base.device)
    for sl in spans(base.numel()):
        out[sl] = f32(base, sl)
    for t, w in zip(tensors, weights.tolist(), strict=True):
        if w != 0:
            for sl in spans(base.numel()):
                out[sl].add_(f32(t, sl, out.device) - f32(base, sl, out.device), alpha=w)
        del t
    out = out.reshape(base.shape)
    return out if out_dtype in (None, torch.float32) else out.to(out_dtype)
