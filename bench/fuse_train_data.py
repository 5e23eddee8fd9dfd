"""Write the fusion training records `runs/fuse_train.jsonl` (GSM8K train + AlpacaEval instructions).

    python bench/fuse_train_data.py [--gsm8k 700] [--alpaca 400] [-o runs/fuse_train.jsonl]

GSM8K train problems from index 1000 on (the first 256 trained `/work/models/smollm2-gsm8k`, see
notes/fuse.md) as `question`/`answer` records, and AlpacaEval instructions with their reference
outputs as `instruction`/`output` records, interleaved in a fixed order (seed 0). `fuse run
examples/fusechat.yml` trains on the first `limit` lines; `bench/fuse_train.py` holds out the lines
after them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

DATA = Path(os.environ.get("COMPRESS_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"


def build(n_gsm8k: int, n_alpaca: int, seed: int = 0) -> list[dict]:
    gsm = [json.loads(x) for x in (DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[1000: 1000 + n_gsm8k]]
    alp = json.loads((DATA / "alpaca_eval" / "model_outputs.json").read_text())[:n_alpaca]
    recs = [{"question": r["question"], "answer": r["answer"]} for r in gsm]
    recs += [{"instruction": r["instruction"], "output": r["output"]} for r in alp]
    random.Random(seed).shuffle(recs)
    return recs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", type=int, default=700)
    ap.add_argument("--alpaca", type=int, default=400)
    ap.add_argument("-o", "--out", default=str(Path(__file__).resolve().parents[1] / "runs" / "fuse_train.jsonl"))
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in build(args.gsm8k, args.alpaca)))


if __name__ == "__main__":
    main()
