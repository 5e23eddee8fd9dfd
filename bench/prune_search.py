"""Speed and memory of the BlockPruner search: naive loop vs exact fast search vs lazy search vs the
layer-streamed exact search (`--offload`).

    python bench/prune_search.py [--model /work/cache/smollm2] [--blocks 8] [--samples 16] [--seq-len 256]
                                 [--modes naive,fast,lazy,offload] [--parallel 2 --threads 1]

Each search runs in its own subprocess (--parallel N of them at a time) on the same calibration windows (Alpaca-style
instruction/output records from shared/data/alpaca_eval). Prints a table (wall time, time relative to
naive, ratio, final calibration ppl, sequence identical to naive?, peak memory) and writes JSON to
bench/results/prune_search.json. Memory, per subprocess:
- CUDA: `torch.cuda.max_memory_allocated()` over the search (weights, activations, streams);
- CPU: `peak RSS` = the process's ru_maxrss (VmHWM: includes file-backed pages of the memory-mapped
  safetensors it touched), `peak anon` = the highest RssAnon sampled every 5 ms by a thread (the
  process's own allocations: weights copied out of the file, activations, streams), both from
  process start, so including the Python/torch/transformers baseline (`base anon`, measured after
  the tokenizer and calibration windows, before any weight is read);
- both: `weights` = the largest parameter bytes on the device at once (the whole model for
  naive/fast/lazy; for offload the streamer's count: the largest single layer, embedding or head).
Time: wall seconds of the search, and its CPU seconds (process user + system time, all threads). On
a shared or busy machine, or with --parallel, compare CPU seconds with --threads 1: they count the
work done, not the waiting.
Targets (issue 3): fast <= 0.6x naive with the identical sequence; lazy <= 0.25x naive; offload the
identical sequence with at most one layer's weights on the device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("COMPRESS_SHARED", ROOT.parent / "shared")) / "data" / "alpaca_eval" / "model_outputs.json"


def _anon_kib() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class AnonPeak:
    """Samples RssAnon every 5 ms in a thread: the peak of the process's own (anonymous) memory."""

    def __init__(self) -> None:
        import threading

        self.peak = _anon_kib()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _anon_kib())

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak, _anon_kib()) * 1024


