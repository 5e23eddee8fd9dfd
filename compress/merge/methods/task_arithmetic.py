"""Task arithmetic and its sparsified variants (mergekit's "generalized task arithmetic").

With δ_i = θ_i − θ_b, weights w_i and a global scale λ:
- task arithmetic (Ilharco et al. 2023, arXiv 2212.04089): θ = θ_b + λ · Σ_i w_i δ_i, the sum divided
  by Σ_i w_i if `normalize` (a divisor with |Σw| < 1e-8 becomes 1, as mergekit);
- dare_linear, breadcrumbs, della_linear: the same on sparsified δ̃_i (`sparsify`);
- ties, dare_ties, breadcrumbs_ties, della: δ̃_i combined with TIES sign consensus (`ties.merge_sparse`).

Each model's selection is made one model at a time (its input read, δ formed, input released), so
the memory peak - a whole-tensor sort or histogram of |δ| - never coexists with the other inputs.
Random masks come from `tensor_generator(seed, model index, tensor name)`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from compress.merge.methods.sparsify import breadcrumbs_plan, dare_plan, della, magnitude_plan
from compress.merge.methods.stream import Sparse, f32, full_delta, spans
from compress.merge.methods.ties import merge_sparse


def tensor_generator(seed: int, model_index: int, tensor_name: str) -> torch.Generator:
    """A CPU generator seeded from hash(seed, model index, tensor name): independent of order and device."""
    digest = hashlib.sha256(f"{seed}\0{model_index}\0{tensor_name}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def rescale_mode(v: Any) -> str:
    """mergekit's `rescale: true` is L1-norm matching; strings pick explicitly."""
    if v is True:
        return "l1"
    if v is False:
        return "none"
    return str(v)


def sparsify_plan(x: torch.Tensor, base: torch.Tensor, sparsifier: str | None, params: dict[str, Any],
                  rescale: str, tie_break: str, generator: Callable[[], torch.Generator],
                  device: torch.device | None = None) -> Sparse:
    """The sparsification of δ = x − base for one model (`params`: its density, gamma, epsilon)."""
    rho = params.get("density", 1.0)
    if sparsifier is None or rho >= 1:
        return Sparse()
    d = full_delta(x, base, device)
    del x  # released before the selection, the memory peak
    if int(torch.count_nonzero(d)) == 0:
        return Sparse()  # δ = 0 (an unchanged tensor): every selection keeps only zeros
    if sparsifier == "magnitude":
        return magnitude_plan(d, rho, rescale, tie_break)
    if sparsifier == "dare":
        return dare_plan(d, rho, rescale, generator())
    if sparsifier == "breadcrumbs":
        return breadcrumbs_plan(d, rho, params["gamma"], rescale, tie_break)
    if sparsifier == "della":
        return Sparse(dense=della(d, rho, params["epsilon"], rescale, generator()))
    raise ValueError(f"unknown sparsifier {sparsifier!r}")


def weighted_delta_sum(base: torch.Tensor, inputs: Sequence[Callable[[], torch.Tensor]], plans: list[Sparse],
                       weights: Sequence[float], normalize: bool, lam: float,
                       out_dtype: torch.dtype | None = None, device: torch.device | None = None) -> torch.Tensor:
    """θ_b + λ · (Σ_i w_i δ̃_i) / Σ_i w_i, one model resident at a time.

    Summed in model order (bit-identical to summing the stack) in one fp32 buffer chunk by chunk;
    `inputs[i]()` reads model i, and its plan is dropped once it has been added.
    """
    dev = device or base.device
    mixed: torch.Tensor | None = None
    for i, w in enumerate(weights):
        x, plan = inputs[i](), plans[i]
        first = mixed is None
        if mixed is None:
            mixed = torch.empty(base.numel(), dtype=torch.float32, device=dev)
        for sl in spans(base.numel()):
            d = plan.apply(f32(x, sl, dev) - f32(base, sl, dev), sl)
            d.mul_(float(w))
            if first:
                mixed[sl] = d
            else:
                mixed[sl].add_(d)
        plans[i] = Sparse()  # drop the mask
        del plan, x
    if mixed is None:
        return base.to(out_dtype or torch.float32)
    divisor = None
    if normalize:
        total = torch.tensor([float(w) for w in weights], dtype=torch.float32).sum()
        divisor = torch.where(total.abs() < 1e-8, torch.ones_like(total), total).item()
    out = torch.empty(base.shape, dtype=out_dtype or torch.float32)
    flat = out.reshape(-1)
    for sl in spans(base.numel()):
        m = mixed[sl]
        if divisor is not None:
            m.div_(divisor)
        if lam != 1:
            m.mul_(lam)
        flat[sl] = m.add_(f32(base, sl, dev)).to(out.dtype)
    return out


def generalized_task_arithmetic(base: torch.Tensor, n: int, get: Callable[[int], torch.Tensor],
                                model_params: list[dict[str, Any]], params: dict[str, Any],
                                sparsifier: str | None, consensus: str | None,
                                generator: Callable[[int], torch.Generator],
                                out_dtype: torch.dtype | None = None,
                                device: torch.device | None = None) -> torch.Tensor:
    """Sparsify each of the n models' δ (`get(i)` reads model i), then combine with or without consensus."""
    if n == 0:
        return base.to(out_dtype or torch.float32)
    rescale = rescale_mode(params.get("rescale", False))
    tie_break = params.get("tie_break", "sort")
    plans = []
    for i in range(n):
        plans.append(sparsify_plan(get(i), base, sparsifier, model_params[i], rescale, tie_break,
                                   lambda i=i: generator(i), device) if sparsifier else Sparse())
    weights = [p["weight"] for p in model_params]
    if consensus is None:
        return weighted_delta_sum(base, [lambda i=i: get(i) for i in range(n)], plans, weights,
                                  params["normalize"], params["lambda"], out_dtype, device)
    return merge_sparse(base, [get(i) for i in range(n)], plans, weights, consensus=consensus,
                        normalize=params["normalize"], lam=params["lambda"], out_dtype=out_dtype, device=device)
