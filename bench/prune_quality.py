"""Quality of BlockPruner against the layer baselines, following the paper's protocol at small scale.

    python bench/prune_quality.py [--model /work/cache/smollm2] [--samples 24] [--seq-len 256]
                                  [--ratios 0.1,0.2] [--methods shortgpt,blockpruner,sleb,layer,blockpruner-ppp] [--resume]

Protocol (issue 3 §5; BlockPruner §4.1 at small scale):
- calibration: Alpaca-style instruction/response text (the paper calibrates on Alpaca), here the
  AlpacaEval records of shared/data joined as "instruction\\n\\noutput"; the records are split in two
  halves with a fixed seed: the first half gives the calibration windows (default 24 x 256 tokens,
  about 6k tokens), the second half is held-out instruction text for evaluation;
- one greedy run per method up to the largest ratio; every smaller ratio is the smallest prefix of
  that same nested sequence reaching it (as `compress prune --ratio` picks it);
- the calibration perplexity of a pruned model is the search's own score of its last step;
- evaluation of each pruned model (masked in memory, identical to the exported checkpoint, see
  tests/prune) on WikiText-2 test (perplexity, non-overlapping windows of --eval-seq-len, the first
  --eval-windows windows) and on the held-out instruction text;
- `blockpruner-ppp` is BlockPruner with `--criterion ppl-per-param` (beyond the paper).
Zero-shot accuracies are not measured here (run `compress eval` on exported checkpoints for them).
Prints a Markdown table and writes bench/results/prune_quality.json. Nothing is tuned to make the
paper's ordering appear: the settings are the defaults above.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COMPRESS_SHARED", ROOT.parent / "shared")) / "data"
ALPACA = SHARED / "alpaca_eval" / "model_outputs.json"
WIKI = SHARED / "wikitext-2-raw" / "wiki.test.raw"


def split_records(tok, seed: int) -> tuple[list[str], list[str]]:
    from compress.data import read_documents

    docs = read_documents(ALPACA, "instruction,output", tok)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    return [docs[i] for i in order[:half]], [docs[i] for i in order[half:]]


def windows_of(tok, docs: list[str], seq_len: int, n: int | None, seed: int) -> torch.Tensor:
    from compress.data import pack_windows, sample_windows, tokenize_stream

    return sample_windows(pack_windows(tokenize_stream(tok, docs), seq_len), n, seed)


def eval_ppl(model, windows: torch.Tensor, batch_size: int) -> float:
    from compress.eval.ppl import perplexity

    return perplexity(model, windows, batch_size).ppl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/work/cache/smollm2")
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--ratios", default="0.1,0.2")
    ap.add_argument("--methods", default="shortgpt,blockpruner,sleb,layer,blockpruner-ppp")
    ap.add_argument("--search", default="fast", choices=["fast", "naive", "lazy"])
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="keep the methods already in --out")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "prune_quality.json"))
    args = ap.parse_args()

    from compress.arch import family_for
    from compress.checkpoint.reader import Checkpoint
    from compress.data import load_windows
    from compress.model import load
    from compress.progress import info, set_quiet
    from compress.prune.baselines import SLEB_BARRIERS, rank_by_score, shortgpt_scores
    from compress.prune.evaluators import FastEvaluator, NaiveEvaluator
    from compress.prune.mask import apply_removals, decoder_layers
    from compress.prune.params import checkpoint_params
    from compress.prune.score import BlockRunner
    from compress.prune.search import GreedySearch, StopRule, select_prefix
    from compress.prune.units import block_units, layer_units

    if args.threads:
        torch.set_num_threads(args.threads)
    set_quiet(True)
    ratios = sorted(float(r) for r in args.ratios.split(","))
    ckpt = Checkpoint(args.model)
    fam = family_for(ckpt.config, ckpt.names())
    params = checkpoint_params(ckpt)
    model, tok = load(args.model, args.device, args.dtype)
    calib_docs, held_docs = split_records(tok, args.seed)
    calib = windows_of(tok, calib_docs, args.seq_len, args.samples, args.seed)
    held = windows_of(tok, held_docs, args.eval_seq_len, args.eval_windows, args.seed)
    wiki = load_windows(WIKI, tok, args.eval_seq_len)[: args.eval_windows]
    tokens = calib.shape[0] * (calib.shape[1] - 1)
    print(f"calibration {calib.shape[0]} x {calib.shape[1]} = {tokens} scored tokens; held-out "
          f"{held.shape[0]} x {held.shape[1]}; wikitext-2 test {wiki.shape[0]} x {wiki.shape[1]}", flush=True)

    def evaluate(removed, calib_ppl: float | None = None) -> dict:
        layers = decoder_layers(model, fam)
        saved = [(layers[i], dict(layers[i].named_children())) for i, _ in removed]
        apply_removals(model, fam, removed)
        try:
            return {"wikitext2_ppl": eval_ppl(model, wiki, 4), "heldout_ppl": eval_ppl(model, held, 4),
                    "calib_ppl": eval_ppl(model, calib, 4) if calib_ppl is None else calib_ppl}
        finally:
            for layer, children in saved:
                for name, mod in children.items():
                    setattr(layer, name, mod)

    out = Path(args.out)
    old = json.loads(out.read_text()) if args.resume and out.exists() else None
    if old is not None and old["calibration_tokens"] != tokens:
        raise SystemExit(f"{out} was made with other settings; drop --resume")
    rows = old["rows"] if old else [{"method": "dense", "ratio": 0.0, "blocks": 0, "search_seconds": 0.0,
                                     **evaluate([])}]
    print(rows[0], flush=True)

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": vars(args), "calibration_tokens": tokens, "rows": rows},
                                  indent=1, default=str))
        tmp.replace(out)

    save()
    runner = BlockRunner(model, fam)
    allpos = set(range(runner.n_positions))
    for method in args.methods.split(","):
        if any(r["method"] == method for r in rows):
            print(f"{method}: kept from {out}", flush=True)
            continue
        t0 = time.perf_counter()
        criterion = "ppl-per-param" if method == "blockpruner-ppp" else "ppl"
        fixed = None
        if method.startswith("blockpruner"):
            units = block_units(runner.n_layers, "mix", allpos, params.blocks)
        else:
            units = layer_units(runner.n_layers, allpos, params.blocks, SLEB_BARRIERS if method == "sleb" else (0, 0))
            if method == "shortgpt":
                fixed = rank_by_score(units, shortgpt_scores(model, fam, calib, args.batch_size))
        ev = (NaiveEvaluator(runner, calib, args.batch_size) if args.search == "naive"
              else FastEvaluator(runner, calib, args.batch_size))

        state_file = out.with_name(f"{out.stem}.{method}.state.json")

        def on_step(g, method=method, state_file=state_file):
            s = g.steps[-1]
            info(f"{method} step {s.step}: {s.unit} ratio {100 * s.ratio:.2f}% calib ppl {s.ppl:.2f} ({s.seconds:.0f}s)")
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"calibration_tokens": tokens, "search": args.search, "state": g.state()}))
            tmp.replace(state_file)

        set_quiet(False)
        g = GreedySearch(ev, units, stop=StopRule(ratio=ratios[-1]), total_params=params.total,
                         criterion=criterion, search=args.search, fixed_order=fixed, on_step=on_step)
        if args.resume and state_file.exists():  # a search interrupted between steps goes on from there
            saved = json.loads(state_file.read_text())
            if saved["calibration_tokens"] == tokens and saved["search"] == args.search:
                g.restore(saved["state"])
                print(f"{method}: resumed after step {len(g.steps)} from {state_file}", flush=True)
        setup = time.perf_counter() - t0  # ShortGPT's ranking pass, the fast search's first cache
        res = g.run()
        set_quiet(True)
        ev.close()
        seconds = setup + res.seconds  # all steps, across resumed runs
        for r in ratios:
            chosen = select_prefix(res.steps, StopRule(ratio=r))
            removed = [b for s in chosen for b in s.blocks]
            row = {"method": method, "target_ratio": r, "ratio": chosen[-1].ratio, "blocks": len(removed),
                   "attn": sum(k == "attn" for _, k in removed), "mlp": sum(k == "mlp" for _, k in removed),
                   "sequence": [s.unit for s in chosen], "search_seconds": seconds, **evaluate(removed, chosen[-1].ppl)}
            rows.append(row)
            print({k: v for k, v in row.items() if k != "sequence"}, flush=True)
        save()

    print("\n| method | target | ratio % | blocks (attn+mlp) | WikiText-2 ppl | held-out instr. ppl | calib ppl | search s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tgt = f"{100 * r['target_ratio']:.0f}%" if "target_ratio" in r else "-"
        blk = f"{r['blocks']} ({r.get('attn', 0)}+{r.get('mlp', 0)})"
        print(f"| {r['method']} | {tgt} | {100 * r['ratio']:.2f} | {blk} | {r['wikitext2_ppl']:.2f} | "
              f"{r['heldout_ppl']:.2f} | {r['calib_ppl']:.2f} | {r['search_seconds']:.0f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
