"""Model Stock (Jang et al. 2024, arXiv 2403.19522).

δ_i = θ_i − θ_b for N ≥ 2 fine-tuned models; c = mean over pairs i<j of cos(δ_i, δ_j) (whole
tensor, or per row with `filter_wise`; a 1-D tensor is one row);
t = N·c / (1 + (N−1)·c);  θ = t · mean_i θ_i + (1 − t) · θ_b.
t is not clamped (mergekit parity) unless `clamp_t` is given; where 1 + (N−1)c ≈ 0, t = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compress.merge.methods.stream import CHUNK


def model_stock_t(base: torch.Tensor, tensors: Sequence[torch.Tensor], filter_wise: bool = False,
                  eps: float = 1e-6, chunk: int = CHUNK) -> torch.Tensor:
    """The interpolation ratio t: a 1-element tensor, or one per row with `filter_wise`.

    Dot products of the offsets are accumulated over chunks (rows for filter_wise), so no copy of
    all offsets is held.
    """
    n = len(tensors)
    if filter_wise:
        rows = base.reshape(1, -1) if base.dim() < 2 else base.reshape(base.shape[0], -1)
        step = max(1, chunk // max(1, rows.shape[1]))
    else:
        rows = base.reshape(1, -1)
        step = 1
    views = [t.reshape(rows.shape) for t in tensors]
    gram = torch.zeros(n, n, rows.shape[0], dtype=torch.float64, device=base.device)
    if filter_wise:
        for r in range(0, rows.shape[0], step):
            offs = [v[r:r + step].float() - rows[r:r + step].float() for v in views]
            for i in range(n):
                for j in range(i, n):
                    gram[i, j, r:r + step] += (offs[i] * offs[j]).sum(dim=-1).double()
    else:
        flat_b = rows.reshape(-1)
        flats = [v.reshape(-1) for v in views]
        for s in range(0, flat_b.numel(), chunk):
            b = flat_b[s:s + chunk].float()
            offs = [f[s:s + chunk].float() - b for f in flats]  # each converted once
            for i in range(n):
                for j in range(i, n):  # fp32 products, pairwise-summed per chunk, chunks summed in fp64
                    gram[i, j, 0] += float((offs[i] * offs[j]).sum())
    cos = []
    for i in range(n):
        for j in range(i + 1, n):
            den = (gram[i, i].sqrt() * gram[j, j].sqrt()).clamp(min=eps)
            cos.append((gram[i, j] / den).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0)
    den = 1 + (n - 1) * c
    singular = den.abs() < 1e-6  # c -> -1/(N-1): no finite estimate, keep the base (as mergekit)
    t = torch.where(singular, torch.zeros_like(c), n * c / torch.where(singular, torch.ones_like(den), den))
    return t.to(torch.float32)


def model_stock(base: torch.Tensor, tensors: Sequence[torch.Tensor], filter_wise: bool = False,
                clamp_t: tuple[float, float] | None = None, out_dtype: torch.dtype | None = None,
                chunk: int = CHUNK) -> torch.Tensor:
    """θ = t · mean θ_i + (1 − t) · θ_b with t from the pairwise cosines of the offsets.

    Inputs in any float dtype; the result is built over row chunks in fp32 and written in `out_dtype`.
    """
    if len(tensors) < 2:
        raise ValueError("model_stock needs at least two models besides the base")
    t = model_stock_t(base, tensors, filter_wise)
    if clamp_t is not None:
        t = t.clamp(clamp_t[0], clamp_t[1])
    per_row = filter_wise and base.dim() >= 2
    rows_b = base.reshape(base.shape[0], -1) if base.dim() >= 2 else base.reshape(1, -1)
    views = [x.reshape(rows_b.shape) for x in tensors]
    out = torch.empty(base.shape, dtype=out_dtype or torch.float32, device=base.device)
    rows_o = out.reshape(rows_b.shape)
    step = max(1, chunk // max(1, rows_b.shape[1]))
    tt = t.reshape(()) if t.numel() == 1 else t.reshape(-1, 1)
    for r in range(0, rows_b.shape[0], step):
        sl = slice(r, r + step)
        avg = views[0][sl].to(torch.float32, copy=True)
        for x in views[1:]:
            avg.add_(x[sl].float())
        avg.div_(len(tensors))
        ts = tt[sl] if per_row else tt
        avg.mul_(ts)
        avg.add_(rows_b[sl].float() * (1 - ts))
        rows_o[sl] = avg.to(out.dtype)
    return out
