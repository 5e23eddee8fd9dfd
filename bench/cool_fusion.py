"""Cool-Fusion of SmolLM2-135M-Instruct and Gemma-3-270M (and a third model, if given): accuracy and speed.

For every item one `CoolFusionDecoder(rerank=True)` call gives, on the same prompt and budget:
the fused answer, each model's own greedy answer (the same decoder with that model alone) and "+R"
(the mean-PPL rerank of those answers). Per task: accuracy of each model alone, fused, +R and the
oracle (any single model right) with bootstrap 95% intervals; the share of contested segments each
model won (and of segments all models agreed on); decoding speed: the fused decoder's tokens/s
against the slowest single model's greedy tokens/s, both counted in that slowest model's own tokens,
on CPU time (the machine is shared) and wall time.

Tasks, answered by generation (plain few-shot prompts for every model, as lm-eval without a chat
template):
- gsm8k: lm-eval's prompt "Question: ...\\nAnswer:", `--shots` examples from train.jsonl (seeded per
  item), stops "Question:", "</s>", "<|im_end|>" and a blank line; scored by lm-eval's two filters
  (strict "#### N" and flexible: last number), exact match after its normalisation.
- arc_easy: lm-eval's "Question: ...\\nAnswer:" answered in words (`--shots` examples with the
  correct choice's text, from the start of the test file, left out of the scored items); the answer
  is the choice closest to the first line written (difflib ratio). Letter answers (A-D listed) were
  at chance for both models in a 30-item probe (7/30 each), so the words are scored instead.
- boolq: "passage\\nQuestion: ...?\\nAnswer:" yes/no; examples alternate yes and no.

Items are appended to bench/results/cool_fusion_<task>.items.jsonl as they finish (resumable: a rerun
with the same options continues); the summary goes to bench/results/cool_fusion.json[task].

    nice -n 10 python bench/cool_fusion.py --task gsm8k --limit 200 --threads 1
    # two processes on a 2-core machine, one file each, one summary:
    python bench/cool_fusion.py --task gsm8k --shard 0/2 & python bench/cool_fusion.py --task gsm8k --shard 1/2
    # the third model (another items file, named after the models):
    python bench/cool_fusion.py --task arc_easy --models smollm2 gemma3 smollm2-gsm8k
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COMPRESS_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"
RESULTS = ROOT / "bench" / "results"
MODELS = {"smollm2": "/work/models/smollm2", "gemma3": "/work/models/gemma3",
          "smollm2-gsm8k": "/work/models/smollm2-gsm8k"}  # the third: SmolLM2 SFT'd on GSM8K train (issue 13)
DEFAULT_MODELS = ["smollm2", "gemma3"]


# ---------------------------------------------------------------------------------------- tasks
def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def gsm8k_items(shots: int) -> tuple[list[dict], list[str]]:
    train = _jsonl(DATA / "gsm8k" / "train.jsonl")
    items = []
    for i, d in enumerate(_jsonl(DATA / "gsm8k" / "test.jsonl")):
        ex = random.Random(1234 + i).sample(train, shots) if shots else []
        ctx = "".join(f"Question: {e['question']}\nAnswer: {e['answer']}\n\n" for e in ex)
        items.append({"prompt": ctx + f"Question: {d['question']}\nAnswer:", "target": d["answer"]})
    return items, ["Question:", "</s>", "<|im_end|>", "\n\n"]


def _arc_text(d: dict, answer: bool) -> str:
    gold = next(c["text"] for c in d["question"]["choices"] if c["label"] == d["answerKey"])
    return f"Question: {d['question']['stem']}\nAnswer:" + (f" {gold}\n\n" if answer else "")


def arc_items(shots: int) -> tuple[list[dict], list[str]]:
    """ARC-Easy as lm-eval's prompt, answered in words; the answer is the choice its text is closest to."""
    rows = _jsonl(DATA / "arc" / "ARC-Easy-Test.jsonl")
    ctx = "".join(_arc_text(d, True) for d in rows[:shots])
    return [{"prompt": ctx + _arc_text(d, False), "target": d["answerKey"],
             "choices": {c["label"]: c["text"] for c in d["question"]["choices"]}} for d in rows[shots:]], \
        ["\n", "Question:"]


