"""JSON that is always JSON: NaN and ±Infinity (which `json.dumps` writes as bare `NaN`/`Infinity`,
rejected by every strict parser) become `null`, and the object says which values they were.

    >>> dumps({"ppl": float("nan"), "windows": 8})
    '{"ppl": null, "windows": 8, "non_finite": {"ppl": "NaN (not representable in JSON, written as null)"}}'
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any

NON_FINITE_KEY = "non_finite"


def finite(obj: Any, path: str = "") -> tuple[Any, dict[str, str]]:
    """A copy of `obj` (dicts, lists, tuples, numbers) with every NaN/Inf number replaced by None, and
    {dotted path: what it was} for each one replaced."""
    bad: dict[str, str] = {}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out[k], sub = finite(v, f"{path}.{k}" if path else str(k))
            bad.update(sub)
        return out, bad
    if isinstance(obj, (list, tuple)):
        items = []
        for i, v in enumerate(obj):
            item, sub = finite(v, f"{path}[{i}]")
            items.append(item)
            bad.update(sub)
        return items, bad
    if isinstance(obj, numbers.Real) and not isinstance(obj, (bool, numbers.Integral)):
        x = float(obj)
        if not math.isfinite(x):
            return None, {path or "value": f"{'NaN' if math.isnan(x) else ('-' if x < 0 else '') + 'Infinity'} "
                                          "(not representable in JSON, written as null)"}
        return x, bad
    return obj, bad


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps` that never writes NaN/Infinity (see the module docstring); other values it cannot
    encode are written as their `str`."""
    clean, bad = finite(obj)
    if bad and isinstance(clean, dict):
        clean[NON_FINITE_KEY] = {**(clean.get(NON_FINITE_KEY) or {}), **bad}
    kwargs.setdefault("default", str)
    return json.dumps(clean, allow_nan=False, **kwargs)
