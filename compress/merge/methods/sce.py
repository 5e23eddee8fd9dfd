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

from compress.merge.methods.sparsify import first_by_magnitude
from compress.merge.methods.stream import CHUNK, f32, full_delta, spans


def sce_select(deltas: Sequence[torch.Tensor], topk: float) -> torch.Tensor:
    """Bool mask of the top-τ fraction (of the non-zero-variance entries) by variance across models."""
    first = deltas[0].reshape(-1)
    if topk >= 1:
        return torch.ones(first.shape, dtype=torch.bool, device=first.device).reshape(deltas[0].shape)
    if topk <= 0:
        return torch.zeros(first.shape, dtype=torch.bool, device=first.device).reshape(deltas[0].shape)
    var = torch.empty_like(first)
    flats = [d.reshape(-1) for d in deltas]
    for start in range(0, first.numel(), CHUNK):  # population variance over models, in chunks
        sl = slice(start, start + CHUNK)
        var[sl] = torch.stack([f[sl] for f in flats]).var(dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(var)) * topk)
    mask = torch.zeros(first.shape, dtype=torch.bool, device=first.device)
    if k > 0:
        mask[torch.topk(var.abs(), k, largest=True).indices] = True
    return mask.reshape(deltas[0].shape)


def sce_weights(masked: Sequence[torch.Tensor], threshold: float = 1e-6) -> torch.Tensor:
    """η_j = mean(δ_j²) / Σ_l mean(δ_l²) over the (masked) deltas; uniform if the sum < threshold."""
    stat = torch.stack([d.square().mean() for d in masked])
    total = float(stat.sum())
    if abs(total) < threshold:
        return torch.full_like(stat, 1.0 / stat.numel())
    return stat / total


def sce(base: torch.Tensor, tensors: Sequence[torch.Tensor], topk: float = 1.0, mask_deltas: bool = True,
        inplace: bool = False, out_dtype: torch.dtype | None = None,
        device: torch.device | None = None, tie_break: str = "sort") -> torch.Tensor:
    """Merge one tensor with SCE; `mask_deltas` picks upstream mergekit (True) or the FuseAI fork (False).

    `tie_break`: "sort" selects the top-τ variances with `torch.topk` as mergekit does; "index" picks
    equal variances at the threshold by position (`sparsify.TIE_BREAKS`).

    Inputs may be in any float dtype and are not modified (`inplace` is accepted for compatibility);
    δ_j is formed in fp32 per chunk, and in full only one model at a time for its η statistic.
    `tensors` may be a `stream.Lazy` (read on each access) so that inputs are not held throughout.
    """
    del inplace
    dev = device or base.device
    if not tensors:
        return base.to(out_dtype or torch.float32)
    numel = base.numel()
    mask = _select(base, tensors, topk, dev, tie_break)
    full = mask is None
    stats = []
    for j in range(len(tensors)):  # η_j: mean((M⊙δ_j)²) over the whole tensor, exactly as on the stacked deltas
        d = full_delta(tensors[j], base, dev).reshape(-1)
        if not full:
            d.mul_(mask)
        stats.append(d.square_().mean())  # in place: same values, same reduction, no second copy
        del d
    stat = torch.stack(stats)
    threshold = 1e-6 if mask_deltas else 0.0
    total = float(stat.sum())
    eta = torch.full_like(stat, 1.0 / stat.numel()) if abs(total) < threshold else stat / total
    out = torch.empty(base.shape, dtype=out_dtype or torch.float32)
    flat_out = out.reshape(-1)
    eta_col = eta.reshape(-1, 1)
    xs = [tensors[j] for j in range(len(tensors))]
    for sl in spans(numel):
        b = f32(base, sl, dev)
        ds = [f32(x, sl, dev) - b for x in xs]
        if mask_deltas and not full:
            for d in ds:
                d.mul_(mask[sl])
        used = torch.stack(ds)
        s = torch.where(used.sum(dim=0) >= 0, 1.0, -1.0).to(used.dtype)
        ew = eta_col * (used.sign() == s).to(used.dtype)
        div = ew.sum(dim=0)
        div = div.clamp(min=1e-6) if mask_deltas else torch.where(div == 0, torch.ones_like(div), div)
        flat_out[sl] = torch.add(b, (used * ew).sum(dim=0) / div).to(out.dtype)
    return out


def _select(base: torch.Tensor, tensors: Sequence[torch.Tensor], topk: float, dev: torch.device,
            tie_break: str = "sort") -> torch.Tensor | None:
    """`sce_select` on δ_j = tensors_j − base; None = everything kept.

    The variance is formed chunk by chunk; with lazily read inputs (see `stream.Lazy`) they are
    released before the top-k, which is the memory peak.
    """
    if topk >= 1:
        return None
    if topk <= 0:
        return torch.zeros(base.numel(), dtype=torch.bool, device=dev)
    var = _variance(base, tensors, dev)
    k = int(int(torch.count_nonzero(var)) * topk)
    if tie_break == "index":
        return first_by_magnitude(var.abs_(), k, True)
    mask = torch.zeros(base.numel(), dtype=torch.bool, device=dev)
    if k > 0:
        mask[torch.topk(var.abs_(), k, largest=True).indices] = True
    return mask


def _variance(base: torch.Tensor, tensors: Sequence[torch.Tensor], dev: torch.device) -> torch.Tensor:
    xs = [tensors[i] for i in range(len(tensors))]
    var = torch.empty(base.numel(), dtype=torch.float32, device=dev)
    for sl in spans(base.numel()):
        b = f32(base, sl, dev)
        var[sl] = torch.stack([f32(x, sl, dev) - b for x in xs]).var(dim=0, unbiased=False)
    return var
