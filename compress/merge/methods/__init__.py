"""Merge methods by name: each entry says which inputs and parameters it takes and how it merges one tensor.

The mathematics lives in the sibling modules as pure functions; the `Method` entries here only
adapt a `Job` (one tensor name: the base tensor, the other models' tensors and their resolved
parameters) to those functions. Parameter names and defaults follow mergekit, except SCE's variant
(`sce_mask_deltas`, default false: FuseChat-2.0's SCE; see `sce`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from compress.errors import CompressError
from compress.merge.methods.linear import linear
from compress.merge.methods.model_stock import model_stock
from compress.merge.methods.sce import sce
from compress.merge.methods.slerp import slerp
from compress.merge.methods.sparsify import RESCALES, TIE_BREAKS
from compress.merge.methods.stream import Lazy
from compress.merge.methods.task_arithmetic import generalized_task_arithmetic, tensor_generator
from compress.merge.methods.varm import GRANULARITIES, NORMS, ZERO_FALLBACKS, varm_merge

__all__ = ["METHODS", "Job", "Method", "Param", "get_method", "tensor_generator"]


@dataclass(frozen=True)
class Param:
    """A parameter: default (None = required), and a check returning a problem or None."""

    default: Any
    kind: type = float
    check: Callable[[Any], str | None] | None = None

    @property
    def required(self) -> bool:
        return self.default is None and self.kind is not object


@dataclass
class Job:
    """Everything a method needs to merge one tensor."""

    name: str
    base: torch.Tensor | None
    tensors: list[torch.Tensor]
    model_params: list[dict[str, Any]]
    params: dict[str, Any]
    seed: int = 0
    model_ids: list[int] = field(default_factory=list)
    weights: torch.Tensor | None = None  # precomputed per-model weights (VaRM's statistics pass)
    load: Callable[[int], torch.Tensor] | None = None  # lazy methods read model i on demand
    out_dtype: torch.dtype | None = None  # the result's dtype (None: fp32); arithmetic is fp32 per chunk
    device: torch.device | None = None  # where the arithmetic runs (None: the inputs' device)

    def get(self, i: int) -> torch.Tensor:
        """Model i's tensor (read again on each call for lazy methods: nothing is kept in between)."""
        return self.tensors[i] if self.load is None else self.load(i)

    def inputs(self) -> Iterator[torch.Tensor]:
        """The non-base tensors, one at a time (read on demand for lazy methods)."""
        if self.load is None:
            yield from self.tensors
        else:
            for i in range(len(self.model_params)):
                yield self.load(i)


@dataclass(frozen=True)
class Method:
    name: str
    merge: Callable[[Job], torch.Tensor]  # inputs in any float dtype (never modified); fp32 per chunk
    per_model: dict[str, Param]
    shared: dict[str, Param]
    needs_base: bool = True
    min_models: int = 1  # models besides the base
    max_models: int | None = None
    random: bool = False
    two_pass: bool = False
    lazy: bool = False  # reads one model at a time through Job.load (constant memory in the model count)
    summary: str = ""


# ---- checks --------------------------------------------------------------------------------
def _density(v: float) -> str | None:
    return None if 0 < v <= 1 else f"density must be in (0, 1], got {v}"


def _nonneg(v: float) -> str | None:
    return None if v >= 0 else f"must be >= 0 for this method, got {v}"


def _unit(v: float) -> str | None:
    return None if 0 <= v <= 1 else f"must be in [0, 1], got {v}"


def _gamma(v: float) -> str | None:
    return None if 0 <= v < 1 else f"gamma must be in [0, 1), got {v}"


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def _choice(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}, got {v!r}"


def _rescale_check(v: Any) -> str | None:
    return None if isinstance(v, bool) or v in RESCALES else \
        f"must be true, false or one of {', '.join(RESCALES)}, got {v!r}"


# ---- adapters: a Job -> the method's pure function -----------------------------------------
def _linear(job: Job) -> torch.Tensor:
    return linear(job.inputs(), [p["weight"] for p in job.model_params], job.params["normalize"],
                  out_dtype=job.out_dtype, device=job.device)


def _gta(sparsifier: str | None, consensus: str | None) -> Callable[[Job], torch.Tensor]:
    def run(job: Job) -> torch.Tensor:
        assert job.base is not None
        return generalized_task_arithmetic(
            job.base, len(job.model_params), job.get, job.model_params, job.params, sparsifier, consensus,
            lambda i: tensor_generator(job.seed, job.model_ids[i], job.name), out_dtype=job.out_dtype,
            device=job.device)
    return run


def _slerp(job: Job) -> torch.Tensor:
    assert job.base is not None
    return slerp(job.params["t"], job.base, job.tensors[0], out_dtype=job.out_dtype)


