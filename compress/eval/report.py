"""The comparison table of `compress eval`: one row per model, one column per task, the average,
parameters and size on disk, and the change against the first model; as Markdown and a bar plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def average(values: list[float]) -> float | None:
    """Unweighted mean: the papers' Avg column is the plain mean of the task numbers."""
    return sum(values) / len(values) if values else None


def build_table(models: list[dict[str, Any]], tasks: list[str]) -> dict[str, Any]:
    """Rows of {name, task values (percent for accuracies), average, params, size, deltas vs row 0}."""
    rows = []
    for m in models:
        row: dict[str, Any] = {"model": m["name"], "parameters": m.get("parameters"), "size_on_disk": m.get("size_on_disk")}
        accs = []
        for t in tasks:
            r = m["results"].get(t)
            if r is None:
                row[t] = None
            elif t == "ppl":
                row[t] = r["ppl"]
            else:
                row[t] = 100.0 * r["value"]
                accs.append(row[t])
        row["average"] = average(accs)
        rows.append(row)
    base = rows[0] if rows else {}
    for row in rows[1:]:
        delta: dict[str, Any] = {}
        for k in (*tasks, "average", "parameters", "size_on_disk"):
            a, b = row.get(k), base.get(k)
            if a is None or b is None:
                delta[k] = None
            elif k in ("parameters", "size_on_disk", "ppl"):
                delta[k] = (a - b) / b * 100.0 if b else None  # relative, percent
            else:
                delta[k] = a - b  # percentage points
        row["delta"] = delta
    return {"columns": [*tasks, "average", "parameters", "size_on_disk"], "rows": rows,
            "units": {"accuracy": "percent", "ppl": "perplexity", "delta_accuracy": "points",
                      "delta_ppl_parameters_size": "percent of the first model"}}


def _human(n: float | None, unit: str = "") -> str:
    if n is None:
        return "-"
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suf}{unit}"
    return f"{n:.0f}{unit}"


def _signed(x: float | None, suffix: str) -> str:
    return "" if x is None else f" ({x:+.2f}{suffix})"


def markdown(table: dict[str, Any], tasks: list[str], metrics: dict[str, str]) -> str:
    """A Markdown table; rows after the first show their change against the first in parentheses."""
    heads = ["model", *[f"{t} ({metrics.get(t, '')})" for t in tasks], "avg", "params", "size"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] + ["---:"] * (len(heads) - 1)) + "|"]
    for row in table["rows"]:
        d = row.get("delta") or {}
        cells = [row["model"]]
        for t in tasks:
            v = row.get(t)
            fmt = "-" if v is None else (f"{v:.3f}" if t == "ppl" else f"{v:.2f}")
            cells.append(fmt + _signed(d.get(t), "%" if t == "ppl" else ""))
        cells.append(("-" if row["average"] is None else f"{row['average']:.2f}") + _signed(d.get("average"), ""))
        cells.append(_human(row.get("parameters")) + _signed(d.get("parameters"), "%"))
        cells.append(_human(row.get("size_on_disk"), "B") + _signed(d.get("size_on_disk"), "%"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_plot(table: dict[str, Any], tasks: list[str], path: str | os.PathLike[str]) -> Path:
    """Grouped bars: accuracy per task (and the average) for each model; perplexity on its own axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc_cols = [t for t in tasks if t != "ppl"] + (["average"] if any(t != "ppl" for t in tasks) else [])
    has_ppl = "ppl" in tasks
    ncols = (1 if acc_cols else 0) + (1 if has_ppl else 0)
    fig, axes = plt.subplots(1, ncols, figsize=(max(6, 1.3 * len(acc_cols) + 3), 4),
                             gridspec_kw={"width_ratios": ([max(1, len(acc_cols))] if acc_cols else []) + ([1] if has_ppl else [])},
                             squeeze=False)
    rows = table["rows"]
    width = 0.8 / max(1, len(rows))
    ax_i = 0
    if acc_cols:
        ax = axes[0][ax_i]
        ax_i += 1
        for i, row in enumerate(rows):
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(acc_cols))]
            ax.bar(xs, [row.get(c) or 0.0 for c in acc_cols], width, label=row["model"])
        ax.set_xticks(range(len(acc_cols)), acc_cols, rotation=30, ha="right")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize="small")
    if has_ppl:
        ax = axes[0][ax_i]
        ax.bar(range(len(rows)), [row.get("ppl") or 0.0 for row in rows],
               color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=30, ha="right")
        ax.set_ylabel("perplexity (lower is better)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
