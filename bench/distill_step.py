"""Speed of one distillation training step: cached teacher vs online teacher.

Student: SmolLM2-135M-Instruct with ~20% of its blocks removed (`compress.prune.export`, physical);
teacher: SmolLM2-135M-Instruct. Loss: dckd (CE on chosen + KL on chosen and rejected, k = 50), on
HH-RLHF harmless-base pairs. Each mode runs in its own process so that peak memory is its own
(CPU: peak RSS; CUDA: max allocated). Tokens/s counts every prompt+response token the student
processes (chosen and rejected sequences).

    python bench/distill_step.py --model /work/cache/smollm2 --steps 6 --batch-size 4 --max-length 256

Prints a table and writes bench/results/distill_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl"


def make_student(model: str, out: Path, fraction: float) -> Path:
    from compress.checkpoint.reader import Checkpoint
    from compress.prune.export import export_pruned

    if (out / "config.json").is_file():
        return out
    n = Checkpoint(model).config["num_hidden_layers"]
    k = round(2 * n * fraction)  # blocks to remove: whole upper layers (attn + mlp), as BlockPruner tends to
    removed = []
    layer = n - 2
    while len(removed) < k:
        removed += [(layer, "attn"), (layer, "mlp")][: k - len(removed)]
        layer -= 1
    export_pruned(model, out, removed)
    return out


def run_mode(args) -> dict:
    import torch

    from compress.data.preference import read_preference
    from compress.distill.config import DistillConfig
    from compress.distill.forward import response_logits
    from compress.distill.methods import batch_loss
    from compress.distill.teacher import CachedTeacher, OnlineTeacher, write_cache
    from compress.model import load_model, load_tokenizer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    dev = torch.device(args.device)
    tok = load_tokenizer(args.model)
    data = read_preference(args.data, tok, args.max_length, limit=args.batch_size * (args.steps + args.warmup))
    exs = data.examples
    if args.mode == "cached":
        cache = Path(args.work) / "cache"
        if not (cache / "cache.json").is_file():
            t = load_model(args.model, dev, args.dtype)
            write_cache(cache, t, tok, data, ("chosen", "rejected"), args.k, args.model, batch_size=args.batch_size)
            del t
        signal = CachedTeacher(cache, data, tok, ("chosen", "rejected"))
    else:
        signal = OnlineTeacher(load_model(args.model, dev, args.dtype), args.k)
    student = load_model(args.student, dev, "fp32").train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-6)
    cfg = DistillConfig(method="dckd", k=args.k)
    ac = torch.autocast(dev.type, dtype=torch.bfloat16) if args.dtype == "bf16" else torch.autocast(dev.type, enabled=False)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, tokens = [], 0
    for i in range(args.warmup + args.steps):
        batch = exs[i * args.batch_size: (i + 1) * args.batch_size]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with ac:
            loss, _ = batch_loss(cfg, lambda b: response_logits(student, b), batch, tok.pad_token_id, signal)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            tokens += sum(len(e.prompt) * 2 + len(e.responses["chosen"]) + len(e.responses["rejected"]) for e in batch)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"mode": args.mode, "steps": len(times), "seconds": sum(times), "tokens": tokens,
            "tokens_per_s": tokens / sum(times), "s_per_step": sum(times) / len(times), "peak_bytes": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("COMPRESS_SMOLLM2", "/work/cache/smollm2"))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--prune-fraction", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--mode", choices=["both", "cached", "online"], default="both")
    ap.add_argument("--work", default=None, help="Folder for the pruned student and the cache (default: temp).")
    ap.add_argument("--student", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "distill_step.json"))
    args = ap.parse_args()
    if args.mode != "both":
        print(json.dumps(run_mode(args)))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="distill_step."))
    student = Path(args.student) if args.student else make_student(args.model, work / "student", args.prune_fraction)
    results = {}
    for mode in ("cached", "online"):  # cached first: it also writes the cache (not timed)
        cmd = [sys.executable, __file__, "--mode", mode, "--work", str(work), "--student", str(student)]
        for k in ("model", "data", "steps", "warmup", "batch_size", "max_length", "k", "device", "dtype", "threads"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    speedup = results["cached"]["tokens_per_s"] / results["online"]["tokens_per_s"]
    print(f"{'teacher':8} {'tokens/s':>10} {'s/step':>8} {'peak MiB':>9}")
    for mode, r in results.items():
        print(f"{mode:8} {r['tokens_per_s']:10.1f} {r['s_per_step']:8.2f} {r['peak_bytes'] / 2**20:9.0f}")
    print(f"cached / online speed: {speedup:.2f}x (target >= 2x)")
    rec = {"bench": "distill_step", "model": args.model, "student": str(student), "method": "dckd", "k": args.k,
           "batch_size": args.batch_size, "max_length": args.max_length, "device": args.device, "dtype": args.dtype,
           "torch_threads": args.threads or "default", "results": results, "speedup": speedup,
           "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rec, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
