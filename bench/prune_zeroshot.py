"""Zero-shot accuracy of the pruned models of bench/prune_quality.py, through `compress eval` (lm-eval).

    python bench/prune_zeroshot.py [--quality bench/results/prune_quality.json] [--model /work/cache/smollm2]
                                   [--tasks piqa,winogrande,arc_easy,arc_challenge,boolq] [--limit 200]
                                   [--rows dense,blockpruner@0.2,...] [--resume]

For every row of the quality benchmark (dense and each method at each target ratio) the removal
sequence recorded there is exported as a real, physically smaller checkpoint (`compress prune`'s
exporter) and evaluated with `compress.evaluate` on the local copies of the papers' zero-shot tasks
(lm-eval 0.4, 0-shot, accuracy; the first --limit documents of each task). Results are written after
every model (resumable with --resume) to bench/results/prune_zeroshot.json, and the combined table
(ratio, perplexities from the quality benchmark, accuracies, average, search time) is printed as
Markdown, ready for the README.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def row_key(row: dict) -> str:
    return row["method"] if "target_ratio" not in row else f"{row['method']}@{row['target_ratio']:g}"


def removed_blocks(row: dict) -> list[tuple[int, str]]:
    """The blocks a row removed, from its recorded unit names ('attn 12', 'mlp 3', 'layer 17')."""
    out: list[tuple[int, str]] = []
    for unit in row.get("sequence", []):
        kind, idx = unit.split()
        out += [(int(idx), "attn"), (int(idx), "mlp")] if kind == "layer" else [(int(idx), kind)]
    return out


def table(quality: list[dict], zs: dict[str, dict], tasks: list[str]) -> str:
    head = ("| method | target | removed % | blocks (attn+mlp) | WikiText-2 ppl | held-out instr. ppl | "
            + " | ".join(tasks) + " | avg acc | search s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in quality:
        z = zs.get(row_key(r))
        accs = [f"{100 * z['acc'][t]:.1f}" if z else "-" for t in tasks]
        avg = f"{100 * sum(z['acc'][t] for t in tasks) / len(tasks):.1f}" if z else "-"
        tgt = f"{100 * r['target_ratio']:.0f}%" if "target_ratio" in r else "-"
        lines.append(f"| {r['method']} | {tgt} | {100 * r['ratio']:.1f} | {r['blocks']} ({r.get('attn', 0)}+"
                     f"{r.get('mlp', 0)}) | {r['wikitext2_ppl']:.1f} | {r['heldout_ppl']:.1f} | " + " | ".join(accs)
                     + f" | {avg} | {r['search_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", default=str(RESULTS / "prune_quality.json"))
    ap.add_argument("--model", default="/work/cache/smollm2")
    ap.add_argument("--tasks", default="piqa,winogrande,arc_easy,arc_challenge,boolq")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--rows", default="", help="comma list of row keys (dense, blockpruner@0.2, ...); default all")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="auto: as stored on GPU, fp32 on CPU")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "prune_zeroshot.json"))
    args = ap.parse_args()

    import compress
    from compress.progress import info
    from compress.prune.export import export_pruned

    quality = json.loads(Path(args.quality).read_text())
    rows = quality["rows"]
    tasks = args.tasks.split(",")
    out = Path(args.out)
    done = json.loads(out.read_text())["models"] if args.resume and out.exists() else {}
    wanted = set(args.rows.split(",")) if args.rows else None
    work = Path(tempfile.mkdtemp(prefix="prune_zs_"))
    try:
        for r in rows:
            key = row_key(r)
            if (wanted and key not in wanted) or key in done:
                continue
            blocks = removed_blocks(r)
            path = Path(args.model)
            if blocks:
                path = work / key.replace("@", "_")
                export_pruned(args.model, path, blocks)
            t0 = time.perf_counter()
            res = compress.evaluate(str(path), tasks, limit=args.limit, batch_size=args.batch_size,
                                    device=args.device, dtype=args.dtype, hash_models=False)
            model = res["models"][0]
            done[key] = {"acc": {t: model["results"][t]["value"] for t in tasks},
                         "n": {t: model["results"][t]["n"] for t in tasks}, "parameters": model["parameters"],
                         "blocks": blocks, "seconds": time.perf_counter() - t0}
            info(f"{key}: " + ", ".join(f"{t} {100 * v:.1f}" for t, v in done[key]["acc"].items()))
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"settings": vars(args), "tasks": tasks, "models": done}, indent=1))
            tmp.replace(out)
            if path != Path(args.model):
                shutil.rmtree(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows, done, tasks))


if __name__ == "__main__":
    main()
