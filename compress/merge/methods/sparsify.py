"""Sparsifiers for task vectors δ = θ_i − θ_base, recorded as replayable plans (`stream.Sparse`).

- `magnitude_plan`: TIES-Merging trim (Yadav et al. 2023, arXiv 2306.01708): keep the
  k = max(1, ⌊ρ·numel⌋) largest |δ|.
- `dare_plan`: DARE drop-and-rescale (Yu et al. 2023, arXiv 2311.03099): M ~ Bernoulli(ρ), δ̃ = M ⊙ δ · r.
- `breadcrumbs_plan`: Model Breadcrumbs (Davari & Belilovsky 2023, arXiv 2312.06795): sort |δ|
  ascending, keep the ranks [n_bot, numel − n_top) with n_top = ⌊γ·numel⌋, n_bot = numel − ⌊ρ·numel⌋ − n_top.
- `della`: DELLA MagPrune (Deep et al. 2024, arXiv 2406.11617): per-row keep probability
  p = (ρ − ε) + 2ε·r̂ rising with the magnitude rank r̂ ∈ [0, 1].

Rescaling (`rescale`): "l1" matches the L1 norm of the kept entries to the original (mergekit's
`rescale: true` for DARE), "inverse_density" divides by the keep probability (the papers),
"none" keeps the entries as they are. Sums use `stream.fixed_sum`, so a rescale factor has the
same bits on any number of threads. Random masks come from a generator seeded by (seed, model
index, tensor name) and are drawn in element order: entry p's draw depends on nothing else.
"""

from __future__ import annotations

import torch

from compress.merge.methods.select import first_in_order
from compress.merge.methods.stream import Sparse, fixed_sum

RESCALES = ("l1", "inverse_density", "none")
# How entries of equal |δ| at a selection's threshold are chosen: "sort" as torch's default (unstable)
# sort orders them, which is what mergekit does (bit parity with it on CPU; a GPU's sort orders ties
# otherwise); "index" by position, earlier first - the same entries on every device and thread count,
# found with a histogram of the bit patterns instead of a sort (`select.first_in_order`).
TIE_BREAKS = ("sort", "index")


