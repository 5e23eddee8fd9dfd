"""Alignment benchmark: SmolLM2 (pivot, byte-level BPE) <-> Gemma-3-270M (source, SentencePiece), coverage and speed.

    python bench/fuse_align.py --wiki 300 --chat 300 [--pivot /work/models/smollm2 --source /work/models/gemma3]

For each record both tokenizers render and tokenise it (`compress.fuse.records.Renderer`, as
`fuse represent` does); the benchmark then times only the alignment of every pair of label sequences:

- compress: `align.align_spans` (byte offsets, numpy);
- official: a faithful re-implementation of FuseLLM's per-sequence DTW (`others.dtw` + the
  `transform_step_logits` rule): the full O(n·m) Python recurrence over token strings with the space
  markers (`▁`, `Ġ`) removed, an edit-distance cost per cell (rapidfuzz's C Levenshtein, as fast as
  the `editdistance` package the official code calls), backtracking, and a pivot token taking a source
  distribution when its DTW partner is unique.

Coverage is measured the same way for both: a pivot label is one_to_one when its byte span equals
exactly one source label's span; "with distribution" counts the labels that receive a source
distribution, and "correct" those whose source distribution predicts a token starting at the same
byte (the only place where the two next-token distributions condition on the same text). For every
--vocab-map the gold source tokens at those places are mapped (exact / edit distance / lost).
Writes bench/results/fuse_align.json. The machine is shared: wall and CPU seconds are given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from compress.fuse.align import align_spans
from compress.fuse.records import Record, Renderer, read_records
from compress.fuse.vocabmap import VocabMap

DATA = Path(os.environ.get("COMPRESS_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"


def official_dtw(blending: list[str], base: list[str]) -> list[list[int]]:
    """FuseLLM `others.dtw(series_1=blending, series_2=base)`: returns base_to_blending (one edit distance per cell)."""
    from rapidfuzz.distance.Levenshtein import distance

    m, n = len(blending), len(base)
    inf = float("inf")
    mat = [[inf] * (n + 1) for _ in range(m + 1)]
    mat[0][0] = 0.0
    for i in range(m):
        for j in range(n):
            cost = distance(blending[i], base[j])
            mat[i + 1][j + 1] = cost + min(mat[i][j + 1], mat[i + 1][j], mat[i][j])
    d = [row[1:] for row in mat[1:]]
    i, j = m - 1, n - 1
    to_blending = [[] for _ in range(n)]
    while i > 0 or j > 0:
        to_blending[j].append(i)
        diag = d[i - 1][j - 1] if i > 0 and j > 0 else inf
        up = d[i - 1][j] if i > 0 else inf
        left = d[i][j - 1] if j > 0 else inf
        move = int(np.argmin([diag, up, left]))
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    to_blending[0].append(0)
    return [sorted(x) for x in to_blending]


def strip(r: Renderer, ids: list[int]) -> list[str]:
    toks = r.tok.convert_ids_to_tokens(ids)
    return [t.replace("▁", "").replace("Ġ", "") for t in toks]


RUN_DATA = Path(__file__).resolve().parents[1] / "runs" / "fuse_train.jsonl"


def chat_data(arg: str | None) -> Path:
    """The instruction data: --chat-data, else the fusion run's data (runs/fuse_train.jsonl) when it exists,
    else GSM8K train. Which one is printed and recorded: the coverage figures depend on it."""
    path = Path(arg) if arg else RUN_DATA if RUN_DATA.is_file() else DATA / "gsm8k" / "train.jsonl"
    print(f"instruction data: {path}", file=sys.stderr, flush=True)
    return path


def records(n_wiki: int, n_chat: int, chat_path: Path) -> dict[str, list[Record]]:
    wiki = [r for r in read_records(DATA / "wikitext-2-raw" / "wiki.test.raw") if not r.text.strip().startswith("=")]
    return {"wikitext2": wiki[:n_wiki], "instruction": read_records(chat_path)[:n_chat]}


def bench(name: str, recs: list[Record], piv: Renderer, src: Renderer, maps: dict[str, VocabMap],
          max_tokens: int) -> dict:
    pairs = []
    for rec in recs:
        p, s = piv.render(rec), src.render(rec)
        pairs.append((p.labels[:max_tokens], np.array(p.starts[:max_tokens]), np.array(p.ends[:max_tokens]),
                      s.labels[:max_tokens], np.array(s.starts[:max_tokens]), np.array(s.ends[:max_tokens])))
    n_tok = sum(len(x[0]) for x in pairs)
    out: dict = {"records": len(pairs), "pivot_tokens": n_tok}
    for who in ("compress", "official"):
        t0, c0 = time.perf_counter(), time.process_time()
        results = []
        for pl, ps, pe, sl, ss, se in pairs:
            if who == "compress":
                ali = align_spans(ps, pe, ss, se)
                results.append(ali.src)
            else:
                to_src = official_dtw(strip(src, sl), strip(piv, pl)) if sl and pl else [[] for _ in pl]
                used = np.bincount([j for x in to_src for j in x], minlength=len(sl))
                results.append(np.array([x[0] if len(x) == 1 and used[x[0]] == 1 else -1 for x in to_src]))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        one, dist, correct, gold = 0, 0, 0, {k: {"exact": 0, "edit": 0, "lost": 0} for k in maps}
        for (pl, ps, pe, sl, ss, se), src_of in zip(pairs, results, strict=True):
            spans = {(a, b): u for u, (a, b) in enumerate(zip(ss.tolist(), se.tolist(), strict=True)) if a >= 0}
            for t in range(len(pl)):
                if ps[t] >= 0 and (int(ps[t]), int(pe[t])) in spans:
                    one += 1
                u = int(src_of[t])
                if u >= 0:
                    dist += 1
                    ok = ss[u] >= 0 and ss[u] == ps[t]
                    correct += int(ok)
                    if ok and who == "compress":
                        for k, vm in maps.items():
                            pid, route = vm.lookup(np.array([sl[u]]))
                            key = "lost" if pid[0] < 0 else ("exact" if route[0] == 1 else "edit")
                            gold[k][key] += 1
        out[who] = {"wall_s": wall, "cpu_s": cpu, "tokens_per_s": n_tok / max(wall, 1e-9),
                    "one_to_one": one / max(n_tok, 1), "with_distribution": dist / max(n_tok, 1),
                    "correct_distribution": correct / max(n_tok, 1)}
        if who == "compress":
            out["gold_mapping"] = {k: {r: v / max(sum(g.values()), 1) for r, v in g.items()} for k, g in gold.items()}
    out["speedup"] = out["compress"]["tokens_per_s"] / max(out["official"]["tokens_per_s"], 1e-9)
    out["speedup_cpu"] = out["official"]["cpu_s"] / max(out["compress"]["cpu_s"], 1e-9)
    return out


def topk_mass(specs: list[str]) -> dict:
    """Alignment reports (`fuse align`, nothing written) for every --vocab-map on representation pairs."""
    from compress.fuse.aligned import build_aligned, view_of
    from compress.fuse.represent import read_rep

    out: dict = {}
    for spec in specs:
        name, reps = spec.split("=", 1)
        piv, src = (read_rep(p) for p in reps.split(","))
        pv, sv = view_of(piv, "pivot"), view_of(src, "source")
        out[name] = {}
        for k in ("exact", "mined", "ms"):
            _, report, _ = build_aligned(piv, src, pv, sv, k)
            out[name][k] = report
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pivot", default="/work/models/smollm2")
    ap.add_argument("--source", default="/work/models/gemma3")
    ap.add_argument("--wiki", type=int, default=300)
    ap.add_argument("--chat", type=int, default=300)
    ap.add_argument("--chat-data", default=None, help="Instruction records (default: runs/fuse_train.jsonl if it "
                    "exists, else GSM8K train).")
    ap.add_argument("--max-tokens", type=int, default=256, help="Labels per record (as --max-length would cut).")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fuse_align.json"))
    ap.add_argument("--mass", action="append", default=[], metavar="NAME=PIVOT_REP,SOURCE_REP",
                    help="Also the top-k probability mass mapped per --vocab-map, from two representations.")
    args = ap.parse_args()
    if args.mass:
        masses = topk_mass(args.mass)
        prev = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
        prev["topk_mass"] = masses
        Path(args.out).write_text(json.dumps(prev, indent=2) + "\n")
        print("| data | pivot tokens | --vocab-map | with a source distribution | top-k mass exact | edit | lost |")
        print("|---|---|---|---|---|---|---|")
        for name, by in masses.items():
            for k, r in by.items():
                print(f"| {name} | {r['pivot_tokens']} | {k} | {r['with_source_distribution']:.3f} | "
                      f"{r['topk_mass']['exact']:.3f} | {r['topk_mass']['edit']:.3f} | {r['topk_mass']['lost']:.3f} |")
        return
    from compress.model import load_tokenizer

    piv, src = Renderer(load_tokenizer(args.pivot), "pivot"), Renderer(load_tokenizer(args.source), "source")
    maps = {k: VocabMap(piv.view, src.view, k) for k in ("exact", "mined")}
    chat_path = chat_data(args.chat_data)
    res = {"load_average": os.getloadavg(), "machine": "2 shared CPU cores", "max_tokens": args.max_tokens,
           "instruction_data": str(chat_path)}
    for name, recs in records(args.wiki, args.chat, chat_path).items():
        res[name] = bench(name, recs, piv, src, maps, args.max_tokens)
    res["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print("| data | records | pivot tokens | method | one-to-one | with distribution | correct | tokens/s | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("wikitext2", "instruction"):
        r = res[name]
        for who in ("compress", "official"):
            x = r[who]
            print(f"| {name} | {r['records']} | {r['pivot_tokens']} | {who} | {x['one_to_one']:.3f} | "
                  f"{x['with_distribution']:.3f} | {x['correct_distribution']:.3f} | {x['tokens_per_s']:.0f} | {x['cpu_s']:.2f} |")
        print(f"| {name} | | | speed-up | | | | {r['speedup']:.0f}x wall | {r['speedup_cpu']:.0f}x CPU |")
    for name in ("wikitext2", "instruction"):
        for k, g in res[name]["gold_mapping"].items():
            print(f"gold-token mapping {name} --vocab-map {k}: " + ", ".join(f"{r} {v:.3f}" for r, v in g.items()))


if __name__ == "__main__":
    main()