def _model_stock(job: Job) -> torch.Tensor:
    assert job.base is not None
    clamp = job.params.get("clamp_t")
    return model_stock(job.base, job.tensors, job.params["filter_wise"], (0.0, 1.0) if clamp else None,
                       out_dtype=job.out_dtype)


def _sce(job: Job) -> torch.Tensor:
    assert job.base is not None
    inputs = job.tensors if job.load is None else Lazy(len(job.model_params), job.get)
    return sce(job.base, inputs, job.params["select_topk"], job.params["sce_mask_deltas"],
               out_dtype=job.out_dtype, device=job.device, tie_break=job.params.get("tie_break", "sort"))


def _varm(job: Job) -> torch.Tensor:
    assert job.base is not None and job.weights is not None
    return varm_merge(job.base, job.inputs(), job.weights, out_dtype=job.out_dtype)


WEIGHT = Param(1.0, float)  # every float parameter must be finite (checked where it is parsed)
WEIGHT_NONNEG = Param(1.0, float, _nonneg)
DENSITY = Param(1.0, float, _density)
LAMBDA = Param(1.0, float)
INT8 = Param(False, bool)
TIE_BREAK = Param("sort", str, _choice(TIE_BREAKS))


def _gta_method(name: str, sparsifier: str | None, consensus: str | None, normalize: bool, rescale: bool,
                summary: str) -> Method:
    per_model: dict[str, Param] = {"weight": WEIGHT_NONNEG if consensus else WEIGHT}
    if sparsifier:
        per_model["density"] = DENSITY
    if sparsifier == "breadcrumbs":
        per_model["gamma"] = Param(0.01, float, _gamma)
    if sparsifier == "della":
        per_model["epsilon"] = Param(0.15, float, _nonneg)
    shared = {"normalize": Param(normalize, bool), "lambda": LAMBDA, "int8_mask": INT8}
    if sparsifier:
        shared["rescale"] = Param(rescale, object, _rescale_check)
    if sparsifier in ("magnitude", "breadcrumbs"):
        shared["tie_break"] = TIE_BREAK
    return Method(name, _gta(sparsifier, consensus), per_model, shared, random=sparsifier in ("dare", "della"),
                  lazy=True, summary=summary)


METHODS: dict[str, Method] = {
    "linear": Method("linear", _linear, {"weight": WEIGHT_NONNEG}, {"normalize": Param(True, bool)},
                     needs_base=False, lazy=True, summary="weighted average (model soup)"),
    # task arithmetic = the TIES combine without trimming or consensus (same arithmetic order as mergekit)
    "task_arithmetic": Method("task_arithmetic", _gta(None, None), {"weight": WEIGHT},
                              {"normalize": Param(False, bool), "lambda": LAMBDA}, lazy=True,
                              summary="base + λ Σ w_i δ_i"),
    "ties": _gta_method("ties", "magnitude", "sum", True, False, "trim, elect sign, disjoint merge"),
    "dare_ties": _gta_method("dare_ties", "dare", "sum", False, True, "random drop + rescale, TIES consensus"),
    "dare_linear": _gta_method("dare_linear", "dare", None, False, True, "random drop + rescale, task arithmetic"),
    "breadcrumbs": _gta_method("breadcrumbs", "breadcrumbs", None, False, False, "drop small and outlier deltas"),
    "breadcrumbs_ties": _gta_method("breadcrumbs_ties", "breadcrumbs", "sum", False, False,
                                    "breadcrumbs + TIES consensus"),
    "della": _gta_method("della", "della", "sum", True, True, "magnitude-ranked drop, TIES consensus"),
    "della_linear": _gta_method("della_linear", "della", None, False, True, "magnitude-ranked drop, task arithmetic"),
    "slerp": Method("slerp", _slerp, {}, {"t": Param(None, float, _unit)}, min_models=1, max_models=1,
                    summary="spherical interpolation base -> other"),
    "model_stock": Method("model_stock", _model_stock, {}, {"filter_wise": Param(False, bool),
                                                            "clamp_t": Param(False, bool)},
                          min_models=2, summary="Model Stock interpolation toward the mean"),
    "sce": Method("sce", _sce, {}, {"select_topk": Param(1.0, float, _nonneg), "int8_mask": INT8,
                                    "sce_mask_deltas": Param(False, bool), "tie_break": TIE_BREAK}, lazy=True,
                  summary="select by variance, weight by energy, erase minority signs"),
    "varm": Method("varm", _varm, {}, {"granularity": Param("matrix", str, _choice(GRANULARITIES)),
                                       "norm": Param("sum", str, _choice(NORMS)),
                                       "temperature": Param(1.0, float, _positive),
                                       "zero_fallback": Param("pivot", str, _choice(ZERO_FALLBACKS))},
                   two_pass=True, lazy=True, summary="FuseChat variation-ratio merge (weights from mean Δ²)"),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise CompressError(f"unknown merge_method {name!r}: use one of {', '.join(METHODS)}") from None
