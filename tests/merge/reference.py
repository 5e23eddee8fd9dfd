"""Reference implementations for the merge tests: whole-tensor formulas, written plainly.

The package merges chunk by chunk from plans (`sparsify.*_plan`, `ties.merge_sparse`,
`task_arithmetic.weighted_delta_sum`); these functions compute the same methods on whole fp32 tensors
the direct way, so the tests compare the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from compress.merge.methods.sparsify import bernoulli_mask, breadcrumbs_cut, rescale_l1
from compress.merge.methods.ties import elect_sign


def _keep(delta: torch.Tensor, keep: torch.Tensor, rescale: str, density: float) -> torch.Tensor:
    kept = torch.where(keep.reshape(delta.shape), delta, torch.zeros_like(delta))
    if rescale == "l1":
        return rescale_l1(delta, kept)
    if rescale == "inverse_density":
        return kept / density
    return kept


def magnitude(delta: torch.Tensor, density: float, rescale: str = "none") -> torch.Tensor:
    """TIES trim: keep the k = max(1, ⌊ρ·numel⌋) largest |δ| (ties as torch's default descending sort)."""
    if density >= 1 or delta.numel() == 0:
        return delta
    k = max(1, int(density * delta.numel()))
    order = torch.sort(delta.abs().reshape(-1), descending=True).indices
    keep = torch.zeros(delta.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    return _keep(delta, keep, rescale, density)


def breadcrumbs(delta: torch.Tensor, density: float, gamma: float = 0.01, rescale: str = "none") -> torch.Tensor:
    """Breadcrumbs: sort |δ| ascending, keep the ranks [n_bot, numel − n_top)."""
    if density >= 1:
        return delta
    numel = delta.numel()
    n_bot, n_top = breadcrumbs_cut(numel, density, gamma)
    order = torch.sort(delta.abs().reshape(-1)).indices
    keep = torch.zeros(numel, dtype=torch.bool)
    keep[order[n_bot:numel - n_top]] = True
    return _keep(delta, keep, rescale, density)


def dare(delta: torch.Tensor, density: float, rescale: str, generator: torch.Generator) -> torch.Tensor:
    """DARE: keep each entry with probability ρ (mask drawn from `generator`), rescale."""
    if density >= 1:
        return delta
    return _keep(delta, bernoulli_mask(delta.shape, density, generator), rescale, density)


def merge_deltas(base: torch.Tensor, deltas: Sequence[torch.Tensor], weights: Sequence[float], *,
                 consensus: str | None = "sum", normalize: bool = True, lam: float = 1.0) -> torch.Tensor:
    """θ_b + λ · Σ_i m_i w_i δ_i / Σ_i m_i w_i with TIES sign consensus (m_i = 1 without consensus)."""
    w = torch.tensor([float(x) for x in weights], dtype=base.dtype).reshape(-1, *[1] * base.dim())
    weighted = torch.stack(list(deltas)) * w
    if consensus is not None:
        mask = (weighted.sign() == elect_sign(weighted, consensus)).to(base.dtype)
        mixed = (weighted * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    else:
        mixed = weighted.sum(dim=0)
        divisor = w.sum()
        divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
    if normalize:
        mixed = mixed / divisor
    return base + lam * mixed


def task_arithmetic(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
                    normalize: bool = False, lam: float = 1.0) -> torch.Tensor:
    """θ_b + λ · Σ w_i (θ_i − θ_b), the sum divided by Σ w_i when `normalize`."""
    return merge_deltas(base, [t - base for t in tensors], weights, consensus=None, normalize=normalize, lam=lam)


def first_reference(a: np.ndarray, r: int, descending: bool) -> np.ndarray:
    """The first r entries in the order (value, then position) by numpy's stable lexicographic sort."""
    order = np.lexsort((np.arange(a.size), -a if descending else a))
    mask = np.zeros(a.size, dtype=bool)
    mask[order[:r]] = True
    return mask


def sce_fork_reference(base: np.ndarray, ts: list[np.ndarray], tau: float) -> np.ndarray:
    """FuseChat-2.0's SCE (the FuseAI fork), in float64: the top-τ variance mask shapes η only; η is
    uniform when Σ mean((M⊙δ)²) is exactly 0 (k = 0, or nothing changed); a zero divisor becomes 1."""
    ds = np.stack([t.astype(np.float64) - base for t in ts])
    var = ds.var(axis=0)
    k = int(np.count_nonzero(var) * tau)
    m = np.zeros(var.size)
    if k > 0:
        m[np.argsort(-var.ravel(), kind="stable")[:k]] = 1
    m = m.reshape(var.shape) if tau < 1 else np.ones(var.shape)
    stat = np.array([((d * m) ** 2).mean() for d in ds])
    eta = np.full(len(ts), 1 / len(ts)) if stat.sum() == 0 else stat / stat.sum()
    s = np.where(ds.sum(0) >= 0, 1, -1)
    ew = eta.reshape(-1, *[1] * base.ndim) * (np.sign(ds) == s)
    div = ew.sum(0)
    return base + (ds * ew).sum(0) / np.where(div == 0, 1, div)
