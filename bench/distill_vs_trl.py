"""One distillation step against TRL: `compress distill train` vs TRL's DPOTrainer and GKDTrainer.

The same model, pairs, batch size, maximum length and precision through both tools, each tool in its
own process (so that its peak RSS is its own), under `nice`:

- DPO: `compress distill train --method dpo` against `trl.DPOTrainer`, twice: TRL's default (its
  reference model runs a forward every step) and `precompute_ref_log_probs=True` (the reference
  log-probs computed once before training, which is what compress always does).
- Memory policy: TRL 1.16's configs default to activation (gradient) checkpointing; `compress-*` runs
  use `--activation-checkpointing` to match it, `compress-*-nockpt` runs compress's default (keep the
  activations: less compute, more memory).
- KD where the losses coincide: `compress distill train --method kd --k 0 --w-sft 0` (forward KL to the
  teacher's full distribution, token mean over response tokens) against TRL's GKDTrainer with
  `lmbda=0` (no student generations) and `beta=0` (forward KL). Student: the model with its upper
  layers removed (a plain Llama checkpoint both tools load); teacher: the model.

Pairs: HH-RLHF harmless-base test pairs whose prompt + response fits --max-length for both responses
(nothing is truncated, so both tools see the same token sequences). Steady state: the first
--warmup optimizer steps are skipped; each measured step lasts from the end of the previous step to
its own end (data, forward, backward, optimizer). Tokens are the real (non-padding) tokens each
tool reports for its own batches. CPU seconds are the process's user + system time over the same
steps (all threads).

    nice -n 10 python bench/distill_vs_trl.py --steps 6 --warmup 2 --batch-size 4 --max-length 256

Prints a table and writes bench/results/distill_vs_trl.json.
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
DATA = Path(os.environ.get("COMPRESS_SHARED", ROOT.parent / "shared")) / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl"
TOOLS = ("compress-dpo", "trl-dpo", "trl-dpo-precomputed", "compress-dpo-nockpt", "compress-kd", "trl-gkd",
         "compress-kd-nockpt")


# ---------------------------------------------------------------- inputs (in the parent process)

def prepare_pairs(args, work: Path) -> tuple[Path, int]:
    """The first pairs whose prompt + response fits --max-length for both responses, as prompt/chosen/
    rejected chat messages (both tools render them with the model's chat template)."""
    from compress.data.preference import read_preference, split_record
    from compress.data.text import parse_jsonl
    from compress.model import load_tokenizer

    tok = load_tokenizer(args.model)
    need = args.batch_size * (args.warmup + args.steps)
    rows = []
    for lineno, rec in parse_jsonl(Path(args.data).read_text(encoding="utf-8"), Path(args.data)):
        prompt, resp = split_record(rec, f"line {lineno}")
        if not (resp["chosen"].strip() and resp["rejected"].strip()):
            continue
        rows.append({"prompt": prompt, **{s: [{"role": "assistant", "content": resp[s]}] for s in ("chosen", "rejected")}})
        if len(rows) >= max(400, 8 * need):
            break
    probe = work / "probe.jsonl"
    probe.write_text("".join(json.dumps(r) + "\n" for r in rows))
    full = read_preference(probe, tok, max_length=100_000)
    keep = [rows[e.line - 1] for e in full.examples
            if max(len(e.prompt) + len(e.responses[s]) for s in ("chosen", "rejected")) < args.max_length][:need]
    if len(keep) < need:
        raise SystemExit(f"only {len(keep)} pairs fit --max-length {args.max_length}; need {need}")
    out = work / "pairs.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in keep))
    tokens = sum(len(e.prompt) * 2 + len(e.responses["chosen"]) + len(e.responses["rejected"])
                 for e in read_preference(out, tok, max_length=args.max_length).examples)
    return out, tokens


def make_student(model: str, out: Path, keep_layers: int) -> Path:
    """The model with only its first `keep_layers` decoder layers: a plain checkpoint of the same family."""
    if (out / "config.json").is_file():
        return out
    from compress.model import load

    m, tok = load(model, "cpu", "fp32")
    m.model.layers = m.model.layers[:keep_layers]
    m.config.num_hidden_layers = keep_layers
    if getattr(m.config, "layer_types", None):
        m.config.layer_types = m.config.layer_types[:keep_layers]
    m.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


# ---------------------------------------------------------------- workers (one process each)

def _steady(ends: list[tuple[float, float, int]], warmup: int) -> dict:
    """Per-step (wall, cpu, tokens) from cumulative values at step ends; steps after `warmup` only."""
    steps = [(b[0] - a[0], b[1] - a[1], b[2] - a[2]) for a, b in zip(ends[warmup - 1:], ends[warmup:], strict=False)]
    wall, cpu, tok = (sum(x[i] for x in steps) for i in range(3))
    return {"steps": len(steps), "wall_s": wall, "cpu_s": cpu, "tokens": tok, "tokens_per_s": tok / wall,
            "s_per_step": wall / len(steps), "step_wall_s": [round(x[0], 3) for x in steps]}


def run_compress(args, work: Path) -> dict:
    from compress.cli import main

    out = work / f"out-{args.worker}"
    ckpt = [] if args.worker.endswith("-nockpt") else ["--activation-checkpointing"]
    common = [*ckpt, "--data", str(args.pairs), "--max-steps", str(args.warmup + args.steps), "--batch-size",
              str(args.batch_size), "--max-length", str(args.max_length), "--lr", str(args.lr), "--warmup-ratio", "0",
              "--scheduler", "constant_with_warmup", "--precision", "fp32", "--seed", "0", "-o", str(out), "--force"]
    if args.worker.startswith("compress-dpo"):
        argv = ["distill", "train", args.model, "--method", "dpo", "--beta", str(args.beta), *common]
    else:
        argv = ["distill", "train", str(args.student), "--method", "kd", "--teacher", args.model, "--k", "0",
                "--w-sft", "0", "--kd-direction", "forward", *common]
    if main(argv) != 0:
        raise SystemExit(f"compress failed: {argv}")
    hist = json.loads((out / "compress.json").read_text())["history"]
    ends, t, c, n = [], 0.0, 0.0, 0
    for h in hist:  # compress records each step's own wall/cpu seconds and tokens; make them cumulative
        t, c, n = t + h["time_s"], c + h["cpu_s"], n + h["tokens"]
        ends.append((t, c, n))
    return _steady(ends, args.warmup)


def run_trl(args, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    ends: list[tuple[float, float, int]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):  # noqa: ARG002
            ends.append((time.perf_counter(), time.process_time(), state.num_input_tokens_seen))

    rows = [json.loads(x) for x in Path(args.pairs).read_text().splitlines()]
    common = dict(output_dir=str(work / f"out-{args.worker}"), per_device_train_batch_size=args.batch_size,
                  max_length=args.max_length, learning_rate=args.lr, lr_scheduler_type="constant_with_warmup",
                  warmup_steps=0, max_steps=args.warmup + args.steps, logging_steps=1, save_strategy="no",
                  report_to="none", use_cpu=True, bf16=False, seed=0, disable_tqdm=True, dataloader_num_workers=0,
                  include_num_input_tokens_seen="non_padding")
    tok = AutoTokenizer.from_pretrained(args.model)
    if args.worker.startswith("trl-dpo"):
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        cfg = DPOConfig(beta=args.beta, precompute_ref_log_probs=args.worker == "trl-dpo-precomputed", **common)
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             callbacks=[StepClock()])
    else:
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        student = AutoModelForCausalLM.from_pretrained(str(args.student), dtype=torch.float32)
        teacher = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        msgs = [{"messages": r["prompt"] + r["chosen"]} for r in rows]
        cfg = GKDConfig(lmbda=0.0, beta=0.0, **common)
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=Dataset.from_list(msgs),
                             processing_class=tok, callbacks=[StepClock()])
    trainer.train()
    return _steady(ends, args.warmup)


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    res = run_compress(args, work) if args.worker.startswith("compress") else run_trl(args, work)
    res.update(tool=args.worker, peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               torch_threads=torch.get_num_threads())
    print(json.dumps(res))


