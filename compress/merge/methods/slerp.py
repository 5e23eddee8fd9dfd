"""Spherical linear interpolation of two weight tensors (Shoemake 1985; as used by mergekit/FuseChat).

v̂ = v/‖v‖ (only if ‖v‖ > 1e-8), d = ⟨v̂_0, v̂_1⟩ over the flattened tensor;
|d| > 0.9995: θ = (1−t)·v_0 + t·v_1; otherwise, with Ω = arccos d,
θ = [sin((1−t)Ω)·v_0 + sin(tΩ)·v_1] / sin Ω on the unnormalised tensors.
t = 0 gives v_0 (the base), t = 1 gives v_1. Computed in torch (fp64 for the angle) on any device.
"""

from __future__ import annotations

import math

import torch

DOT_THRESHOLD = 0.9995


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Interpolate from v0 (t=0) to v1 (t=1) along the great circle through their directions."""
    a = v0.reshape(-1).double()
    b = v1.reshape(-1).double()
    na, nb = a.norm(), b.norm()
    ua = a / na if na > eps else a
    ub = b / nb if nb > eps else b
    dot = float((ua * ub).sum())
    if abs(dot) > DOT_THRESHOLD:
        return (1 - t) * v0 + t * v1
    omega = math.acos(dot)
    s = math.sin(omega)
    s0 = math.sin((1 - t) * omega) / s
    s1 = math.sin(t * omega) / s
    return s0 * v0 + s1 * v1