def _boolq_label(d: dict) -> bool:
    v = d["label"] if "label" in d else d["answer"]
    return v is True or str(v).lower() in ("true", "1")


def _boolq_text(d: dict, answer: bool) -> str:
    a = (" yes" if _boolq_label(d) else " no") + "\n\n" if answer else ""
    return f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:{a}"


def boolq_items(shots: int) -> tuple[list[dict], list[str]]:
    """BoolQ, yes/no written; the few-shot examples alternate yes and no (the file's first of each)."""
    rows = _jsonl(DATA / "boolq" / "val.jsonl")
    yes = [i for i, d in enumerate(rows) if _boolq_label(d)]
    no = [i for i, d in enumerate(rows) if not _boolq_label(d)]
    picked = [x for pair in zip(yes, no, strict=False) for x in pair][:shots]
    ctx = "".join(_boolq_text(rows[i], True) for i in picked)
    return [{"prompt": ctx + _boolq_text(d, False), "target": "yes" if _boolq_label(d) else "no"}
            for i, d in enumerate(rows) if i not in picked], ["\n", "Question:"]


TASKS = {"gsm8k": gsm8k_items, "arc_easy": arc_items, "boolq": boolq_items}


# ---------------------------------------------------------------------------------------- scoring
def _gsm8k_norm(s: str) -> str:
    """lm-eval gsm8k exact_match: ignore case, drop ',', '$', everything up to '#### ', a final '.'."""
    for pat in (",", r"\$", r"(?s).*#### ", r"\.$"):
        s = re.sub(pat, "", s)
    return s.strip().lower()


