"""FuseChat's merge step, small: fine-tune SmolLM2 targets on different domains, merge, measure.

    python bench/merge_varm_domains.py [--model /work/cache/smollm2] [--steps 150] [--seq-len 128]

1. Two targets are fine-tuned from the pivot (SmolLM2-135M-Instruct), each on one domain of
   /work/shared/data (80% of the documents; the last 20% are held out):
   - math:     GSM8K test questions + worked answers
   - instruct: AlpacaEval instructions + text-davinci-003 answers
   Full fine-tuning, AdamW, fp32, short windows (CPU-sized; see --steps / --seq-len).
2. The targets are merged into the pivot with varm, linear, task_arithmetic and ties (compress merge).
3. Perplexity of every model on each domain's held-out text and on WikiText-2 test (the pivot's
   general text, to see forgetting).

Prints a markdown table and writes bench/results/merge_varm_domains.json. Re-running reuses
fine-tuned targets found in the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from this checkout, whatever the working directory
DATA = Path(os.environ.get("COMPRESS_SHARED", ROOT.parent / "shared")) / "data"
WORK = Path(os.environ.get("COMPRESS_BENCH_WORK", "/tmp/compress-bench-varm"))


def domain_docs() -> dict[str, list[str]]:
    gsm = [json.loads(x) for x in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines() if x.strip()]
    alp = json.loads((DATA / "alpaca_eval" / "model_outputs.json").read_text())
    return {"math": [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in gsm],
            "instruct": [f"Instruction: {r['instruction']}\nResponse: {r['output']}" for r in alp]}


def write_splits(docs: dict[str, list[str]]) -> dict[str, dict[str, Path]]:
    out = {}
    for name, items in docs.items():
        cut = int(0.8 * len(items))
        paths = {}
        for split, part in (("train", items[:cut]), ("test", items[cut:])):
            p = WORK / "data" / f"{name}.{split}.jsonl"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
            paths[split] = p
        out[name] = paths
    return out


def finetune(model_dir: Path, train: Path, out: Path, steps: int, seq_len: int, batch: int, lr: float, seed: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress.data.text import load_windows

    if (out / "config.json").is_file():
        return json.loads((out / "finetune.json").read_text())
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    windows = load_windows(train, tok, seq_len, field="text")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        idx = torch.randint(0, windows.shape[0], (batch,), generator=g)
        ids = windows[idx]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if step % 25 == 0 or step == steps - 1:
            print(f"  {out.name} step {step + 1}/{steps} loss {sum(losses[-25:]) / len(losses[-25:]):.3f}", file=sys.stderr, flush=True)
    model.eval()
    tmp = out.with_name(out.name + ".tmp")
    model.to(torch.bfloat16).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    report = {"steps": steps, "seq_len": seq_len, "batch": batch, "lr": lr, "seed": seed, "train": str(train),
              "windows": int(windows.shape[0]), "first_loss": losses[0], "last_loss": sum(losses[-25:]) / len(losses[-25:]),
              "seconds": round(time.perf_counter() - t0, 1)}
    (tmp / "finetune.json").write_text(json.dumps(report, indent=1))
    os.replace(tmp, out)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("COMPRESS_SMOLLM2", "/work/cache/smollm2"))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--eval-seq-len", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=24)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "merge_varm_domains.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    import compress
    from compress import progress

    progress.set_quiet(True)
    base = Path(args.model)
    WORK.mkdir(parents=True, exist_ok=True)
    splits = write_splits(domain_docs())
    targets, ft = {}, {}
    for i, name in enumerate(splits):
        out = WORK / f"target-{name}"
        ft[name] = finetune(base, splits[name]["train"], out, args.steps, args.seq_len, args.batch, args.lr, seed=i)
        targets[name] = out
    t = [str(p) for p in targets.values()]
    merges = {
        "varm": dict(method="varm"),
        "linear": dict(method="linear", recipe={"merge_method": "linear", "models": [{"model": m} for m in t]}),
        "task_arithmetic": dict(method="task_arithmetic", parameters={"weight": 1.0}),
        "ties": dict(method="ties", parameters={"weight": 1.0, "density": 0.5}),
    }
    models = {"pivot (SmolLM2-135M-Instruct)": base, **{f"target {k}": v for k, v in targets.items()}}
    for name, spec in merges.items():
        out = WORK / f"merged-{name}"
        if "recipe" in spec:
            compress.merge(spec["recipe"], out, force=True)
        else:
            compress.merge(None, out, method=spec["method"], base=str(base), models=t,
                           parameters=spec.get("parameters"), force=True)
        models[f"merge {name}"] = out
    evals = {**{k: v["test"] for k, v in splits.items()}, "wiki": DATA / "wikitext-2-raw" / "wiki.test.raw"}
    rows = []
    for label, path in models.items():
        row = {"model": label}
        for dom, data in evals.items():
            r = compress.perplexity(path, data, seq_len=args.eval_seq_len, max_windows=args.eval_windows,
                                    field="text" if dom != "wiki" else None)
            row[dom] = round(r["ppl"], 3)
        rows.append(row)
        print(f"{label:32s} " + " ".join(f"{d} {row[d]:8.3f}" for d in evals), file=sys.stderr, flush=True)
    print(f"\n| model | {' | '.join(f'ppl {d}' for d in evals)} |")
    print("|---|" + "---|" * len(evals))
    for r in rows:
        print(f"| {r['model']} | " + " | ".join(f"{r[d]:.2f}" for d in evals) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "finetune": ft, "eval": {k: str(v) for k, v in evals.items()},
                                          "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
