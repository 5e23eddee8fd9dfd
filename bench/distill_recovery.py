"""Does distillation recover a pruned model? sft vs kd vs dckd vs adpa vs adpa+ on the same budget.

Pipeline (issue 5 §5, the ADPA paper's order, at a small scale):
1. Reference teacher π_ref = SmolLM2-135M-Instruct.
2. DPO teacher π_dpo = π_ref trained with this tool's own `dpo` loss on the training pairs.
3. Student = SmolLM2-135M-Instruct with ~20% of its blocks removed, written by
   `compress.prune.export.export_pruned` (physical). With `--pruned-from prune_quality.json:ROW`
   (e.g. `bench/results/prune_quality.json:blockpruner@0.2`) the removed blocks are those BlockPruner's
   search chose in bench/prune_quality.py; without it, the upper layers' blocks (a fixed choice).
4. Teacher cache: π_dpo's top-k on chosen and rejected (kd, dckd).
5. ADPA: the pruned student generates greedy responses; π_dpo and π_ref are cached on them.
   ADPA+: the DCKD student generates, and trains from the DCKD student.
6. Each method trains for the same number of optimizer steps on the same pairs; the held-out pairs
   give chosen-response perplexity, preference accuracy of the implicit reward (reference: the
   untrained pruned student), and forward KL / top-1 agreement with π_dpo on chosen responses.

    python bench/distill_recovery.py --train-pairs 64 --eval-pairs 32 --steps 16 --max-length 192

Data: HH-RLHF harmless-base test split (the only one shipped offline), split into train / held-out
pairs. Prints a table and writes bench/results/distill_recovery.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COMPRESS_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl"


def quality_row_blocks(spec: str) -> tuple[str, list[tuple[int, str]]]:
    """'path/prune_quality.json:blockpruner@0.2' -> (row key, the blocks that row removed)."""
    from prune_zeroshot import removed_blocks, row_key  # bench/ is the script's folder

    path, _, key = spec.rpartition(":")
    if not path or not key:
        raise SystemExit(f"--pruned-from wants FILE:ROW (e.g. prune_quality.json:blockpruner@0.2), got {spec!r}")
    rows = {row_key(r): r for r in json.loads(Path(path).read_text())["rows"]}
    if key not in rows:
        raise SystemExit(f"--pruned-from: no row {key!r} in {path} (rows: {', '.join(rows)})")
    return key, removed_blocks(rows[key])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("COMPRESS_SMOLLM2", "/work/cache/smollm2"))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--train-pairs", type=int, default=64)
    ap.add_argument("--eval-pairs", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--dpo-steps", type=int, default=None, help="Default: --steps.")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--dpo-lr", type=float, default=5e-6)
    ap.add_argument("--prune-fraction", type=float, default=0.2)
    ap.add_argument("--pruned-from", default=None,
                    help="FILE:ROW of bench/prune_quality.py's results: the student removes that row's blocks")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--methods", default="sft,kd,dckd,adpa,adpa+")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default=None)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "distill_recovery.json"))
    args = ap.parse_args()

    import torch

    from compress import progress
    from compress.data.preference import read_preference
    from compress.distill.config import DistillConfig
    from compress.distill.evaluate import evaluate, reference_logps
    from compress.distill.forward import response_logits
    from compress.distill.generate import generate_responses, write_generated
    from compress.distill.teacher import OnlineTeacher, write_cache
    from compress.distill.train import train
    from compress.model import load_model, load_tokenizer

    sys_t0 = time.time()
    work = Path(args.work or tempfile.mkdtemp(prefix="distill_recovery."))
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    tok = load_tokenizer(args.model)
    common = dict(max_length=args.max_length, long_prompt="truncate", max_prompt_length=args.max_length // 2)

    # data: the first N usable pairs train, the next M are held out
    full = read_preference(args.data, tok, limit=args.train_pairs + args.eval_pairs, **common)
    lines = Path(args.data).read_text(encoding="utf-8").splitlines()
    train_file, eval_file = work / "train.jsonl", work / "eval.jsonl"
    train_file.write_text("\n".join(lines[e.line - 1] for e in full.examples[: args.train_pairs]) + "\n")
    eval_file.write_text("\n".join(lines[e.line - 1] for e in full.examples[args.train_pairs:]) + "\n")
    train_data = read_preference(train_file, tok, **common)
    eval_data = read_preference(eval_file, tok, **common)

    def cfg(method: str, **kw) -> DistillConfig:
        return DistillConfig(method=method, lr=args.lr, max_steps=args.steps, batch_size=args.batch_size,
                             warmup_ratio=0.1, seed=args.seed, k=args.k, **common, **kw)

    def once(path: Path, make) -> Path:
        if not (path / "config.json").is_file() and not (path / "cache.json").is_file() and not path.is_file():
            make(path)
        return path

    timings: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.time()
        out = fn()
        timings[name] = round(time.time() - t0, 1)
        return out

    # 2. DPO teacher from the reference
    dpo_teacher = timed("dpo_teacher", lambda: once(work / "dpo_teacher", lambda p: train(
        args.model, train_file, p, DistillConfig(method="dpo", beta=0.1, lr=args.dpo_lr,
                                                 max_steps=args.dpo_steps or args.steps, batch_size=args.batch_size,
                                                 seed=args.seed, **common), device=args.device)))
    # 3. pruned student
    from compress.checkpoint.reader import Checkpoint
    from compress.prune.export import export_pruned

    n = Checkpoint(args.model).config["num_hidden_layers"]
    if args.pruned_from:
        student_kind, removed = quality_row_blocks(args.pruned_from)
    else:
        n_blocks = round(2 * n * args.prune_fraction)
        removed, layer, student_kind = [], n - 2, "upper layers"
        while len(removed) < n_blocks:
            removed += [(layer, "attn"), (layer, "mlp")][: n_blocks - len(removed)]
            layer -= 1
    student = once(work / "student", lambda p: export_pruned(args.model, p, removed))

    # 4. DPO-teacher cache on chosen/rejected
    def make_cache(p: Path, data_file: Path, slots, ref=None):
        t = load_model(dpo_teacher, args.device, "fp32")
        r = load_model(ref, args.device, "fp32") if ref else None
        d = read_preference(data_file, tok, **common)
        write_cache(p, t, tok, d, slots, args.k, str(dpo_teacher), r, str(ref) if ref else None, args.batch_size)

    cache_cr = timed("cache_chosen_rejected", lambda: once(work / "cache_cr", lambda p: make_cache(p, train_file, ("chosen", "rejected"))))

    def gen_file(model_dir: Path, out: Path) -> Path:
        def make(p: Path):
            m = load_model(model_dir, args.device, "fp32")
            resp = generate_responses(m, tok, [e.prompt for e in train_data.examples], args.max_new_tokens,
                                      args.batch_size * 2)
            write_generated(train_data, resp, p)
        return once(out, make)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    trained: dict[str, Path] = {}
    for m in methods:
        init = student
        if m in ("sft",):
            data_file, tc = train_file, None
        elif m in ("kd", "dckd"):
            data_file, tc = train_file, cache_cr
        else:
            if m == "adpa+":
                if "dckd" not in trained:
                    raise SystemExit("adpa+ needs dckd in --methods before it")
                init = trained["dckd"]
            data_file = timed(f"generate_{m}", lambda init=init, m=m: gen_file(init, work / f"gen_{m}.jsonl"))
            tc = timed(f"cache_{m}", lambda data_file=data_file, m=m: once(
                work / f"cache_{m}", lambda p: make_cache(p, data_file, ("generated",), ref=args.model)))
        trained[m] = timed(f"train_{m}", lambda m=m, init=init, data_file=data_file, tc=tc: once(
            work / f"student_{m}", lambda p: train(init, data_file, p, cfg(m), teacher_cache=str(tc) if tc else None,
                                                   device=args.device)))

    # 6. evaluation on held-out pairs
    t_model = load_model(dpo_teacher, args.device, "fp32")
    signal = OnlineTeacher(t_model, args.k)
    base = load_model(student, args.device, "fp32")
    ref_lp = reference_logps(base, eval_data.examples, tok.pad_token_id, len(eval_data.examples), args.batch_size)
    rows = {}
    cands = {"teacher (SmolLM2, unpruned)": Path(args.model), "dpo teacher": dpo_teacher, "pruned, untrained": student}
    cands.update({f"pruned + {m}": p for m, p in trained.items()})
    with progress.progress_bar("evaluate", len(cands)) as adv:
        for name, path in cands.items():
            mdl = base if path == student else load_model(path, args.device, "fp32")
            res = evaluate(lambda b, mdl=mdl: response_logits(mdl, b), eval_data.examples, tok.pad_token_id, ref_lp,
                           signal, args.batch_size)
            res["chosen_ppl"] = math.exp(res["chosen_nll"])
            rows[name] = res
            adv(1)
    print(f"\n{'model':30} {'chosen ppl':>10} {'pref acc':>9} {'KL(dpo‖s)':>10} {'agree':>7}")
    for name, r in rows.items():
        print(f"{name:30} {r['chosen_ppl']:10.3f} {r['pref_acc']:9.3f} {r['kl_teacher']:10.4f} {r['agree_teacher']:7.3f}")
    rec = {"bench": "distill_recovery", "model": args.model, "student": student_kind, "removed_blocks": removed,
           "args": vars(args),
           "train_pairs": len(train_data.examples), "eval_pairs": len(eval_data.examples), "results": rows,
           "timings_s": timings, "total_s": round(time.time() - sys_t0, 1), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rec, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
