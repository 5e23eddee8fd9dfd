"""Fusion benchmark: FuseChat targets against a CLM-only control, then the targets merged four ways.

    python bench/fuse_train.py --run runs/fusechat --heldout 24 [--gsm8k 20] [--only-heldout]

Reads a finished `compress fuse run examples/fusechat.yml -o RUN` (pivot representation, aligned
sources, target-gemma, target-math) and adds, as a second resumable recipe in RUN-bench/:
- the control: `fuse train` with λ = 1 (plain CE), same data, steps, seed and batch as the targets;
- merges of the two targets by varm, linear, task_arithmetic and sce (base: the pivot);
- representations of the held-out records (the records after the training ones) by the pivot and
  each source, aligned to the pivot (mined), for the KL figures;
- optionally `compress eval --tasks gsm8k --limit N` of every model.

Figures per model on the held-out records: NLL per token of the gold responses, KL(P_source ‖ Q)
over the aligned rows of each source (the source's top-k slots + rest bucket, rows with a source
distribution only), and for each model against the control a paired bootstrap (2,000 resamples of
records) of the NLL difference. Writes bench/results/fuse_train.json. On a shared 2-core CPU these
runs are tiny: differences within the bootstrap interval are noise, and the README says so.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def held_recipe(v: dict, heldout: Path) -> dict:
    """Representations of the held-out records by the pivot and each source, the sources aligned (mined):
    independent of the trained models, so `--only-heldout` can run them while the fusion run trains."""
    stages = [{"name": f"held-{who}", "run": f"fuse represent {v[who]} --data {heldout} --k 10 --max-length {v['len']}"}
              for who in ("pivot", "gemma", "math")]
    stages += [{"name": f"held-aligned-{who}", "run": f"fuse align {{held-pivot}} {{held-{who}}} --vocab-map mined"}
               for who in ("gemma", "math")]
    return {"name": "fusechat-heldout", "stages": stages}


def bench_recipe(run: Path, gsm8k: int, gsm8k_models: list[str] | None = None) -> dict:
    state = json.loads((run / "pipeline.json").read_text())
    v = state["recipe"]["vars"]
    st = {s["name"]: s for s in state["stages"]}
    tgt = st["target-gemma"]["argv"]
    opts = tgt[tgt.index("--max-steps"): tgt.index("-o")]
    stages = [{"name": "control", "run": f"fuse train {v['pivot']} --data {v['data']} --pivot-rep "
               f"{run}/stages/rep-pivot --no-pivot-candidate --source {run}/stages/aligned-math --lam 1.0 "
               + " ".join(opts)}]
    targets = f"{run}/stages/target-gemma {run}/stages/target-math"
    for m in ("varm", "linear", "task_arithmetic", "sce"):
        stages.append({"name": f"merged-{m}", "run": f"merge --method {m} --base {v['pivot']} {targets}"})
    if gsm8k:  # one eval run: the control first, so each other model gets a paired bootstrap against it
        ms = {k: m for k, m in models(run, Path(str(run) + "-bench")).items() if not gsm8k_models or k in gsm8k_models}
        order = ["control"] + [k for k in ms if k != "control"]
        stages.append({"name": "gsm8k", "run": f"eval run {' '.join(ms[k] for k in order)} --names {','.join(order)} "
                       f"--tasks gsm8k --limit {gsm8k} --max-gen-toks 192 --json", "output": "folder"})
    return {"name": "fusechat-bench", "stages": stages}


def models(run: Path, bench: Path) -> dict[str, str]:
    state = json.loads((run / "pipeline.json").read_text())
    out = {"pivot": state["recipe"]["vars"]["pivot"], "control": str(bench / "stages" / "control"),
           "target-gemma": str(run / "stages" / "target-gemma"), "target-math": str(run / "stages" / "target-math")}
    out.update({f"merged-{m}": str(bench / "stages" / f"merged-{m}") for m in ("varm", "linear", "task_arithmetic", "sce")})
    return out


@torch.no_grad()
def per_record(model_path: str, held_pivot, aligned: dict[str, dict]) -> dict[str, list[float]]:
    """Per held-out record: summed NLL and token count of the gold labels; per source Σ KL and rows."""
    from compress.distill.losses import topk_kd_tokens
    from compress.fuse.records import Renderer, read_records
    from compress.model.load import load

    model, tok = load(model_path)
    r = Renderer(tok)
    recs = read_records(held_pivot.meta["data"])
    out: dict[str, list[float]] = {"nll": [], "tokens": []}
    for name in aligned:
        out[f"kl_{name}"], out[f"rows_{name}"] = [], []
    for i, rec in enumerate(recs):
        it = r.render(rec)
        sl = held_pivot.span(i)
        labels = held_pivot.tok["labels"][sl].long()
        if not len(labels):
            continue
        ids = torch.tensor([it.prompt + labels.tolist()])
        logits = model(ids).logits[0, len(it.prompt) - 1: len(it.prompt) - 1 + len(labels)].float()
        out["nll"].append(float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum")))
        out["tokens"].append(len(labels))
        for name, t in aligned.items():
            on = t["from_source"][sl]
            if not on.any():
                out[f"kl_{name}"].append(0.0)
                out[f"rows_{name}"].append(0)
                continue
            kl = topk_kd_tokens(logits[on], t["ids"][sl][on].long(), t["logprobs"][sl][on], t["rest_logprob"][sl][on])
            out[f"kl_{name}"].append(float(kl.sum()))
            out[f"rows_{name}"].append(int(on.sum()))
    return out


def bootstrap(a: np.ndarray, b: np.ndarray, na: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """NLL-per-token difference (a − b) over records and its 95% paired bootstrap interval."""
    rng = np.random.default_rng(seed)
    diff = a.sum() / na.sum() - b.sum() / na.sum()
    idx = rng.integers(0, len(a), (reps, len(a)))
    boots = a[idx].sum(1) / na[idx].sum(1) - b[idx].sum(1) / na[idx].sum(1)
    return float(diff), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def gsm8k_table(path: Path, extra: list[Path] = ()) -> dict:
    """GSM8K exact-match accuracy of each model and its paired bootstrap interval against the control.

    `path` is the bench recipe's eval (control first: `compress eval` pairs the others with it); `extra`
    are eval.json files of later `compress eval run` calls on the same items, paired with that control
    here (compress.eval.paired, the rule `compress eval` uses)."""
    from compress.eval.paired import intervals

    ev = json.loads(path.read_text())
    control = ev["models"][0]
    recs = [(rec, (rec.get("delta_ci") or {}).get("gsm8k")) for rec in ev["models"]]
    for p in extra:
        for rec in json.loads(Path(p).read_text())["models"]:
            recs.append((rec, intervals([control, rec], ["gsm8k"]).get(rec["name"], {}).get("gsm8k")))
    out = {}
    print(f"\n| model | GSM8K accuracy ({ev['settings']['limit']} items) | Δ vs control, points [95% CI] |\n|---|---|---|")
    for rec, ci in recs:
        r = rec["results"]["gsm8k"]
        m = r.get("metrics", {})
        out[rec["name"]] = {"metric": r.get("metric"), "acc": r.get("value"), "delta_ci": ci,
                            "strict": m.get("exact_match,strict-match"), "flexible": m.get("exact_match,flexible-extract"),
                            "answer_coverage": r.get("coverage"), "n": r.get("n")}
        d = f"{ci['diff']:+.1f} [{ci['lo']:+.1f}, {ci['hi']:+.1f}]" if ci else "-"
        print(f"| {rec['name']} | {100 * float(out[rec['name']]['acc']):.1f} % | {d} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/fusechat")
    ap.add_argument("--heldout", type=int, default=24, help="Held-out records (after the training records).")
    ap.add_argument("--gsm8k", type=int, default=0, help="GSM8K test items per model via compress eval (0: skip).")
    ap.add_argument("--gsm8k-models", default="", help="Comma list of the models scored on GSM8K (default: all).")
    ap.add_argument("--gsm8k-extra", action="append", default=[], help="eval.json of a later `compress eval run` "
                    "of more models on the same GSM8K items (paired with the control). Repeatable.")
    ap.add_argument("--only-heldout", action="store_true", help="Only the held-out representations (RUN-held).")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fuse_train.json"))
    args = ap.parse_args()
    from compress.fuse.aligned import read_aligned
    from compress.fuse.pipeline import run_recipe
    from compress.fuse.represent import read_rep

    run = Path(args.run).resolve()
    bench = Path(str(run) + "-bench")
    v = json.loads((run / "pipeline.json").read_text())["recipe"]["vars"]
    lines = Path(v["data"]).read_text().splitlines()
    start = int(v["limit"])
    held = Path(str(run) + "-heldout.jsonl")
    text = "\n".join(lines[start: start + args.heldout]) + "\n"
    if not held.exists() or held.read_text() != text:  # the held-out recipe reruns when this file changes
        held.write_text(text)
    n_held = len(text.splitlines())
    t0, c0 = time.perf_counter(), os.times()
    hfile, hdir = Path(str(run) + "-held.yml"), Path(str(run) + "-held")
    hfile.write_text(yaml.safe_dump(held_recipe(v, held), sort_keys=False))
    run_recipe(hfile, hdir)
    if args.only_heldout:
        return
    rfile = Path(str(run) + "-bench.yml")
    rfile.write_text(yaml.safe_dump(bench_recipe(run, args.gsm8k, [m for m in args.gsm8k_models.split(',') if m]),
                                    sort_keys=False))
    run_recipe(rfile, bench)
    c1 = os.times()
    hp = read_rep(hdir / "stages" / "held-pivot")
    aligned = {w: read_aligned(hdir / "stages" / f"held-aligned-{w}")[1] for w in ("gemma", "math")}
    res: dict = {"load_average": os.getloadavg(), "machine": "2 shared CPU cores", "train_records": start,
                 "heldout_records": n_held, "recipe_vars": v,
                 "pipeline_wall_s": time.perf_counter() - t0,
                 "pipeline_cpu_s": c1.children_user + c1.children_system - c0.children_user - c0.children_system,
                 "models": {}}
    per = {name: per_record(path, hp, aligned) for name, path in models(run, bench).items()}
    ctl = per["control"]
    print("| model | NLL/token (held-out gold) | Δ vs control [95% CI] | KL(gemma‖model) | KL(math‖model) |")
    print("|---|---|---|---|---|")
    for name, p in per.items():
        nll, ntok = np.array(p["nll"]), np.array(p["tokens"])
        d = bootstrap(nll, np.array(ctl["nll"]), ntok)
        row = {"nll_per_token": float(nll.sum() / ntok.sum()), "delta_vs_control": d}
        for w in ("gemma", "math"):
            rows = np.array(p[f"rows_{w}"])
            row[f"kl_{w}"] = float(np.array(p[f"kl_{w}"]).sum() / max(rows.sum(), 1))
        res["models"][name] = row
        print(f"| {name} | {row['nll_per_token']:.4f} | {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}] | "
              f"{row['kl_gemma']:.4f} | {row['kl_math']:.4f} |")
    if args.gsm8k:
        res["gsm8k"] = gsm8k_table(bench / "stages" / "gsm8k" / "eval.json", [Path(p) for p in args.gsm8k_extra])
    res["load_average_end"] = os.getloadavg()
    keep_stage_costs(res, Path(args.out))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


def keep_stage_costs(res: dict, out: Path) -> None:
    """When every stage was reused (a rerun to add models or GSM8K evals), keep the earlier run's stage
    costs instead of recording ~0 s."""
    prev = json.loads(out.read_text()) if out.is_file() else {}
    if res["pipeline_cpu_s"] < 1.0 and prev.get("pipeline_cpu_s", 0) >= 1.0:
        for k in ("pipeline_wall_s", "pipeline_cpu_s", "load_average", "load_average_end"):
            res[k] = prev.get(k)
        res["pipeline_note"] = "stages reused; costs and load of the run that made them"


if __name__ == "__main__":
    main()
