"""VaRM: variation-ratio merge (FuseChat v1, Wan et al. 2024, arXiv 2402.16107, §3.3).

For each parameter matrix m and target j (a pivot fused with source j), Δθ_{j,m} = θ_{j,m} − θ_{b,m}:
  statistic  S_{j,m} = mean(Δθ_{j,m}²)
  weight     W_{j,m} = S_{j,m} / Σ_k S_{k,m}       (or softmax(S/temperature) across targets)
  merge      θ_m = Σ_j W_{j,m} θ_{j,m} = θ_{b,m} + Σ_j W_{j,m} Δθ_{j,m}   (Σ_j W = 1)

Granularity of the statistic, as the official FuseChat script (`merge.py --merge_method`) has it:
- "matrix" (avg_param, the paper's VaRM): S_{j,m} per tensor.
- "layer" (avg_layer): one S per decoder layer, the SUM of the per-tensor means mean(Δθ²) of the
  layer's tensors (not Σ Δθ² / Σ numel); tensors outside the decoder layers (embeddings, final
  norm, lm_head) get uniform weights 1/K.
- "model" (avg_model): one S for the whole model, Σ_m Σ Δθ_m² / Σ_m numel_m (pooled).

Unlike the released script, each target's statistic is measured against the pivot (the script
compares the targets with each other and loads one analysis file for every target, which makes the
weights uniform), and a target with S = 0 gets weight 0. If every target has S = 0 the tensor is
the pivot's (`zero_fallback="pivot"`); `zero_fallback="uniform"` is the script's rule (any zero
statistic -> uniform weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from compress.merge.methods.stream import f32, fixed_sum, spans

NORMS = ("sum", "softmax")
ZERO_FALLBACKS = ("pivot", "uniform")
GRANULARITIES = ("matrix", "layer", "model")


def squared_change(base: torch.Tensor, tensor: torch.Tensor) -> tuple[float, int]:
    """(Σ Δθ², numel) of one tensor against the pivot, in fp64 over 1M-element chunks (`fixed_sum`:
    the same bits on any number of threads)."""
    a, b = tensor.reshape(-1), base.reshape(-1)
    total = 0.0
    for sl in spans(a.numel(), 1 << 20):
        d = a[sl].double() - b[sl].double()
        total += fixed_sum(d.square_())
    return total, a.numel()


def granular_statistics(sums: Mapping[str, Sequence[tuple[float, int]]], layer_of: Mapping[str, int | None],
                        granularity: str) -> dict[str, list[float] | None]:
    """Each tensor's statistics S_j (one per target) from its (Σ Δθ², numel) per target.

    None means "uniform weights" (tensors outside the decoder layers with granularity "layer").
    """
    k = len(next(iter(sums.values()), ()))
    mean = {name: [sq / max(1, n) for sq, n in per] for name, per in sums.items()}
    if granularity == "matrix":
        return dict(mean)
    if granularity == "model":
        pooled = [sum(sums[x][j][0] for x in sums) / max(1, sum(sums[x][j][1] for x in sums)) for j in range(k)]
        return {name: list(pooled) for name in sums}
    if granularity != "layer":
        raise ValueError(f"unknown granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
    per_layer: dict[int, list[float]] = {}
    for name, layer in layer_of.items():
        if layer is not None:
            acc = per_layer.setdefault(layer, [0.0] * k)
            for j in range(k):
                acc[j] += mean[name][j]
    return {name: (list(per_layer[layer_of[name]]) if layer_of.get(name) is not None else None) for name in sums}


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
