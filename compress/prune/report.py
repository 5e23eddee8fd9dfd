"""The pruning report: per-step JSON, a table, and a plot (ppl against parameters removed, and a map
of which attention / MLP blocks of which layers went)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.prune.score import block_at, block_name

REPORT_JSON = "prune_report.json"
REPORT_PNG = "prune_report.png"


def write_json(report: dict[str, Any], folder: Path) -> Path:
    path = Path(folder) / REPORT_JSON
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return path


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = [("0", "(dense)", f"{report['params']['dense']:,}", "0.00", f"{report['calibration']['dense_ppl']:.3f}")]
    for s in report["steps"]:
        rows.append((str(s["step"]), s["unit"], f"{s['params_left']:,}", f"{100 * s['ratio']:.2f}", f"{s['ppl']:.3f}"))
    return rows


def print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    from compress.progress import console

    t = Table(title=f"{report['method']} ({report['criterion']}, search {report['search']})")
    for col in ("step", "removed", "params left", "ratio %", "calib ppl"):
        t.add_column(col, justify="right" if col != "removed" else "left")
    for r in table_rows(report):
        t.add_row(*r)
    console.print(t)


def plot(report: dict[str, Any], path: Path) -> Path:
    """Two panels: calibration ppl vs % parameters removed; removal map (layers x attn/mlp)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = report["steps"]
    n_layers = report["layers"]
    x = [0.0] + [100 * s["ratio"] for s in steps]
    y = [report["calibration"]["dense_ppl"]] + [s["ppl"] for s in steps]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.25 * n_layers + 2), 7),
                                   gridspec_kw={"height_ratios": [3, 1.3]})
    ax1.plot(x, y, marker="o", ms=3)
    for s, xi, yi in zip(steps, x[1:], y[1:], strict=True):
        ax1.annotate(s["unit"].replace("attn ", "A").replace("mlp ", "M").replace("layer ", "L"), (xi, yi),
                     fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax1.set_xlabel("parameters removed (%)")
    ax1.set_ylabel("calibration perplexity")
    if y and max(y) / max(min(y), 1e-9) > 20:
        ax1.set_yscale("log")
    ax1.set_title(f"{report['method']} on {Path(str(report['model'])).name}")
    ax1.grid(alpha=0.3)

    grid = np.full((2, n_layers), np.nan)
    for layer, kind in report.get("already_removed", []):
        grid[0 if kind == "attn" else 1, layer] = 0
    for s in steps:
        for layer, kind in s["blocks"]:
            grid[0 if kind == "attn" else 1, layer] = s["step"]
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="#eeeeee")
    im = ax2.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0, vmax=max(1, len(steps)))
    ax2.set_yticks([0, 1], ["attn", "mlp"])
    ax2.set_xticks(range(n_layers), [str(i) for i in range(n_layers)], fontsize=6)
    ax2.set_xlabel("layer (grey: kept; colour: step removed, 0 = removed before)")
    fig.colorbar(im, ax=ax2, fraction=0.03, pad=0.01)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def build_report(cfg, result, chosen: list, *, source: str, windows, params_total: int, layers: int,
                 already: set[int], dtype: str, device: str, bi: list[float] | None = None,
                 offload: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of a run (`cfg` a PruneConfig, `result` the SearchResult, `chosen` its first K steps)."""
    last = chosen[-1]
    out: dict[str, Any] = {
        "model": cfg.model,
        "method": cfg.method,
        "block_type": cfg.block_type,
        "criterion": cfg.criterion,
        "search": cfg.search,
        "export": cfg.export,
        "dtype": dtype,
        "device": device,
        "layers": layers,
        "calibration": {"source": source, "windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]),
                        "tokens": result.tokens, "seed": cfg.seed, "dense_ppl": result.dense_ppl},
        "params": {"dense": params_total, "removed": last.params_removed, "left": last.params_left},
        "removed": [[int(layer), kind] for s in chosen for layer, kind in s.blocks],
        "sequence": [s.unit for s in chosen],
        "ratio": last.ratio,
        "ppl": last.ppl,
        "stopped": result.stopped,
        "search_seconds": result.seconds,
        "already_removed": [[int(layer), kind] for layer, kind in sorted(block_at(p) for p in already)],
        "steps": [s.as_dict() for s in chosen],
    }
    if cfg.search == "lazy":
        out["lazy"] = {"m": cfg.lazy_m, "every": cfg.lazy_every,
                       "could_differ": [{"step": s.step, "candidates": s.lazy["could_differ"]}
                                        for s in chosen if s.lazy and s.lazy.get("could_differ")]}
    if bi is not None:
        out["block_influence"] = {f"layer {i}": v for i, v in enumerate(bi)}
    if offload is not None:
        out["offload"] = offload
    if len(result.steps) > len(chosen):
        out["further_steps"] = [{"step": s.step, "unit": s.unit, "ratio": s.ratio, "ppl": s.ppl}
                                for s in result.steps[len(chosen):]]
    out["names"] = [block_name((b[0], b[1])) for b in out["removed"]]
    return out
