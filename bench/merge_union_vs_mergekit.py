"""`tokenizer_source` against mergekit: tiny models whose tokenizers differ, rows compared by token string.

    python bench/merge_union_vs_mergekit.py        # mergekit from the venv of bench/merge_vs_mergekit.py

Models (tiny Llama, 2 layers, untied and tied): a base, a variant with added plain and special tokens,
and a variant whose BPE tokenizer was trained on other text (many tokens missing, ids reordered).
Each recipe runs through `mergekit-yaml` and `compress merge`; for every token of the output
vocabulary the embedding and LM-head rows of both outputs are compared (mergekit orders the new ids
of a union by set and hash order, so ids may differ; the token sets must be equal).

Prints a table and writes bench/results/merge_union_vs_mergekit.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VENV = Path(os.environ.get("COMPRESS_BENCH_VENV", "/tmp/compress-bench-mergekit"))


def main() -> int:
    import yaml
    from transformers import AutoTokenizer

    from tests.fixtures import make_tiny_model
    from tests.merge.test_run import state
    from tests.merge.test_vocab import _retrained, _with_added

    exe = VENV / "bin" / "mergekit-yaml"
    if not exe.is_file():
        print(f"mergekit not found at {exe}: run bench/merge_vs_mergekit.py once (it creates the venv)", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        sets = {}
        for tied in (False, True):
            tag = "tied" if tied else "untied"
            base = make_tiny_model(root / f"base_{tag}", "llama", layers=2, seed=0, tie_word_embeddings=tied)
            x = _with_added(base, root / f"x_{tag}", 1, ["zebra_tok", "<tool>"], ["<|x_special|>"])
            z = _retrained(base, root / f"z_{tag}", 3)
            sets[tag] = (base, x, z)
        recipes = {}
        for tag, (base, x, z) in sets.items():
            common = {"dtype": "float32"}
            recipes[f"task_arithmetic union {tag}"] = {
                "merge_method": "task_arithmetic", "base_model": str(base), "tokenizer_source": "union",
                "models": [{"model": str(x), "parameters": {"weight": 0.6}}, {"model": str(z), "parameters": {"weight": 0.5}}],
                **common}
            recipes[f"linear union {tag}"] = {
                "merge_method": "linear", "tokenizer_source": "union",
                "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in ((x, 1.0), (z, 2.0), (base, 1.0))],
                **common}
            recipes[f"ties base {tag}"] = {
                "merge_method": "ties", "base_model": str(base), "tokenizer_source": "base",
                "models": [{"model": str(m), "parameters": {"weight": 0.5, "density": 0.7}} for m in (x, z)], **common}
            recipes[f"task_arithmetic source=z {tag}"] = {
                "merge_method": "task_arithmetic", "base_model": str(base), "tokenizer_source": str(z),
                "models": [{"model": str(m), "parameters": {"weight": 0.5}} for m in (x, z)], **common}
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        for name, rec in recipes.items():
            path = root / "r.yml"
            path.write_text(yaml.safe_dump(rec, sort_keys=False))
            mk, us = root / "mk", root / "us"
            for o in (mk, us):
                shutil.rmtree(o, ignore_errors=True)
            p1 = subprocess.run([str(exe), str(path), str(mk), "--random-seed", "0"], capture_output=True, text=True, env=env)
            p2 = subprocess.run([sys.executable, "-m", "compress", "merge", str(path), "-o", str(us)],
                                capture_output=True, text=True, env=env)
            if p1.returncode or p2.returncode:
                print(name, "failed:", p1.stderr[-2000:], p2.stderr[-2000:], file=sys.stderr)
                rows.append({"recipe": name, "error": True})
                continue
            vm = AutoTokenizer.from_pretrained(str(mk)).get_vocab()
            vu = AutoTokenizer.from_pretrained(str(us)).get_vocab()
            sm, su = state(mk), state(us)
            row = {"recipe": name, "tokens_mergekit": len(vm), "tokens_compress": len(vu),
                   "same_token_set": set(vm) == set(vu), "ids_equal": vm == vu,
                   "same_tensor_names": sorted(sm) == sorted(su), "tied_output": "lm_head.weight" not in su}
            worst = 0.0
            for key in ("model.embed_tokens.weight", "lm_head.weight"):
                if key not in sm or key not in su:
                    continue
                row[f"rows_{key.split('.')[-2]}"] = [sm[key].shape[0], su[key].shape[0]]
                common_toks = sorted(set(vm) & set(vu))
                a = sm[key].float()[[vm[t] for t in common_toks]]
                b = su[key].float()[[vu[t] for t in common_toks]]
                worst = max(worst, float((a - b).abs().max()))
            others = max((float((sm[k].float() - su[k].float()).abs().max()) for k in sm
                          if k in su and "embed" not in k and "lm_head" not in k), default=0.0)
            row["max_abs_vocab_rows"] = worst
            row["max_abs_other_tensors"] = others
            rows.append(row)
            print(f"{name:34s} tokens {len(vm)}/{len(vu)} same set {row['same_token_set']} ids equal {row['ids_equal']} "
                  f"| vocab rows max|Δ| {worst:.2e} | other {others:.2e}", file=sys.stderr, flush=True)
    print("\n| recipe | tokens (mergekit / compress) | same token set | same ids | max abs diff, vocab rows | other tensors |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r.get("error"):
            print(f"| {r['recipe']} | failed | | | | |")
            continue
        print(f"| {r['recipe']} | {r['tokens_mergekit']} / {r['tokens_compress']} | {r['same_token_set']} | {r['ids_equal']} | "
              f"{r['max_abs_vocab_rows']:.1e} | {r['max_abs_other_tensors']:.1e} |")
    out = ROOT / "bench" / "results" / "merge_union_vs_mergekit.json"
    out.write_text(json.dumps({"rows": rows, "mergekit_venv": str(VENV)}, indent=1) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