def gsm8k_correct(answer: str, target: str) -> dict[str, bool]:
    gold = _gsm8k_norm(target)
    strict = re.findall(r"#### (\-?[0-9\.\,]+)", answer)
    flex = [m[0] or m[1] for m in re.findall(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", answer)]
    return {"strict": bool(strict) and _gsm8k_norm(strict[0]) == gold,
            "flexible": bool(flex) and _gsm8k_norm(flex[-1]) == gold}


def closest_choice(answer: str, choices: dict[str, str]) -> str | None:
    """The label of the choice whose text is most similar to the answer's first line (difflib ratio,
    lower case); None for an empty answer."""
    import difflib

    text = answer.strip().split("\n")[0].lower()
    if not text:
        return None
    return max(choices, key=lambda k: difflib.SequenceMatcher(None, text, choices[k].lower()).ratio())


def correct(task: str, answer: str, item: dict) -> dict[str, bool]:
    if task == "gsm8k":
        return gsm8k_correct(answer, item["target"])
    if task == "boolq":
        m = re.search(r"\b(yes|no)\b", answer.lower())
        return {"flexible": bool(m) and m.group(1) == item["target"]}
    return {"flexible": closest_choice(answer, item["choices"]) == item["target"]}


# ---------------------------------------------------------------------------------------- run
def item_files(base: str) -> list[Path]:
    """The items file of a run (`<base>.items.jsonl`) and its shards' files (`<base>.items.shard<K>.jsonl`)."""
    main = RESULTS / f"{base}.items.jsonl"
    return [main, *sorted(RESULTS.glob(f"{base}.items.shard*.jsonl"))]


def run_items(args, names: list[str], out: Path, others: list[Path]) -> None:
    import torch

    from compress.fuse.cool_fusion import CoolFusionDecoder
    from compress.fuse.generate import answered_indices, append_answer, open_answers
    from compress.model.load import load

    torch.set_num_threads(args.threads)
    items, stop = TASKS[args.task](args.shots)
    items = items[: args.limit]
    options = {k: getattr(args, k) for k in ("task", "shots", "max_new_tokens", "max_segment_tokens", "segment")}
    options.update(models=[str(p) for p in args.model_paths], names=names, stop=stop)
    done = open_answers(out, options, force=args.force).union(*(answered_indices(f) for f in others))
    k, n = args.shard
    todo = [i for i in range(len(items)) if i not in done and i % n == k]
    print(f"{args.task}: {len(done)} items done, {len(todo)} to go", file=sys.stderr, flush=True)
    if not todo:
        return
    models = [load(p) for p in args.model_paths]
    dec = CoolFusionDecoder(models, names=names, segment=args.segment, rerank=True,
                            max_new_tokens=args.max_new_tokens, max_segment_tokens=args.max_segment_tokens, chat=False)
    for i in todo:
        t0 = time.time()
        r = dec.generate(items[i]["prompt"], stop=stop)
        answers = {"fused": r["text"], "+R": r["rerank"]["text"], **{n: r["singles"][n]["text"] for n in names}}
        rec = {"index": i, "target": items[i]["target"], "answers": answers,
               "correct": {k: correct(args.task, a, items[i]) for k, a in answers.items()},
               "rerank_chosen": r["rerank"]["chosen"], "wins": r["wins"], "backed": r["backed"],
               "agreed": r["agreed"], "segments": len(r["segments"]), "tokens": {"fused": r["tokens"],
                                                          **{n: r["singles"][n]["tokens"] for n in names}},
               "finish": {"fused": r["finish_reason"], **{n: r["singles"][n]["finish_reason"] for n in names}},
               "time": r["time"]}
        append_answer(out, rec)
        c = rec["correct"]
        key = "strict" if args.task == "gsm8k" else "flexible"
        print(f"[{i}] {time.time() - t0:.0f}s  " + "  ".join(f"{k}={int(v.get(key, False))}" for k, v in c.items()),
              file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- summary
def bootstrap(values: list[bool], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    k = len(values)
    means = sorted(sum(values[rng.randrange(k)] for _ in range(k)) / k for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def summarise(task: str, names: list[str], recs: list[dict]) -> dict:
    metrics = ["strict", "flexible"] if task == "gsm8k" else ["flexible"]
    methods = [*names, "fused", "+R", "oracle"]
    acc: dict[str, dict] = {}
    for m in metrics:
        acc[m] = {}
        for meth in methods:
            vals = [any(r["correct"][n][m] for n in names) if meth == "oracle" else r["correct"][meth][m] for r in recs]
            lo, hi = bootstrap(vals)
            acc[m][meth] = {"acc": sum(vals) / len(vals), "ci95": [lo, hi]}
    contested = sum(sum(r["wins"].values()) for r in recs)
    segs = sum(r["segments"] for r in recs)
    wins = {n: sum(r["wins"][n] for r in recs) / max(contested, 1) for n in names}
    # co-proposers credited too (items written before `backed` existed lack it: then None)
    backed = ({n: sum(r["backed"][n] for r in recs) / max(contested, 1) for n in names}
              if all("backed" in r for r in recs) else None)
    speed: dict[str, dict] = {}
    for clock in ("cpu", "wall"):
        single = {n: sum(r["tokens"][n] for r in recs) / sum(r["time"][f"single:{n}"][clock] for r in recs)
                  for n in names}
        slow = min(single, key=single.get)
        fused = sum(r["tokens"]["fused"][slow] for r in recs) / sum(r["time"]["decode"][clock] for r in recs)
        speed[clock] = {"single_tokens_per_s": single, "slowest": slow, "fused_tokens_per_s": fused,
                        "fused_vs_slowest": fused / single[slow]}
    rerank = {k: sum(r["rerank_chosen"] == k for r in recs) / len(recs) for k in ["fused", *names]}
    from compress.eval.paired import paired_bootstrap

    m = metrics[0]
    paired = {f"{b} - {a}": {k: 100 * v if k in ("diff", "lo", "hi") else v for k, v in paired_bootstrap(
        [float(r["correct"][a][m]) for r in recs], [float(r["correct"][b][m]) for r in recs]).items()}
        for b in ("fused", "+R") for a in names}
    return {"items": len(recs), "accuracy": acc, "segments": segs, "contested": contested,
            "segment_wins": wins, "segment_backed": backed, "agreed_share": 1 - contested / max(segs, 1),
            "rerank_choice": rerank,
            "paired_points": paired,
            "speed": speed, "cpu_seconds": sum(sum(t["cpu"] for t in r["time"].values()) for r in recs),
            "wall_seconds": sum(sum(t["wall"] for t in r["time"].values()) for r in recs)}


def table(task: str, s: dict) -> str:
    metric = "strict" if task == "gsm8k" else "flexible"
    rows = [f"| {task} ({s['items']} items, {metric}) | accuracy | 95% CI |", "|---|---|---|"]
    for meth, v in s["accuracy"][metric].items():
        rows.append(f"| {meth} | {100 * v['acc']:.1f} | {100 * v['ci95'][0]:.1f}-{100 * v['ci95'][1]:.1f} |")
    sp = s["speed"]["cpu"]
    rows.append("")
    rows += [f"{k}: {v['diff']:+.1f} points, paired 95% CI [{v['lo']:+.1f}, {v['hi']:+.1f}]"
             for k, v in s["paired_points"].items()]
    rows.append(f"segments won (contested {s['contested']} of {s['segments']}): "
                + ", ".join(f"{n} {100 * w:.0f}%" for n, w in s["segment_wins"].items())
                + "; +R chose " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in s["rerank_choice"].items()))
    if s.get("segment_backed"):
        rows.append("proposed the winning text (co-proposers each credited): "
                    + ", ".join(f"{n} {100 * w:.0f}%" for n, w in s["segment_backed"].items()))
    rows.append(f"speed (CPU time, tokens of {sp['slowest']}): fused {sp['fused_tokens_per_s']:.2f} tok/s vs "
                f"{sp['slowest']} greedy {sp['single_tokens_per_s'][sp['slowest']]:.2f} tok/s = "
                f"{sp['fused_vs_slowest']:.2f}x; wall {s['speed']['wall']['fused_vs_slowest']:.2f}x")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="gsm8k")
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="names in MODELS or name=path")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--shots", type=int, default=None, help="few-shot examples (gsm8k 5, arc_easy 5, boolq 2)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="gsm8k 192, others 8")
    ap.add_argument("--max-segment-tokens", type=int, default=32)
    ap.add_argument("--segment", choices=["aligned", "shortest"], default="aligned")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shard", default="0/1", help="K/N: this process answers the items i with i %% N == K, into its "
                    "own file (run N processes at once; the summary reads every shard's file)")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--force", action="store_true", help="start the items file again")
    args = ap.parse_args()
    args.shots = args.shots if args.shots is not None else {"gsm8k": 5, "arc_easy": 5, "boolq": 2}[args.task]
    args.max_new_tokens = args.max_new_tokens or {"gsm8k": 192, "arc_easy": 16, "boolq": 4}[args.task]
    pairs = [m.split("=", 1) if "=" in m else (m, MODELS[m]) for m in args.models]
    names = [n for n, _ in pairs]
    args.model_paths = [p for _, p in pairs]
    k, n = (int(x) for x in args.shard.split("/"))
    args.shard = (k, n)
    suffix = ("" if args.segment == "aligned" else f"_{args.segment}") + (
        "" if names == DEFAULT_MODELS else "_" + "+".join(names))
    base = f"cool_fusion_{args.task}{suffix}"
    main_file = RESULTS / f"{base}.items.jsonl"
    out = main_file if k == 0 else RESULTS / f"{base}.items.shard{k}.jsonl"
    if not args.summary_only:
        run_items(args, names, out, [f for f in item_files(base) if f != out])
    recs: dict[int, dict] = {}
    for f in item_files(base):
        recs.update({r["index"]: r for r in (json.loads(x) for x in f.read_text().splitlines()[1:] if x.strip())})
    s = summarise(args.task, names, [recs[i] for i in sorted(recs)])
    summary_file = RESULTS / "cool_fusion.json"
    allres = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    load = (f"2 CPU cores shared with other sessions (load average {os.getloadavg()[0]:.1f} at the end); "
            f"torch threads {args.threads}")
    if args.summary_only:  # the load of the run that answered the items, not of this summary
        load = allres.get(args.task + suffix, {}).get("load", "unknown (summary only)")
    s.update(options=json.loads(main_file.read_text().splitlines()[0])["compress_fuse_generate"]["options"], load=load)
    allres[args.task + suffix] = s
    summary_file.write_text(json.dumps(allres, indent=2) + "\n")
    print(table(args.task, s))


if __name__ == "__main__":
    main()