def rescale_l1(original: torch.Tensor, kept: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale `kept` so that Σ|kept| = Σ|original| (unchanged when either norm is below eps)."""
    before = fixed_sum(original.abs())
    after = fixed_sum(kept.abs())
    if before < eps or after < eps:
        return kept
    return kept * torch.tensor(before / after, dtype=torch.float32)


def bernoulli_mask(shape: torch.Size | tuple[int, ...], p: float | torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """M ~ Bernoulli(p) as a bool mask, drawn on the CPU from `generator` as [U < p], U ~ Uniform[0, 1).

    One uniform per entry in element order (no probability tensor): three times faster than
    torch.bernoulli(torch.full(shape, p)) on CPU.
    """
    return torch.rand(shape, generator=generator, dtype=torch.float32) < p


def della_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """p = (ρ − ε) + 2ε·r̂ per row of the 2-D view (a 1-D tensor is one row); r̂ = normalised rank of |δ|."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    n = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    ranks = torch.empty_like(rows)
    ranks.scatter_(1, order, torch.arange(n, dtype=rows.dtype, device=rows.device).expand_as(rows).contiguous())
    r_hat = ranks / (n - 1) if n > 1 else torch.zeros_like(ranks)  # ranks 0..n-1 -> [0, 1]
    return ((density - epsilon) + 2 * epsilon * r_hat).reshape(delta.shape)


def della(delta: torch.Tensor, density: float, epsilon: float, rescale: str, generator: torch.Generator) -> torch.Tensor:
    """DELLA MagPrune: M ~ Bernoulli(p) with magnitude-rank probabilities, kept entries rescaled."""
    if density >= 1:
        return delta
    p = della_probabilities(delta, density, epsilon)
    mask = bernoulli_mask(p.shape, p.cpu(), generator).to(delta.device)
    kept = delta * mask
    if rescale == "inverse_density":
        return kept / p
    return _rescale(delta, kept, rescale, density)


def _rescale(original: torch.Tensor, kept: torch.Tensor, rescale: str, density: float) -> torch.Tensor:
    if rescale == "l1":
        return rescale_l1(original, kept)
    if rescale == "inverse_density":
        return kept / density
    if rescale == "none":
        return kept
    raise ValueError(f"unknown rescale {rescale!r}: use one of {', '.join(RESCALES)}")


# ---- plans: selections recorded as masks (replayed chunk by chunk) ----------------------------
def magnitude_plan(delta: torch.Tensor, density: float, rescale: str = "none", tie_break: str = "sort") -> Sparse:
    """TIES trim as a keep mask; `delta` (fp32) is consumed (|δ| formed, and sorted, in place).

    `tie_break="sort"`: the order of torch's default (unstable) descending sort of |δ|, as mergekit
    sorts, so both tools keep the same entries among those tied at the threshold; "index":
    `select.first_in_order` (value, then position).
    """
    if density >= 1 or delta.numel() == 0:
        return Sparse()
    k = max(1, int(density * delta.numel()))  # at least one entry survives (as mergekit)
    return _rank_plan(delta, True, 0, k, rescale, density, tie_break)


def breadcrumbs_cut(numel: int, density: float, gamma: float) -> tuple[int, int]:
    """(smallest, largest) counts of |δ| that breadcrumbs drops, as mergekit computes them.

    The end of the kept range is explicit (numel − n_top), so n_top = 0 keeps the top entries
    (mergekit's `[n_bot:-n_top]` slice drops the whole delta then).
    """
    n_keep = int(density * numel)
    n_top = int(gamma * numel)
    n_bot = numel - n_keep - n_top
    if n_bot < 0:
        return 0, n_top + n_bot
    return n_bot, n_top


def breadcrumbs_plan(delta: torch.Tensor, density: float, gamma: float = 0.01, rescale: str = "none",
                     tie_break: str = "sort") -> Sparse:
    """Breadcrumbs as a keep mask (ranks [n_bot, numel − n_top) of |δ| ascending); consumes `delta`."""
    if density >= 1:
        return Sparse()
    numel = delta.numel()
    n_bot, n_top = breadcrumbs_cut(numel, density, gamma)
    return _rank_plan(delta, False, n_bot, numel - n_top, rescale, density, tie_break)


def _rank_plan(delta: torch.Tensor, descending: bool, lo: int, hi: int, rescale: str, density: float,
               tie_break: str = "sort") -> Sparse:
    """Keep the ranks [lo, hi) of |δ| in the chosen order."""
    flat = delta.reshape(-1)
    flat.abs_()
    if tie_break == "index":
        absd = flat if rescale == "l1" else None
        keep = first_in_order(flat, hi, descending)
        if lo > 0:
            keep &= ~first_in_order(flat, lo, descending)
    elif tie_break == "sort":
        absd = flat.clone() if rescale == "l1" else None  # |δ| in place order, for the L1 sums
        order = torch.empty(flat.numel(), dtype=torch.int64, device=flat.device)
        torch.sort(flat, descending=descending, out=(flat, order))  # in place: same order as sort(|δ|)
        keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        keep[order[lo:hi]] = True
        del order
    else:
        raise ValueError(f"unknown tie_break {tie_break!r}: use one of {', '.join(TIE_BREAKS)}")
    plan = Sparse(keep=keep)
    if rescale == "l1":
        assert absd is not None
        before = fixed_sum(absd)
        after = fixed_sum(absd.masked_fill_(~keep, 0))
        if before >= 1e-7 and after >= 1e-7:
            plan.scale = torch.tensor(before / after, dtype=torch.float32, device=flat.device)
    elif rescale == "inverse_density":
        plan.div = density
    elif rescale != "none":
        raise ValueError(f"unknown rescale {rescale!r}: use one of {', '.join(RESCALES)}")
    return plan


def dare_plan(delta: torch.Tensor, density: float, rescale: str, generator: torch.Generator) -> Sparse:
    """DARE as a mask (δ·M) plus its rescale; M drawn from `generator` in element order."""
    if density >= 1:
        return Sparse()
    mask = bernoulli_mask(delta.shape, density, generator).to(delta.device)
    plan = Sparse(keep=mask.reshape(-1), mul_mask=True)
    if rescale == "l1":
        before = fixed_sum(delta.abs())
        after = fixed_sum((delta * mask).abs_())
        if not (before < 1e-7 or after < 1e-7):
            plan.scale = torch.tensor(before / after, dtype=torch.float32, device=delta.device)
    elif rescale == "inverse_density":
        plan.div = density
    elif rescale != "none":
        raise ValueError(f"unknown rescale {rescale!r}: use one of {', '.join(RESCALES)}")
    return plan
