"""Paired bootstrap intervals of the difference between two models scored on the same items.

For items i = 1..n scored a_i (first model) and b_i (other model), the difference is
d = mean(b) - mean(a). Each of B resamples draws n item indices with replacement (the same draw
for both models: paired) and takes the mean of b_i - a_i over them; the interval is the
(alpha/2, 1 - alpha/2) percentile of those B means (the percentile bootstrap). Items are matched
by id; an item only one model has is left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ITERS = 2000
LEVEL = 0.95


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, iters: int = ITERS, level: float = LEVEL,
                     seed: int = 0) -> dict[str, float | int]:
    """{diff, lo, hi, n, iters, level} for mean(b) - mean(a) on paired scores."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError("paired scores must be two non-empty lists of the same length")
    d = y - x
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(iters, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": int(d.size), "iters": iters, "level": level}


def item_scores(result: Mapping[str, Any]) -> dict[Any, float] | None:
    """{item id: score} of a task result whose items carry its primary metric, else None."""
    metric, items = result.get("metric"), result.get("items")
    if not metric or not items:
        return None
    out = {it["doc_id"]: float(it[metric]) for it in items if isinstance(it.get(metric), int | float | bool)}
    return out or None


def intervals(records: list[dict[str, Any]], tasks: list[str], *, iters: int = ITERS, seed: int = 0,
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """{model name: {task: interval in percentage points}} of every model against the first."""
    if len(records) < 2:
        return {}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in records[1:]:
        per: dict[str, dict[str, Any]] = {}
        for t in tasks:
            a = item_scores(records[0]["results"].get(t) or {})
            b = item_scores(rec["results"].get(t) or {})
            if not a or not b:
                continue
            ids = sorted(set(a) & set(b), key=str)
            if not ids:
                continue
            r = paired_bootstrap([a[i] for i in ids], [b[i] for i in ids], iters=iters, seed=seed)
            per[t] = {**r, "diff": 100 * r["diff"], "lo": 100 * r["lo"], "hi": 100 * r["hi"], "unit": "points"}
        out[rec["name"]] = per
    return out


def markdown(cis: dict[str, dict[str, dict[str, Any]]], base: str) -> str:
    """A table of the intervals: one row per model and task."""
    rows = [(m, t, r) for m, per in cis.items() for t, r in per.items()]
    if not rows:
        return ""
    lines = ["", f"Difference against {base}, percentage points, with a paired bootstrap "
             f"{int(100 * rows[0][2]['level'])}% interval ({rows[0][2]['iters']} resamples of the shared items):", "",
             "| model | task | difference | interval | items |", "|---|---|---:|---|---:|"]
    for m, t, r in rows:
        lines.append(f"| {m} | {t} | {r['diff']:+.2f} | [{r['lo']:+.2f}, {r['hi']:+.2f}] | {r['n']} |")
    return "\n".join(lines) + "\n"
