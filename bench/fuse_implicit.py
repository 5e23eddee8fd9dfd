"""Implicit fusion on a small verifiable task: FuseChat-3.0 (SFT, SFT + LN-DPO), WRPO, DPO ablations, SEFT.

Target SmolLM2-135M-Instruct (chat template); sources Gemma-3-270M (base model, no chat template:
rendered plain with few-shot examples, see bench/fuse_implicit_data.py) and SmolLM2-135M-Instruct
fine-tuned on GSM8K train (made here with `compress distill train --method sft` if
/work/models/smollm2-gsm8k is missing). Every stage is a `compress` command, run in order:

 1. prompts: the task's prompt half cut into A (first third) and B (the rest); evaluation items come
    from the other half only.
 2. build-a: `compress fuse data A --source gemma3 --source smollm2-gsm8k` -> sft.jsonl (FuseChat SFT set).
 3. sft: target + SFT on it -> T_sft                                   [row: SFT (FuseChat-3.0 data)]
 4. build-b: `compress fuse data B --source ... --target T_sft` -> dpo.jsonl (same-source pairs), wrpo.jsonl
 5. ln-dpo: T_sft + LN-DPO on dpo.jsonl                                [row: SFT + LN-DPO (FuseChat-3.0)]
 6. wrpo: T_sft + WRPO on wrpo.jsonl                                   [row: WRPO, the three-stage recipe]
 7. dpo-ws / dpo-wt: T_sft + DPO on (y_ws, y_l) / (y_wt, y_l)          [rows: the paper's ablation]
 8. seft: target + SEFT: reviser from the samples of both builds, policy prompts B   [row: SEFT]
 9. eval: greedy answers of every row and of each source alone on the same held-out items, scored
    by the task's verifier; accuracy with a 95% bootstrap interval.
Every training stage runs the same number of optimizer steps with the same seed and batch size.
Each stage's output is kept under --work, so a rerun continues where it stopped; evaluation answers
are appended per batch. CPU seconds (children included) and the load average are recorded per stage
(the machine is shared: wall time is not a property of the code).

    nice -n 10 python bench/fuse_implicit.py --task arc_easy --prompts 96 --n 4 --steps 16 --eval-items 300

Writes bench/results/fuse_implicit.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from fuse_implicit_data import DATA, GSM_INSTRUCTION, task_files, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TARGET, GEMMA = "/work/models/smollm2", "/work/models/gemma3"
GSM8K_SOURCE = "/work/models/smollm2-gsm8k"
TASK = {  # max new tokens, stop strings, verifier
    "arc_easy": (8, ["\n\n", "Question:"], "choice"),
    "arc_easy_words": (24, ["\n", "Question:"], "choice"),
    "arc_easy_open": (16, ["\n", "Question:"], "closest"),
    "boolq": (6, ["\n"], "choice"),
    "gsm8k": (256, ["\n\nQuestion", "\n\n\n"], "gsm8k"),
}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Stages:
    """Runs each stage once; records its wall/CPU seconds and the load average around it."""

    def __init__(self, work: Path):
        self.work, self.file = work, work / "stages.json"
        self.done = json.loads(self.file.read_text()) if self.file.is_file() else {}

    def run(self, name: str, argv: list[str], marker: Path) -> None:
        """Runs the stage unless its output exists or another bench process holds its lock (independent stages
        can then run in two processes at once: each takes the stages the other has not started)."""
        if marker.exists():
            return
        lock = self.work / f".stage-{name}.running"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            print(f"  {name}: run by another process ({lock}); skipped here", flush=True)
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(argv)}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t0, c0, l0 = time.time(), children_cpu(), os.getloadavg()[0]
        subprocess.run([sys.executable, "-m", "compress", *argv], check=True, env=env)
        done = json.loads(self.file.read_text()) if self.file.is_file() else {}
        done[name] = {"wall_s": time.time() - t0, "cpu_s": children_cpu() - c0,
                      "load_start": l0, "load_end": os.getloadavg()[0]}
        self.done = done
        self.file.write_text(json.dumps(done, indent=2))
        lock.unlink()


# ------------------------------------------------------------------------------------- data
def gsm8k_sft_file(path: Path, n: int) -> Path:
    """GSM8K train as SFT records (calculator annotations <<...>> removed)."""
    rows = [json.loads(x) for x in (DATA / "gsm8k" / "train.jsonl").read_text().splitlines() if x.strip()]
    return write_jsonl(path, [{"prompt": f"{d['question']}\n{GSM_INSTRUCTION}",
                               "chosen": re.sub(r"<<[^>]*>>", "", d["answer"])} for d in rows[:n]])


def pair_view(src: Path, dst: Path, chosen: str) -> Path:
    """A DPO file from WRPO triples: (chosen field, rejected)."""
    rows = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
    return write_jsonl(dst, [{"prompt": r["prompt"], "chosen": r[chosen], "rejected": r["rejected"]} for r in rows])


# ------------------------------------------------------------------------------------- eval
def evaluate(name: str, model: str, items: list[dict], task: str, plain_format: str | None, out: Path,
             batch: int = 16) -> dict:
    """Greedy answers to `items` (appended to `out` per batch, resumable), scored by the task's verifier."""
    import torch

    from compress.fuse.render import Rendering
    from compress.fuse.sampling import sample
    from compress.fuse.scorers import make_verifier
    from compress.model import load

    max_new, stop, vname = TASK[task]
    done = [json.loads(x) for x in out.read_text().splitlines()] if out.is_file() else []
    todo = items[len(done):]
    c0, t0 = time.process_time(), time.time()
    if todo:
        model_, tok = load(model, "cpu", "bf16")
        r = Rendering(tok, name, "plain" if plain_format else "chat", plain_format or "{prompt}")
        r.check()
        verifier = make_verifier(vname)
        torch.manual_seed(0)
        with open(out, "a") as f:
            for b0 in range(0, len(todo), batch):
                chunk = todo[b0: b0 + batch]
                got, _ = sample(model_, tok, [r.prompt_ids(x["prompt"]) for x in chunk], 1, temperature=0.0,
                                max_new_tokens=max_new, stop=tuple(stop), batch_size=batch)
                texts = [g[0].text for g in got]
                scores = verifier.score([x["prompt"] for x in chunk], texts, [x["reference"] for x in chunk])
                for x, t, s in zip(chunk, texts, scores, strict=True):
                    f.write(json.dumps({"id": x["id"], "answer": t, "right": s}) + "\n")
                f.flush()
                print(f"  eval {name}: {len(done) + b0 + len(chunk)}/{len(items)}", flush=True)
        done = [json.loads(x) for x in out.read_text().splitlines()]
    right = [d["right"] for d in done[: len(items)]]
    lo, hi = bootstrap(right)
    return {"row": name, "model": model, "items": len(right), "acc": sum(right) / len(right), "ci95": [lo, hi],
            "cpu_s_this_run": time.process_time() - c0, "wall_s_this_run": time.time() - t0}