def worker(args: argparse.Namespace) -> dict:
    import torch

    from compress.arch import family_for
    from compress.checkpoint.reader import Checkpoint
    from compress.data import load_windows
    from compress.model import load_model, load_tokenizer
    from compress.model.device import parse_device
    from compress.progress import set_quiet
    from compress.prune.evaluators import FastEvaluator, NaiveEvaluator
    from compress.prune.offload import OffloadEvaluator, StreamedRunner, build_skeleton, stored_dtype
    from compress.prune.params import checkpoint_params
    from compress.prune.run import compute_dtype
    from compress.prune.score import BlockRunner
    from compress.prune.search import GreedySearch, StopRule
    from compress.prune.units import block_units

    set_quiet(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dev = parse_device(args.device)
    ckpt = Checkpoint(args.model)
    fam = family_for(ckpt.config, ckpt.names())
    tok = load_tokenizer(args.model)
    windows = load_windows(DATA, tok, args.seq_len, args.samples, args.seed, "instruction,output")
    params = checkpoint_params(ckpt)
    base_anon = _anon_kib() * 1024  # imports, tokenizer and calibration windows: before any weight
    sampler = AnonPeak()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t_load = time.perf_counter()
    dtype = compute_dtype(args.dtype, dev)
    if args.mode == "offload":
        runner = StreamedRunner(build_skeleton(ckpt, dtype or stored_dtype(ckpt), dev), fam, ckpt, dev)
    else:
        model = load_model(args.model, dev, dtype, ckpt=ckpt)
        runner = BlockRunner(model, fam)
    load_s = time.perf_counter() - t_load
    units = block_units(runner.n_layers, "mix", set(range(runner.n_positions)), params.blocks)
    if args.mode != "offload":
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
    t0, c0 = time.perf_counter(), time.process_time()
    search = "fast" if args.mode == "offload" else args.mode
    if args.mode == "naive":
        ev = NaiveEvaluator(runner, windows, args.batch_size)
    elif args.mode == "offload":
        ev = OffloadEvaluator(runner, windows, args.batch_size)
    else:
        ev = FastEvaluator(runner, windows, args.batch_size)
    res = GreedySearch(ev, units, stop=StopRule(blocks=args.blocks), total_params=params.total,
                       search=search, lazy_m=args.lazy_m, lazy_every=args.lazy_every).run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if args.mode == "offload":
        weights = runner.streamer.peak_bytes
    mem = {"weights_bytes": weights, "base_anon_bytes": base_anon, "peak_anon_bytes": sampler.stop(),
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if cuda:
        mem["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    peak = mem["cuda_max_allocated_bytes"] if cuda else mem["peak_anon_bytes"]
    return {"mode": args.mode, "seconds": wall, "cpu_seconds": cpu, "load_seconds": load_s, "sequence": res.sequence,
            "ratio": res.steps[-1].ratio, "ppl": res.steps[-1].ppl, "dense_ppl": res.dense_ppl, "tokens": res.tokens,
            "evaluated": sum(s.evaluated for s in res.steps), "abandoned": sum(s.abandoned for s in res.steps),
            "could_differ": res.could_differ, "peak_memory_bytes": peak, "memory": mem,
            "peak_memory_measure": "cuda max_memory_allocated" if cuda else "sampled peak RssAnon of the process",
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
    ap.add_argument("--modes", default="naive,fast,lazy,offload")
    ap.add_argument("--parallel", type=int, default=1, help="searches run at a time (use --threads 1 with it)")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "prune_search.json"))
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(worker(args)))
        return
    runs = {}
    passthrough, skip = [], False
    for a in sys.argv[1:]:  # everything but --modes (as "--modes X" or "--modes=X")
        if skip or a.startswith("--modes"):
            skip = a == "--modes" and not skip
            continue
        passthrough.append(a)
    modes = args.modes.split(",")
    pending, running = list(modes), {}
    while pending or running:  # --parallel N: N searches at a time (then compare their CPU seconds)
        while pending and len(running) < args.parallel:
            mode = pending.pop(0)
            print(f"running {mode} ...", file=sys.stderr, flush=True)
            log = tempfile.TemporaryFile("w+")
            running[mode] = (subprocess.Popen([sys.executable, __file__, *passthrough, "--mode", mode],
                                              stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT), log)
        done = [m for m, (p, _) in running.items() if p.poll() is not None]
        if not done:
            time.sleep(1)
            continue
        for mode in done:
            p, log = running.pop(mode)
            log.seek(0)
            text = log.read()
            if p.returncode != 0:
                sys.exit(f"{mode} failed:\n{text[-3000:]}")
            runs[mode] = json.loads(text.strip().splitlines()[-1])
    runs = {m: runs[m] for m in modes}
    base = runs.get("naive")
    print(f"\nBlockPruner search, {Path(args.model).name}, {args.blocks} blocks, {args.samples} windows x "
          f"{args.seq_len} tokens, {args.device} {args.dtype}")
    cuda = args.device.startswith("cuda")
    mem_cols = ("cuda MB",) if cuda else ("peak RSS", "peak anon", "base anon")
    print(f"{'search':<8}{'seconds':>10}{'x naive':>9}{'cpu s':>9}{'cpu x naive':>12}{'ratio %':>9}{'calib ppl':>11}{'identical':>11}"
          f"{'scored':>8}{'abandoned':>10}{'weights MB':>11}" + "".join(f"{c:>11}" for c in mem_cols))
    mb = 2.0 ** 20
    for mode, r in runs.items():
        rel = r["seconds"] / base["seconds"] if base else float("nan")
        crel = r["cpu_seconds"] / base["cpu_seconds"] if base else float("nan")
        r["cpu_x_naive"] = crel
        same = (r["sequence"] == base["sequence"]) if base else None
        r["x_naive"], r["identical_to_naive"] = rel, same
        m = r["memory"]
        mem = ((m["cuda_max_allocated_bytes"],) if cuda
               else (m["peak_rss_bytes"], m["peak_anon_bytes"], m["base_anon_bytes"]))
        print(f"{mode:<8}{r['seconds']:>10.1f}{rel:>9.2f}{r['cpu_seconds']:>9.0f}{crel:>12.2f}{100 * r['ratio']:>9.2f}{r['ppl']:>11.3f}{str(same):>11}"
              f"{r['evaluated']:>8}{r['abandoned']:>10}{m['weights_bytes'] / mb:>11.1f}"
              + "".join(f"{v / mb:>11.0f}" for v in mem))
    print("memory in MB; weights: the most parameter bytes on the device at once; " +
          ("cuda: torch.cuda.max_memory_allocated" if cuda else
           "peak RSS: ru_maxrss (incl. mmapped file pages); peak anon: sampled RssAnon; base anon: before loading"))
    for mode, r in runs.items():
        print(f"  {mode}: {' > '.join(r['sequence'])}" + (f"  (could differ at steps {r['could_differ']})"
                                                          if r["could_differ"] else ""))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": vars(args), "machine": platform.platform(),
                                          "cpus": os.cpu_count(), "runs": runs}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
