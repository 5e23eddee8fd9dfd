"""SCE: Select, Calculate, Erase (FuseChat-2.0, Wan et al. 2024, arXiv 2408.07990).

Per tensor with pivot θ_b and K targets, δ_j = θ_j − θ_b:
  Select:    v_p = Var_j(δ_{j,p}) (population); M_p = 1 on the k = ⌊τ·nnz(v)⌋ largest v_p
             (M = 1 if τ ≥ 1; M = 0 if k = 0).
  Calculate: η_j = mean((M⊙δ_j)²) / Σ_l mean((M⊙δ_l)²).
  Erase:     δ'_j = δ_j or M⊙δ_j (the variant, below); s_p = +1 where Σ_j δ'_{j,p} ≥ 0 else −1;
             E_j = [sign(δ'_j) = s].
  Merge:     θ = θ_b + Σ_j η_j E_j δ'_j / D,  D = Σ_j η_j E_j.

Two variants exist, chosen with `mask_deltas` (the recipe's `sce_mask_deltas`):
- False, FuseChat-2.0 (the FuseAI mergekit fork that made FuseChat-7B-v2.0; the default): δ'_j = δ_j,
  so the mask only shapes η. η is uniform (1/K) exactly when Σ_l mean((M⊙δ_l)²) = 0 (no target
  changed the tensor, or k = 0); a zero divisor D becomes 1.
- True, mergekit ≥ 0.1 ("positions with lower variance are zeroed out in all task vectors"):
  δ'_j = M⊙δ_j. As mergekit does, η is uniform whenever Σ_l mean((M⊙δ_l)²) < 1e-6 and D is clamped
  at ≥ 1e-6. Fine-tuning moves weights by about 1e-4 to 1e-3, so mean(δ²) is about 1e-8 to 1e-6 and
  that sum is usually below 1e-6: on such models mergekit's SCE weighs the targets equally, and so
  does this variant (bit parity with mergekit).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compress.merge.methods.select import first_in_order
from compress.merge.methods.stream import f32, fixed_sum, full_delta, spans

MERGEKIT_EPS = 1e-6  # mergekit's uniform-η threshold and divisor clamp (mask_deltas=True only)


def sce_eta(stats: Sequence[float], mask_deltas: bool) -> torch.Tensor:
    """η_j = S_j / Σ_l S_l from S_j = mean((M⊙δ_j)²); uniform when Σ S = 0 (FuseChat-2.0) or
    Σ S < 1e-6 (mergekit)."""
    s = torch.tensor([float(x) for x in stats], dtype=torch.float64)
    total = float(s.sum())
    uniform = total < MERGEKIT_EPS if mask_deltas else total == 0.0
    if uniform:
        return torch.full((len(stats),), 1.0 / len(stats), dtype=torch.float32)
    return (s / total).to(torch.float32)


def sce(base: torch.Tensor, tensors: Sequence[torch.Tensor], topk: float = 1.0, mask_deltas: bool = False,
        out_dtype: torch.dtype | None = None, device: torch.device | None = None,
        tie_break: str = "sort") -> torch.Tensor:
    """Merge one tensor with SCE; `mask_deltas` picks the variant (see the module docstring).

    `tie_break`: "sort" selects the top-τ variances with `torch.topk` as mergekit does; "index" picks
    equal variances at the threshold by position (`select.first_in_order`).

    Inputs may be in any float dtype and are not modified; δ_j is formed in fp32 per chunk, and in
    full only one model at a time for its η statistic. `tensors` may be a `stream.Lazy` (read on each
    access) so that inputs are not held throughout.
    """
    dev = device or base.device
    if not tensors:
        return base.to(out_dtype or torch.float32)
    numel = base.numel()
    mask = _select(base, tensors, topk, dev, tie_break)
    full = mask is None
    stats = []
    for j in range(len(tensors)):  # S_j = mean((M⊙δ_j)²) over the whole tensor
        d = full_delta(tensors[j], base, dev).reshape(-1)
        if not full:
            d.mul_(mask)
        stats.append(fixed_sum(d.square_()) / max(1, numel))
        del d
    eta_col = sce_eta(stats, mask_deltas).to(dev).reshape(-1, 1)
    out = torch.empty(base.shape, dtype=out_dtype or torch.float32)
    flat_out = out.reshape(-1)
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
        div = div.clamp(min=MERGEKIT_EPS) if mask_deltas else torch.where(div == 0, torch.ones_like(div), div)
        flat_out[sl] = torch.add(b, (used * ew).sum(dim=0) / div).to(out.dtype)
    return out


def _select(base: torch.Tensor, tensors: Sequence[torch.Tensor], topk: float, dev: torch.device,
            tie_break: str = "sort") -> torch.Tensor | None:
    """The flat bool mask M of the top-τ variances of δ_j = tensors_j − base; None = everything kept.

    The variance is formed chunk by chunk; with lazily read inputs (see `stream.Lazy`) they are
    released before the selection, which is the memory peak.
    """
    if topk >= 1:
        return None
    if topk <= 0:
        return torch.zeros(base.numel(), dtype=torch.bool, device=dev)
    var = _variance(base, tensors, dev)
    k = int(int(torch.count_nonzero(var)) * topk)
    if tie_break == "index":
        return first_in_order(var, k, True)
    mask = torch.zeros(base.numel(), dtype=torch.bool, device=dev)
    if k > 0:
        mask[torch.topk(var, k, largest=True).indices] = True
    return mask


def _variance(base: torch.Tensor, tensors: Sequence[torch.Tensor], dev: torch.device) -> torch.Tensor:
    xs = [tensors[i] for i in range(len(tensors))]
    var = torch.empty(base.numel(), dtype=torch.float32, device=dev)
    for sl in spans(base.numel()):
        b = f32(base, sl, dev)
        var[sl] = torch.stack([f32(x, sl, dev) - b for x in xs]).var(dim=0, unbiased=False)
    return var