def bootstrap(xs: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    k = len(xs)
    means = sorted(sum(xs[rng.randrange(k)] for _ in range(k)) / k for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


# ------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="arc_easy", choices=sorted(TASK))
    ap.add_argument("--prompts", type=int, default=96, help="Prompts for the builds (A: a third, B: the rest).")
    ap.add_argument("--n", type=int, default=4, help="Samples per prompt per model.")
    ap.add_argument("--steps", type=int, default=16, help="Optimizer steps of every training stage.")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--sft-lr", type=float, default=2e-5)
    ap.add_argument("--pref-lr", type=float, default=5e-6)
    ap.add_argument("--eval-items", type=int, default=300)
    ap.add_argument("--shots", type=int, default=3, help="Few-shot examples of the plain (base-model) format.")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--gsm8k-source", default=GSM8K_SOURCE, help="Second source; 'none': Gemma-3-270M alone.")
    ap.add_argument("--gsm8k-steps", type=int, default=32)
    ap.add_argument("--work", default="/work/tmp_implicit/bench")
    ap.add_argument("--only-eval", action="store_true", help="Evaluate the models that exist; train nothing.")
    ap.add_argument("--eval-rows", default="", help="With --only-eval: comma list of row keys to evaluate "
                    "(target, gemma3, smollm2-gsm8k, sft, ln-dpo, wrpo, dpo-ws, dpo-wt, seft); default all.")
    ap.add_argument("--no-eval", action="store_true", help="Train only (evaluate later with --only-eval).")
    ap.add_argument("--skip", default="", help="Comma list of rows not to train/evaluate (e.g. wrpo).")
    a = ap.parse_args()
    work = Path(a.work) / a.task
    work.mkdir(parents=True, exist_ok=True)
    st = Stages(work)
    skip = {s for s in a.skip.split(",") if s}
    max_new, stop, vname = TASK[a.task]
    prompts, evals, plain_fmt = task_files(a.task, a.shots)
    k = a.prompts // 3
    pa, pb = write_jsonl(work / "A.jsonl", prompts[:k]), write_jsonl(work / "B.jsonl", prompts[k: a.prompts])
    evals = evals[: a.eval_items]
    src = a.gsm8k_source
    if a.only_eval:
        return run_eval(a, work, evals, plain_fmt, src, st)
    if src != "none" and not (Path(src) / "config.json").is_file():
        data = gsm8k_sft_file(work / "gsm8k_sft.jsonl", a.gsm8k_steps * a.batch_size)
        st.run("gsm8k-source", ["distill", "train", TARGET, "--method", "sft", "--data", str(data), "-o", src,
                                "--max-steps", str(a.gsm8k_steps), "--batch-size", str(a.batch_size), "--lr", "2e-5",
                                "--max-length", "384", "--seed", str(a.seed)], Path(src) / "compress.json")
    second = [] if src == "none" else ["--source", src]
    common = ["--source", GEMMA, "--plain", "gemma3", "--plain-format", plain_fmt, *second,
              "--verifier", vname, "--n", str(a.n), "--max-new-tokens", str(max_new), "--dtype", "bf16",
              "--batch-size", "16", "--shard-size", "8", "--seed", str(a.seed)] + [x for s in stop for x in ("--stop", s)]
    ba, bb = work / "build-a", work / "build-b"
    st.run("build-a", ["fuse", "data", str(pa), "-o", str(ba), *common], ba / "report.json")
    models = work / "models"
    train = ["--max-steps", str(a.steps), "--batch-size", str(a.batch_size), "--seed", str(a.seed), "--max-length", "512"]
    tsft = models / "sft"
    st.run("sft", ["distill", "train", TARGET, "--method", "sft", "--data", str(ba / "sft.jsonl"), "-o", str(tsft),
                   "--lr", str(a.sft_lr), *train], tsft / "compress.json")
    st.run("build-b", ["fuse", "data", str(pb), "-o", str(bb), *common, "--target", str(tsft)], bb / "report.json")
    pref = {"ln-dpo": ("ln-dpo", bb / "dpo.jsonl"), "wrpo": ("wrpo", bb / "wrpo.jsonl"),
            "dpo-ws": ("dpo", pair_view(bb / "wrpo.jsonl", work / "dpo_ws.jsonl", "source_chosen")),
            "dpo-wt": ("dpo", pair_view(bb / "wrpo.jsonl", work / "dpo_wt.jsonl", "chosen"))}
    for row, (method, data) in pref.items():
        if row in skip:
            continue
        st.run(row, ["distill", "train", str(tsft), "--method", method, "--data", str(data), "-o", str(models / row),
                     "--lr", str(a.pref_lr), *train], models / row / "compress.json")
    samples = work / "samples_ab.jsonl"
    if not samples.exists():
        samples.write_text((ba / "samples.jsonl").read_text() + (bb / "samples.jsonl").read_text())
    if "seft" not in skip:
        st.run("seft", ["distill", "seft", TARGET, "--samples", str(samples), "--prompts", str(pb), "-o",
                        str(models / "seft"), "--verifier", vname, "--max-new-tokens", str(max_new), "--dtype", "bf16",
                        "--lr", str(a.sft_lr), "--max-steps", str(a.steps), "--batch-size", str(a.batch_size),
                        "--seed", str(a.seed), "--max-length", "512"] + [x for s in stop for x in ("--stop", s)],
               models / "seft" / "compress.json")
    if not a.no_eval:
        run_eval(a, work, evals, plain_fmt, src, st)


def run_eval(a, work: Path, evals: list[dict], plain_fmt: str, src: str, st: Stages) -> None:
    models, tsft = work / "models", work / "models" / "sft"
    rows = [("target", TARGET, None), ("source: gemma3", GEMMA, plain_fmt),
            *([] if src == "none" else [("source: smollm2-gsm8k", src, None)]),
            ("SFT (FuseChat-3.0 data)", str(tsft), None), ("SFT + LN-DPO (FuseChat-3.0)", str(models / "ln-dpo"), None),
            ("SFT + WRPO", str(models / "wrpo"), None), ("SFT + DPO (y_ws, y_l)", str(models / "dpo-ws"), None),
            ("SFT + DPO (y_wt, y_l)", str(models / "dpo-wt"), None), ("SEFT", str(models / "seft"), None)]
    (work / "eval").mkdir(exist_ok=True)
    results = []
    keys = ["target", "gemma3", *([] if src == "none" else ["smollm2-gsm8k"]), "sft", "ln-dpo", "wrpo", "dpo-ws",
            "dpo-wt", "seft"]
    wanted = {k for k in a.eval_rows.split(",") if k}
    for key, (name, path, fmt) in zip(keys, rows, strict=True):
        if wanted and key not in wanted:
            continue
        if not (Path(path) / "config.json").is_file():
            print(f"  {name}: no model at {path} (skipped)", flush=True)
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        results.append(evaluate(name, path, evals, a.task, fmt, work / "eval" / f"{slug}.jsonl"))
    st.done = json.loads(st.file.read_text()) if st.file.is_file() else {}
    builds = {}
    for b in ("build-a", "build-b"):
        if not (work / b / "report.json").is_file():
            continue
        rep = json.loads((work / b / "report.json").read_text())
        builds[b] = {k: rep.get(k) for k in ("prompts", "models", "sft", "dpo", "wrpo", "throughput")}
    out = {"task": a.task, "settings": vars(a), "eval_items": len(evals), "rows": results, "builds": builds,
           "paired": paired(work / "eval", [r["row"] for r in results], len(evals)), "stages": st.done,
           "machine": "2 shared CPU cores (other jobs running; see load per stage)"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fuse_implicit.json").write_text(json.dumps(out, indent=2))
    print(f"\n| row | accuracy ({len(evals)} held-out {a.task} items) | 95% bootstrap CI |\n|---|---|---|")
    for r in results:
        print(f"| {r['row']} | {r['acc']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] |")
    print("\n| hypothesis (b - a, same items) | points | paired 95% CI |\n|---|---|---|")
    for h in out["paired"]:
        print(f"| {h['b']} - {h['a']} | {h['diff']:+.1f} | [{h['lo']:+.1f}, {h['hi']:+.1f}] |")


# The papers' orderings (WRPO above both DPO variants; SFT + DPO above SFT) and SFT's own effect.
HYPOTHESES = [("SFT + DPO (y_ws, y_l)", "SFT + WRPO"), ("SFT + DPO (y_wt, y_l)", "SFT + WRPO"),
              ("SFT (FuseChat-3.0 data)", "SFT + LN-DPO (FuseChat-3.0)"), ("target", "SFT (FuseChat-3.0 data)")]


def paired(eval_dir: Path, rows: list[str], n: int) -> list[dict]:
    """Paired bootstrap (compress.eval.paired) of accuracy differences on the same held-out items, in points."""
    from compress.eval.paired import paired_bootstrap

    def right(row: str) -> list[float]:
        slug = re.sub(r"[^a-z0-9]+", "-", row.lower()).strip("-")
        recs = [json.loads(x) for x in (eval_dir / f"{slug}.jsonl").read_text().splitlines()][:n]
        return [float(r["right"]) for r in recs]

    out = []
    for a, b in HYPOTHESES:
        if a in rows and b in rows:
            r = paired_bootstrap(right(a), right(b))
            out.append({"a": a, "b": b, "n": r["n"], "diff": 100 * r["diff"], "lo": 100 * r["lo"], "hi": 100 * r["hi"]})
    return out


if __name__ == "__main__":
    main()