# ---------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("COMPRESS_SMOLLM2", "/work/models/smollm2"))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--student-layers", type=int, default=24, help="KD student: the model's first N layers.")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default).")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "distill_vs_trl.json"))
    ap.add_argument("--worker", choices=TOOLS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pairs", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--student", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.warmup < 1:
        raise SystemExit("--warmup must be at least 1 (a step's time runs from the previous step's end)")
    work = Path(args.work or tempfile.mkdtemp(prefix="distill_vs_trl."))
    work.mkdir(parents=True, exist_ok=True)
    pairs, pair_tokens = prepare_pairs(args, work)
    tools = [t for t in args.tools.split(",") if t]
    student = make_student(args.model, work / "student", args.student_layers) if any("kd" in t for t in tools) else None
    results = {}
    for tool in tools:
        cmd = ["nice", "-n", str(args.nice), sys.executable, __file__, "--worker", tool, "--work", str(work),
               "--pairs", str(pairs), "--student", str(student), "--model", args.model]
        for k in ("steps", "warmup", "batch_size", "max_length", "lr", "beta", "threads"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        t0 = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
        if out.returncode != 0:
            raise SystemExit(f"{tool} failed:\n{out.stderr[-4000:]}")
        results[tool] = {**json.loads(out.stdout.strip().splitlines()[-1]), "process_wall_s": time.time() - t0}
        r = results[tool]
        print(f"{tool:22} {r['tokens_per_s']:8.1f} tok/s {r['s_per_step']:7.2f} s/step  cpu {r['cpu_s']:7.1f} s  "
              f"peak {r['peak_rss_bytes'] / 2**20:6.0f} MiB", flush=True)
    ratios = {}
    for ours, theirs in (("compress-dpo", "trl-dpo"), ("compress-dpo", "trl-dpo-precomputed"), ("compress-kd", "trl-gkd"),
                         ("compress-dpo-nockpt", "trl-dpo"), ("compress-kd-nockpt", "trl-gkd")):
        if ours in results and theirs in results:
            a, b = results[ours], results[theirs]
            ratios[f"{ours} / {theirs}"] = {"tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
                                            "peak_rss": a["peak_rss_bytes"] / b["peak_rss_bytes"],
                                            "cpu_s_per_token": (a["cpu_s"] / a["tokens"]) / (b["cpu_s"] / b["tokens"])}
    for k, v in ratios.items():
        print(f"{k:40} speed {v['tokens_per_s']:.2f}x  peak RSS {v['peak_rss']:.2f}x  CPU s/token {v['cpu_s_per_token']:.2f}x")
    import torch
    import trl

    rec = {"bench": "distill_vs_trl", "model": args.model, "data": str(args.data), "pairs": str(pairs),
           "pair_tokens": pair_tokens, "batch_size": args.batch_size, "max_length": args.max_length,
           "warmup_steps": args.warmup, "steps": args.steps, "precision": "fp32", "device": "cpu",
           "student_layers": args.student_layers, "nice": args.nice, "cpus": os.cpu_count(),
           "loadavg_at_end": os.getloadavg(), "machine_shared": True, "versions": {"torch": torch.__version__,
                                                                                  "trl": trl.__version__},
           "results": results, "ratios": ratios, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rec, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
