"""Sparsifiers for task vectors δ = θ_i − θ_base, one pure function per paper.

- `magnitude`: TIES-Merging trim (Yadav et al. 2023, arXiv 2306.01708): keep the ⌊ρ·numel⌋ largest |δ|.
- `dare`: DARE drop-and-rescale (Yu et al. 2023, arXiv 2311.03099): M ~ Bernoulli(ρ), δ̃ = M ⊙ δ · r.
- `breadcrumbs`: Model Breadcrumbs (Davari & Belilovsky 2023, arXiv 2312.06795): drop the smallest
  and the γ·numel largest |δ|, keep ⌊ρ·numel⌋ in between.
- `della`: DELLA MagPrune (Deep et al. 2024, arXiv 2406.11617): per-row keep probability
  p = (ρ − ε) + 2ε·r̂ rising with the magnitude rank r̂ ∈ [0, 1].

Rescaling (`rescale`): "l1" matches the L1 norm of the kept entries to the original (mergekit's
`rescale: true` for DARE), "inverse_density" divides by the keep probability (the papers),
"none" keeps the entries as they are. All functions take and return fp32 tensors.
"""

from __future__ import annotations

import torch

from compress.merge.methods.stream import Sparse

RESCALES = ("l1", "inverse_density", "none")
# How entries of equal |δ| at a selection's threshold are chosen: "sort" as torch's default (unstable)
# sort orders them, which is what mergekit does (bit parity with it on CPU; a GPU's sort orders ties
# otherwise); "index" by position, earlier first - the same entries on every device and thread count.
TIE_BREAKS = ("sort", "index")


