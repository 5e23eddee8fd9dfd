"""Exact rank selection without a sort: the first r entries of a non-negative tensor in the order
(value descending or ascending, then position), found from histograms of the fp32 bit patterns.

For non-negative IEEE floats the bit pattern, read as an integer, orders exactly as the value. So
the j-th smallest value t is found in two counting passes: a histogram of the top 16 bits names the
bin that holds it, a histogram of the low 16 bits of the entries in that bin names t. The
selection is then every entry before t in the order plus, among the entries equal to t, the
earliest positions - the same entries on every device and any number of threads.
Each pass is O(n) over chunks (no copy of the tensor), where `torch.kthvalue` copies and partitions
the whole tensor and `torch.sort` is O(n log n).
"""

from __future__ import annotations

import torch

CHUNK = 1 << 18  # entries per counting step (its temporaries stay in the CPU's cache)
_BINS = 1 << 16


def _bits(a: torch.Tensor) -> torch.Tensor:
    flat = a.reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    return flat.view(torch.int32)


def kth_smallest(a: torch.Tensor, j: int) -> tuple[float, int, int]:
    """(t, below, equal): t is the j-th smallest entry (1-based) of the non-negative `a`; below and
    equal count the entries < t and == t.
    """
    bits = _bits(a)
    n = bits.numel()
    if not 1 <= j <= n:
        raise ValueError(f"rank {j} outside 1..{n}")
    hist = torch.zeros(_BINS, dtype=torch.int64, device=bits.device)
    for s in range(0, n, CHUNK):
        hist += torch.bincount(bits[s:s + CHUNK] >> 16, minlength=_BINS)
    cum = hist.cumsum(0)
    top = int(torch.searchsorted(cum, torch.tensor([j], device=cum.device)).item())
    below_bin = int(cum[top - 1]) if top > 0 else 0
    low = torch.zeros(_BINS, dtype=torch.int64, device=bits.device)
    for s in range(0, n, CHUNK):
        c = bits[s:s + CHUNK]
        low += torch.bincount(c[(c >> 16) == top] & 0xFFFF, minlength=_BINS)
    cum_low = low.cumsum(0)
    bottom = int(torch.searchsorted(cum_low, torch.tensor([j - below_bin], device=cum.device)).item())
    below = below_bin + (int(cum_low[bottom - 1]) if bottom > 0 else 0)
    value = torch.tensor([(top << 16) | bottom], dtype=torch.int32).view(torch.float32).item()
    return value, below, int(low[bottom])


def first_in_order(a: torch.Tensor, r: int, descending: bool) -> torch.Tensor:
    """Flat bool mask of the first r entries of the non-negative `a` in the order (value, then position).

    Values descending (or ascending) and, among equal values, earlier positions first: a total
    order, so the selection is unique.
    """
    flat = a.reshape(-1)
    n = flat.numel()
    if r <= 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    if r >= n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    if descending:  # the r-th largest is the (n − r + 1)-th smallest
        t, below, equal = kth_smallest(flat, n - r + 1)
        mask = flat > t
        need = r - (n - below - equal)
    else:
        t, below, _ = kth_smallest(flat, r)
        mask = flat < t
        need = r - below
    if need > 0:
        mask[_first_equal(flat, t, need)] = True
    return mask


def _first_equal(flat: torch.Tensor, t: float, need: int) -> torch.Tensor:
    """Positions of the first `need` entries equal to t (scanning chunks, stopping when found)."""
    found = []
    for s in range(0, flat.numel(), CHUNK):
        idx = torch.nonzero(flat[s:s + CHUNK] == t).reshape(-1)
        if idx.numel():
            found.append(idx[:need] + s)
            need -= min(need, idx.numel())
            if need == 0:
                break
    return torch.cat(found)
