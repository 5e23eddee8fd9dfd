"""Task files for bench/fuse_implicit.py: ARC-Easy or GSM8K as prompt / evaluation JSONL, disjoint halves.

ARC-Easy (test, 2376 items) is shuffled with seed 0 and cut in two: the first half gives prompts for
`compress fuse data`, the second half is only ever evaluated. The first `shots` prompt-half items are
the plain few-shot examples of models without a chat template, and are kept out of both halves.
GSM8K: train.jsonl gives prompts, test.jsonl evaluation.

Each record: {"id", "prompt", "reference"} with the reference a label (ARC, with the option texts)
or the worked answer ending in "#### N" (GSM8K).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COMPRESS_SHARED") or next(
    (p / "shared" for p in ROOT.parents if (p / "shared" / "data").is_dir()), ROOT.parent / "shared"))
DATA = SHARED / "data"
ARC_INSTRUCTION = "Answer with the letter of the correct option."
ARC_OPEN_INSTRUCTION = "Answer in a few words."
ARC_WORDS_INSTRUCTION = "Answer with the correct option, copied word for word."
BOOLQ_INSTRUCTION = "Answer yes or no."
GSM_INSTRUCTION = "Solve the problem step by step, then write the final number after '####'."


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def arc_record(d: dict) -> dict:
    """Options labelled A, B, C, ... (the 1-4 labels of a few ARC items become letters too)."""
    q = d["question"]
    letter = {c["label"]: "ABCDEFGHIJ"[i] for i, c in enumerate(q["choices"])}
    opts = "".join(f"\n{letter[c['label']]}. {c['text']}" for c in q["choices"])
    return {"id": d["id"], "prompt": f"Question: {q['stem']}{opts}\n{ARC_INSTRUCTION}",
            "reference": {"answer": letter[d["answerKey"]], "choices": {letter[c["label"]]: c["text"] for c in q["choices"]}}}


def arc_words_record(d: dict) -> dict:
    """The options listed without labels, one per line; the answer is written out as the option's words
    (the choice verifier finds the one option the response contains as whole words)."""
    q = d["question"]
    letter = {c["label"]: "ABCDEFGHIJ"[i] for i, c in enumerate(q["choices"])}
    opts = "".join(f"\n- {c['text']}" for c in q["choices"])
    return {"id": d["id"], "prompt": f"Question: {q['stem']}\nOptions:{opts}\n{ARC_WORDS_INSTRUCTION}",
            "reference": {"answer": letter[d["answerKey"]], "choices": {letter[c["label"]]: c["text"] for c in q["choices"]}}}


def arc_open_record(d: dict) -> dict:
    """lm-eval's ARC prompt, options not shown, answered in words: the closest-option verifier picks the option
    whose text is nearest to the answer's first line."""
    q = d["question"]
    letter = {c["label"]: "ABCDEFGHIJ"[i] for i, c in enumerate(q["choices"])}
    return {"id": d["id"], "prompt": f"Question: {q['stem']}\n{ARC_OPEN_INSTRUCTION}",
            "reference": {"answer": letter[d["answerKey"]], "choices": {letter[c["label"]]: c["text"] for c in q["choices"]}}}


def boolq_record(d: dict) -> dict:
    """A yes/no question as a two-option item: the choice verifier matches the words yes / no."""
    yes = d["label"] is True or str(d["label"]).lower() in ("true", "1")
    return {"id": f"boolq-{d['idx']}", "prompt": f"{d['passage']}\nQuestion: {d['question']}?\n{BOOLQ_INSTRUCTION}",
            "reference": {"answer": "A" if yes else "B", "choices": {"A": "yes", "B": "no"}}}


def gsm_record(i: int, d: dict, split: str) -> dict:
    return {"id": f"gsm8k-{split}-{i}", "prompt": f"{d['question']}\n{GSM_INSTRUCTION}", "reference": d["answer"]}


def task_files(task: str, shots: int = 3) -> tuple[list[dict], list[dict], str]:
    """(prompt records, evaluation records, plain few-shot format with {prompt}) of a task."""
    if task in ("arc_easy", "arc_easy_words", "arc_easy_open"):
        rows = _jsonl(DATA / "arc" / "ARC-Easy-Test.jsonl")
        random.Random(0).shuffle(rows)
        words = task != "arc_easy"
        recs = [{"arc_easy": arc_record, "arc_easy_words": arc_words_record, "arc_easy_open": arc_open_record}[task](d)
                for d in rows]
        half = len(recs) // 2
        shot_recs, prompts, evals = recs[:shots], recs[shots:half], recs[half:]
        gold = (lambda r: r["reference"]["choices"][r["reference"]["answer"]]) if words else (lambda r: r["reference"]["answer"])
        fmt = "".join(f"{r['prompt']}\nAnswer: {gold(r)}\n\n" for r in shot_recs) + "{prompt}\nAnswer:"
        return prompts, evals, fmt
    if task == "boolq":
        rows = _jsonl(DATA / "boolq" / "val.jsonl")
        random.Random(0).shuffle(rows)
        recs = [boolq_record(d) for d in rows]
        half = len(recs) // 2
        shot_recs, prompts, evals = recs[:shots], recs[shots:half], recs[half:]
        fmt = "".join(f"{r['prompt']}\nAnswer: {r['reference']['choices'][r['reference']['answer']]}\n\n"
                      for r in shot_recs) + "{prompt}\nAnswer:"
        return prompts, evals, fmt
    if task == "gsm8k":
        train = [gsm_record(i, d, "train") for i, d in enumerate(_jsonl(DATA / "gsm8k" / "train.jsonl"))]
        test = [gsm_record(i, d, "test") for i, d in enumerate(_jsonl(DATA / "gsm8k" / "test.jsonl"))]
        shot_recs = train[:shots]
        fmt = "".join(f"{r['prompt']}\nAnswer: {r['reference']}\n\n" for r in shot_recs) + "{prompt}\nAnswer:"
        return train[shots:], test, fmt
    raise SystemExit(f"unknown task {task!r}: arc_easy, boolq or gsm8k")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