def rescale_l1(original: torch.Tensor, kept: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale `kept` so that Σ|kept| = Σ|original| (unchanged when either norm is below eps)."""
    before = original.abs().sum()
    after = kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept * (before / after)


def _abs_order(delta: torch.Tensor, descending: bool, inplace: bool) -> torch.Tensor:
    """Flat indices of δ sorted by |δ| with torch's default (unstable) sort, as mergekit sorts.

    In place, |δ| is formed inside δ (signs kept aside as bits) and restored after: one full-size
    temporary less on large tensors, same order.
    """
    if not inplace:
        return torch.sort(delta.abs().reshape(-1), descending=descending).indices
    neg = delta < 0
    order = torch.sort(delta.abs_().reshape(-1), descending=descending).indices
    delta[neg] = -delta[neg]
    return order


def magnitude(delta: torch.Tensor, density: float, rescale: str = "none", inplace: bool = False) -> torch.Tensor:
    """TIES trim: keep the k = max(1, ⌊ρ·numel⌋) entries of largest |δ|, zero the rest.

    Ties at the threshold are broken as torch's default (unstable) descending sort orders them,
    which is what mergekit does, so both tools keep the same entries.
    """
    if density >= 1 or delta.numel() == 0:
        return delta
    k = max(1, int(density * delta.numel()))  # at least one entry survives (as mergekit)
    order = _abs_order(delta, descending=True, inplace=inplace)
    keep = torch.zeros(delta.numel(), dtype=torch.bool, device=delta.device)
    keep[order[:k]] = True
    del order
    return _apply(delta, keep, rescale, density, inplace)


def bernoulli_mask(shape: torch.Size | tuple[int, ...], p: float | torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """M ~ Bernoulli(p) as a bool mask, drawn on the CPU from `generator` as [U < p], U ~ Uniform[0, 1).

    Three times faster than torch.bernoulli(torch.full(shape, p)) on CPU (one uniform per entry,
    no probability tensor): DARE's mask was the largest cost of a dare_ties merge.
    """
    return torch.rand(shape, generator=generator, dtype=torch.float32) < p


def dare(delta: torch.Tensor, density: float, rescale: str, generator: torch.Generator) -> torch.Tensor:
    """DARE: keep each entry with probability ρ (Bernoulli mask drawn from `generator`), rescale."""
    if density >= 1:
        return delta
    mask = bernoulli_mask(delta.shape, density, generator).to(delta.device)
    kept = delta * mask
    return _rescale(delta, kept, rescale, density)


def breadcrumbs(delta: torch.Tensor, density: float, gamma: float = 0.01, rescale: str = "none",
                inplace: bool = False) -> torch.Tensor:
    """Breadcrumbs: sort |δ| ascending, keep the ranks [n_bot, numel − n_top).

    n_top = ⌊γ·numel⌋, n_bot = numel − ⌊ρ·numel⌋ − n_top (if negative, n_top absorbs it). The end
    index is explicit, so n_top = 0 keeps the top entries (mergekit's `[n_bot:-n_top]` slice drops
    the whole delta then).
    """
    if density >= 1:
        return delta
    numel = delta.numel()
    n_bot, n_top = _breadcrumbs_cut(numel, density, gamma)
    order = _abs_order(delta, descending=False, inplace=inplace)  # ascending, mergekit's tie order
    keep = torch.zeros(numel, dtype=torch.bool, device=delta.device)
    keep[order[n_bot:numel - n_top]] = True
    del order
    return _apply(delta, keep, rescale, density, inplace)


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


def _apply(delta: torch.Tensor, keep: torch.Tensor, rescale: str, density: float, inplace: bool) -> torch.Tensor:
    """Zero the entries outside `keep` (a flat bool mask), then rescale; in place when asked."""
    if rescale == "l1":
        before = delta.abs().sum()
    out = delta if inplace else delta.clone()
    out.reshape(-1).masked_fill_(~keep, 0)
    if rescale == "l1":
        after = out.abs().sum()
        if before >= 1e-7 and after >= 1e-7:
            out.mul_(before / after)
        return out
    return _rescale(delta, out, rescale, density) if rescale != "none" else out


def _rescale(original: torch.Tensor, kept: torch.Tensor, rescale: str, density: float) -> torch.Tensor:
    if rescale == "l1":
        return rescale_l1(original, kept)
    if rescale == "inverse_density":
        return kept / density
    if rescale == "none":
        return kept
    raise ValueError(f"unknown rescale {rescale!r}: use one of {', '.join(RESCALES)}")


# ---- plans: the same selections as above, recorded as masks (replayed chunk by chunk) ----------
def magnitude_plan(delta: torch.Tensor, density: float, rescale: str = "none", tie_break: str = "sort") -> Sparse:
    """`magnitude` as a keep mask; `delta` (fp32) is consumed (|δ| formed, and sorted, in place).

    With `tie_break="sort"` the same sort call on the same values as `magnitude`, so the same
    entries survive ties; with "index", `first_by_magnitude`.
    """
    if density >= 1 or delta.numel() == 0:
        return Sparse()
    k = max(1, int(density * delta.numel()))
    return _rank_plan(delta, True, 0, k, rescale, density, tie_break)


def _breadcrumbs_cut(numel: int, density: float, gamma: float) -> tuple[int, int]:
    """(smallest, largest) counts of |δ| that breadcrumbs drops, as mergekit computes them."""
    n_keep = int(density * numel)
    n_top = int(gamma * numel)
    n_bot = numel - n_keep - n_top
    if n_bot < 0:
        return 0, n_top + n_bot
    return n_bot, n_top


def breadcrumbs_plan(delta: torch.Tensor, density: float, gamma: float = 0.01, rescale: str = "none",
                     tie_break: str = "sort") -> Sparse:
    """`breadcrumbs` as a keep mask (ranks [n_bot, numel − n_top) of |δ| ascending); consumes `delta`."""
    if density >= 1:
        return Sparse()
    numel = delta.numel()
    n_bot, n_top = _breadcrumbs_cut(numel, density, gamma)
    return _rank_plan(delta, False, n_bot, numel - n_top, rescale, density, tie_break)


def first_by_magnitude(a: torch.Tensor, r: int, descending: bool) -> torch.Tensor:
    """Mask of the first r entries of the flat, non-negative `a` in the order (a, then position).

    Values descending (or ascending) and, among equal values, earlier positions first: a total
    order, so the selection is the same on any device. One k-th value search and a scan for the
    entries equal to it, instead of a full sort.
    """
    n = a.numel()
    if r <= 0:
        return torch.zeros(n, dtype=torch.bool, device=a.device)
    if r >= n:
        return torch.ones(n, dtype=torch.bool, device=a.device)
    t = torch.kthvalue(a, n - r + 1 if descending else r).values
    mask = a > t if descending else a < t
    need = r - int(mask.sum())
    if need > 0:
        mask[torch.nonzero(a == t).reshape(-1)[:need]] = True
    return mask


def _rank_plan(delta: torch.Tensor, descending: bool, lo: int, hi: int, rescale: str, density: float,
               tie_break: str = "sort") -> Sparse:
    flat = delta.reshape(-1)
    flat.abs_()
    if tie_break == "index":
        absd = flat if rescale == "l1" else None
        keep = first_by_magnitude(flat, hi, descending)
        if lo > 0:
            keep &= ~first_by_magnitude(flat, lo, descending)
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
        before = absd.sum()
        after = absd.masked_fill_(~keep, 0).sum()
        if before >= 1e-7 and after >= 1e-7:
            plan.scale = before / after
    elif rescale == "inverse_density":
        plan.div = density
    elif rescale != "none":
        raise ValueError(f"unknown rescale {rescale!r}: use one of {', '.join(RESCALES)}")
    return plan


def dare_plan(delta: torch.Tensor, density: float, rescale: str, generator: torch.Generator) -> Sparse:
    """`dare` as a mask (δ·M) plus its rescale, drawn exactly as `dare` draws it."""
    if density >= 1:
        return Sparse()
    mask = bernoulli_mask(delta.shape, density, generator).to(delta.device)
    plan = Sparse(keep=mask.reshape(-1).bool(), mul_mask=True)
    if rescale == "l1":
        kept = delta * mask
        before, after = delta.abs().sum(), kept.abs().sum()
        del kept
        if not (before < 1e-7 or after < 1e-7):
            plan.scale = before / after
    elif rescale == "inverse_density":
        plan.div = density
    elif rescale != "none":
        raise ValueError(f"unknown rescale {rescale!r}: use one of {', '.join(RESCALES)}")
    return plan
