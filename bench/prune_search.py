"""Speed of the BlockPruner search: naive loop vs exact fast search vs lazy search.

    python bench/prune_search.py [--model /work/cache/smollm2] [--blocks 8] [--samples 16] [--seq-len 256]

Each search runs in its own subprocess (so peak memory is per search: max RSS on CPU, max allocated
on CUDA) on the same calibration windows (Alpaca-style instruction/output records from
shared/data/alpaca_eval). Prints a table (wall time, time relative to naive, ratio, final calibration
ppl, sequence identical to naive?, peak memory) and writes JSON to bench/results/prune_search.json.
Targets (issue 3): fast <= 0.6x naive with the identical sequence; lazy <= 0.25x naive.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("COMPRESS_SHARED", ROOT.parent / "shared")) / "data" / "alpaca_eval" / "model_outputs.json"


def worker(args: argparse.Namespace) -> dict:
    import torch

    from compress.arch import family_for
    from compress.checkpoint.reader import Checkpoint
    from compress.data import load_windows
    from compress.model import load
    from compress.progress import set_quiet
    from compress.prune.params import checkpoint_params
    from compress.prune.score import BlockRunner
    from compress.prune.search import FastEvaluator, GreedySearch, NaiveEvaluator, StopRule, block_units

    set_quiet(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = Checkpoint(args.model)
    model, tok = load(args.model, args.device, args.dtype)
    windows = load_windows(DATA, tok, args.seq_len, args.samples, args.seed, "instruction,output")
    params = checkpoint_params(ckpt)
    runner = BlockRunner(model, family_for(ckpt.config, ckpt.names()))
    units = block_units(runner.n_layers, "mix", set(range(runner.n_positions)), params.blocks)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    ev = (NaiveEvaluator(runner, windows, args.batch_size) if args.mode == "naive"
          else FastEvaluator(runner, windows, args.batch_size))
    res = GreedySearch(ev, units, stop=StopRule(blocks=args.blocks), total_params=params.total,
                       search=args.mode, lazy_m=args.lazy_m, lazy_every=args.lazy_every).run()
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"mode": args.mode, "seconds": wall, "sequence": res.sequence, "ratio": res.steps[-1].ratio,
            "ppl": res.steps[-1].ppl, "dense_ppl": res.dense_ppl, "tokens": res.tokens,
            "evaluated": sum(s.evaluated for s in res.steps), "abandoned": sum(s.abandoned for s in res.steps),
            "could_differ": res.could_differ, "peak_memory_bytes": peak,
            "steps": [{"unit": s.unit, "ppl": s.ppl, "ratio": s.ratio, "seconds": s.seconds} for s in res.steps]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/work/cache/smollm2")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--lazy-m", type=int, default=8)
    ap.add_argument("--lazy-every", type=int, default=0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--modes", default="naive,fast,lazy")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "prune_search.json"))
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(worker(args)))
        return
    runs = {}
    passthrough = [a for a in sys.argv[1:] if not a.startswith("--modes")]
    for mode in args.modes.split(","):
        print(f"running {mode} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, *passthrough, "--mode", mode], capture_output=True, text=True,
                             cwd=ROOT)
        if out.returncode != 0:
            sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    base = runs.get("naive")
    print(f"\nBlockPruner search, {Path(args.model).name}, {args.blocks} blocks, {args.samples} windows x "
          f"{args.seq_len} tokens, {args.device} {args.dtype}")
    print(f"{'search':<8}{'seconds':>10}{'x naive':>9}{'ratio %':>9}{'calib ppl':>11}{'identical':>11}"
          f"{'scored':>8}{'abandoned':>10}{'peak MB':>9}")
    for mode, r in runs.items():
        rel = r["seconds"] / base["seconds"] if base else float("nan")
        same = (r["sequence"] == base["sequence"]) if base else None
        r["x_naive"], r["identical_to_naive"] = rel, same
        print(f"{mode:<8}{r['seconds']:>10.1f}{rel:>9.2f}{100 * r['ratio']:>9.2f}{r['ppl']:>11.3f}{str(same):>11}"
              f"{r['evaluated']:>8}{r['abandoned']:>10}{r['peak_memory_bytes'] / 2**20:>9.0f}")
    for mode, r in runs.items():
        print(f"  {mode}: {' > '.join(r['sequence'])}" + (f"  (could differ at steps {r['could_differ']})"
                                                          if r["could_differ"] else ""))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": vars(args), "machine": platform.platform(),
                                          "cpus": os.cpu_count(), "runs": runs}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
