"""Spherical linear interpolation of two weight tensors (Shoemake 1985; as used by mergekit/FuseChat).

v̂ = v/‖v‖ (only if ‖v‖ > 1e-8), d = ⟨v̂_0, v̂_1⟩ over the flattened tensor;
|d| > 0.9995: θ = (1−t)·v_0 + t·v_1; otherwise, with Ω = arccos d,
θ = [sin((1−t)Ω)·v_0 + sin(tΩ)·v_1] / sin Ω on the unnormalised tensors.
t = 0 gives v_0 (the base), t = 1 gives v_1. Computed in torch (fp64 for the angle) on any device.
"""

from __future__ import annotations

import math

import torch

from compress.merge.methods.stream import CHUNK

DOT_THRESHOLD = 0.9995


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float = 1e-8, chunk: int = CHUNK // 2,
          out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Interpolate from v0 (t=0) to v1 (t=1) along the great circle through their directions.

    Norms and the dot product are accumulated over flat chunks in fp64, and the result is written
    chunk by chunk in `out_dtype` (inputs in any float dtype), so no full-size fp32 copy is made.
    The chunk's fp64 temporaries (1 MiB) stay below glibc's mmap threshold (see stream.tune_malloc),
    so they are reused, not faulted in afresh for every chunk.
    """
    a, b = v0.reshape(-1), v1.reshape(-1)
    na2 = nb2 = ab = 0.0
    for start in range(0, a.numel(), chunk):
        x, y = a[start:start + chunk].double(), b[start:start + chunk].double()
        na2 += float(x @ x)
        nb2 += float(y @ y)
        ab += float(x @ y)
    na, nb = math.sqrt(na2), math.sqrt(nb2)
    dot = ab / ((na if na > eps else 1.0) * (nb if nb > eps else 1.0))
    dot = max(-1.0, min(1.0, dot))
    if abs(dot) > DOT_THRESHOLD:
        c0, c1 = 1 - t, t
    else:
        omega = math.acos(dot)
        s = math.sin(omega)
        c0, c1 = math.sin((1 - t) * omega) / s, math.sin(t * omega) / s
    out = torch.empty(v0.shape, dtype=out_dtype or torch.float32, device=v0.device)
    flat = out.reshape(-1)
    for start in range(0, a.numel(), chunk):
        sl = slice(start, start + chunk)
        x = a[sl].float() * c0
        flat[sl] = x.add_(b[sl].float(), alpha=c1).to(out.dtype)
    return out
