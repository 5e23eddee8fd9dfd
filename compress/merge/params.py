"""Merge parameters: checking a recipe's parameter blocks and resolving each tensor's values.

A value is a scalar, a gradient or a filter list (`recipe.evaluate_setting`); every leaf a setting can
produce is checked before any work, against the method's `Param` (kind, range) and for finiteness,
and each error names the field and its line in the recipe.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from compress.errors import CompressError
from compress.merge.methods import Method, Param
from compress.merge.recipe import Recipe, evaluate_setting, setting_leaves
from compress.model.device import DTYPES


def field_line(lines: dict[tuple, int], path: tuple) -> str:
    """' (line N)' of the innermost recorded field on `path`, or ''."""
    for i in range(len(path), -1, -1):
        if path[:i] in lines:
            return f" (line {lines[path[:i]]})"
    return ""


def dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def coerce(method: Method, key: str, value: Any, where: str) -> Any:
    """A parameter value in its kind (float, bool, str), checked; CompressError naming `where`."""
    spec = method.per_model.get(key) or method.shared.get(key)
    assert spec is not None
    kind = spec.kind
    try:
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif kind is bool:
            if not isinstance(value, bool):
                raise ValueError
        elif kind is str:
            value = str(value)
    except (TypeError, ValueError, OverflowError):
        raise CompressError(f"{where}: {key} must be a {kind.__name__}, got {value!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise CompressError(f"{where}: {key} must be a finite number, got {value}")
    if spec.check is not None:
        problem = spec.check(value)
        if problem is not None:
            raise CompressError(f"{where}: {key}: {problem}")
    return value


def check_parameter_blocks(recipe: Recipe, method: Method, lines: dict[tuple, int]) -> None:
    """Unknown parameters and out-of-range values, reported with their line before any work."""
    blocks: list[tuple[tuple, dict[str, Any] | None, bool]] = [(("parameters",), recipe.parameters, True)]
    for i, m in enumerate(recipe.models or []):
        blocks.append((("models", i, "parameters"), m.parameters, False))
    for i, s in enumerate(recipe.slices or []):
        blocks.append((("slices", i, "parameters"), s.parameters, True))
        for j, src in enumerate(s.sources):
            blocks.append((("slices", i, "sources", j, "parameters"), src.parameters, False))
    known = set(method.per_model) | set(method.shared)
    for path, params, shared_ok in blocks:
        for key, setting in (params or {}).items():
            where = f"{dotted(path + (key,))}{field_line(lines, path + (key,))}"
            if key not in known:
                raise CompressError(f"{where}: unknown parameter {key!r} for merge_method {method.name} "
                                    f"(known: {', '.join(sorted(known)) or 'none'})")
            if not shared_ok and key in method.shared and key not in method.per_model:
                raise CompressError(f"{where}: {key} is a global parameter of {method.name}: set it under the top-level parameters")
            for leaf in setting_leaves(setting):
                coerce(method, key, leaf, where)


def resolve(method: Method, key: str, spec: Param, scopes: list[Any], tensor: str, t: float,
            where: str = "parameters") -> Any:
    """The value of `key` for one tensor at depth t: the first scope that sets it, else the default."""
    for scope in scopes:
        if scope and key in scope:
            v = evaluate_setting(scope[key], tensor, t)
            if v is not None:
                return coerce(method, key, v, where)
    if spec.required:
        raise CompressError(f"merge_method {method.name} needs the parameter {key!r} (missing for tensor {tensor})")
    return spec.default


def check_model_params(method: Method, mp: dict[str, Any], tensor: str, model: str) -> None:
    """Checks that need two parameters of one model (DELLA's density and epsilon)."""
    if "epsilon" in mp and mp["density"] < 1:
        rho, eps = mp["density"], mp["epsilon"]
        if not (rho - eps > 0 and rho + eps < 1):
            raise CompressError(f"{method.name}: density {rho} and epsilon {eps} must satisfy 0 < density - epsilon "
                                f"and density + epsilon < 1 (tensor {tensor}, model {model})")


def check_weights(method: Method, model_params: list[dict[str, Any]], tensor: str) -> None:
    """A linear merge whose weights are all 0 would write an all-zero tensor: refuse it."""
    if method.name == "linear" and model_params and sum(p["weight"] for p in model_params) == 0:
        raise CompressError(f"linear: the weights of tensor {tensor} sum to 0, so the merge would be all zeros: "
                            f"give at least one model a positive weight")


def parse_dtype(name: str | None, field_: str, lines: dict[tuple, int]) -> torch.dtype | None:
    if name is None or name == "auto":
        return None
    d = DTYPES.get(str(name).lower())
    if d is None:
        raise CompressError(f"{field_}{field_line(lines, (field_,))}: unknown dtype {name!r}: use bfloat16, float16 or float32")
    return d


def resolve_model(ref: str, recipe_dir: Path | None, where: str) -> Path:
    """A recipe's model reference -> a local model folder (relative to the recipe's folder too)."""
    if "+" in ref and not Path(ref).exists():
        raise CompressError(f"{where}: LoRA references (model+lora) are not supported: merge the LoRA first")
    for cand in [Path(ref), *([recipe_dir / ref] if recipe_dir is not None else [])]:
        if cand.is_dir():
            return cand.resolve()
    raise CompressError(f"{where}: model folder {ref!r} not found (compress works offline: give a local folder)")
