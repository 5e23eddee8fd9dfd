"""Local task data -> the Hugging Face schema lm-eval's built-in tasks expect.

Each loader is an lm-eval `custom_dataset` callable: lm-eval calls it with the task's metadata and
`dataset_kwargs`; here `dataset_kwargs` carries `files`, a dict of the local files to read. Each
returns a `datasets.DatasetDict` whose rows have exactly the fields (and order) of the hub dataset
the built-in task reads, so that the built-in `doc_to_text`/`doc_to_choice`/`doc_to_target`
templates (copied verbatim into the YAML files beside this module) give the same prompts.
Nothing here touches a hub.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from compress.errors import CompressError


def _dataset_dict(splits: dict[str, list[dict[str, Any]]]):
    import datasets

    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


def _read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CompressError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    if not rows:
        raise CompressError(f"{path} holds no rows")
    return rows


def _convert(path: str | Path, rows: Iterable[dict[str, Any]], fn: Callable[[dict[str, Any]], dict[str, Any]],
             ) -> list[dict[str, Any]]:
    out = []
    for n, row in enumerate(rows, 1):
        try:
            out.append(fn(row))
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise CompressError(f"{path}: row {n} is not in the expected format ({type(e).__name__}: {e})") from None
    return out


def _files(files: dict[str, str] | None, *keys: str) -> dict[str, str]:
    if not files or any(k not in files for k in keys):
        raise CompressError(f"task data needs files {', '.join(keys)}; got {sorted(files or {})}")
    return files


# --------------------------------------------------------------------------------------- PIQA
def piqa_rows(questions: str | Path, labels: str | Path) -> list[dict[str, Any]]:
    """Official PIQA `valid.jsonl` + `valid-labels.lst` -> baber/piqa rows {goal, sol1, sol2, label}."""
    docs = _read_jsonl(questions)
    lab = [ln.strip() for ln in Path(labels).read_text().splitlines() if ln.strip()]
    if len(lab) != len(docs):
        raise CompressError(f"{labels} has {len(lab)} labels but {questions} has {len(docs)} rows")
    return _convert(questions, zip(docs, lab, strict=True),
                    lambda d: {"goal": d[0]["goal"], "sol1": d[0]["sol1"], "sol2": d[0]["sol2"], "label": int(d[1])})


def piqa(files: dict[str, str] | None = None, **_: Any):
    f = _files(files, "validation", "labels")
    return _dataset_dict({"validation": piqa_rows(f["validation"], f["labels"])})


# --------------------------------------------------------------------------------- WinoGrande
def _winogrande_row(d: dict[str, Any]) -> dict[str, Any]:
    if "sentence" in d:  # original WinoGrande jsonl (and the HF schema)
        return {"sentence": d["sentence"], "option1": d["option1"], "option2": d["option2"], "answer": str(d["answer"])}
    # llm-foundry's converted format: context_options[i] = sentence[:blank] + option_i,
    # continuation = sentence[blank + 1:].strip(), gold = answer - 1. The built-in task only ever
    # uses sentence[:blank] + option_i and sentence[blank + 1:].strip(), so any split of the common
    # prefix that rebuilds both contexts exactly gives identical prompts; cut at a word boundary.
    c1, c2 = d["context_options"]
    n = 0
    while n < min(len(c1), len(c2)) and c1[n] == c2[n]:
        n += 1
    cut = max(c1.rfind(" ", 0, n), -1) + 1  # after the last space inside the common prefix
    prefix = c1[:cut]
    if "_" in prefix:
        cut, prefix = 0, ""
    gold = int(d["gold"])
    if gold not in (0, 1):
        raise ValueError(f"gold {gold} is not 0 or 1")
    return {"sentence": f"{prefix}_ {d['continuation'].strip()}", "option1": c1[cut:], "option2": c2[cut:],
            "answer": str(gold + 1)}


def winogrande(files: dict[str, str] | None = None, **_: Any):
    f = _files(files, "validation")
    return _dataset_dict({"validation": _convert(f["validation"], _read_jsonl(f["validation"]), _winogrande_row)})


# ---------------------------------------------------------------------------------------- ARC
def _arc_row(d: dict[str, Any]) -> dict[str, Any]:
    if isinstance(d["question"], str):  # already the HF allenai/ai2_arc schema
        return {"id": d["id"], "question": d["question"], "choices": d["choices"], "answerKey": d["answerKey"]}
    ch = d["question"]["choices"]
    labels = [str(c["label"]) for c in ch]
    if str(d["answerKey"]) not in labels:
        raise ValueError(f"answerKey {d['answerKey']!r} is not one of the choice labels {labels}")
    return {"id": d["id"], "question": d["question"]["stem"],
            "choices": {"text": [c["text"] for c in ch], "label": labels}, "answerKey": str(d["answerKey"])}


def arc(files: dict[str, str] | None = None, **_: Any):
    """AI2 ARC jsonl (question.stem, question.choices[], answerKey; some keys are 1-4) -> ai2_arc rows."""
    f = _files(files, "test")
    return _dataset_dict({"test": _convert(f["test"], _read_jsonl(f["test"]), _arc_row)})


# -------------------------------------------------------------------------------------- BoolQ
def _bool(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    s = str(v).strip().lower()
    if s in ("true", "1"):
        return 1
    if s in ("false", "0"):
        return 0
    raise ValueError(f"label {v!r} is not true/false")


def _boolq_row(d: dict[str, Any]) -> dict[str, Any]:
    if "label" in d:  # SuperGLUE release (what aps/super_glue reads): passage is "Title -- text"
        return {"question": d["question"], "passage": d["passage"], "idx": int(d["idx"]), "label": _bool(d["label"])}
    # Google's original dev.jsonl: {question, title, answer, passage}; SuperGLUE joined title and passage
    return {"question": d["question"], "passage": f"{d['title']} -- {d['passage']}", "idx": -1, "label": _bool(d["answer"])}


def boolq(files: dict[str, str] | None = None, **_: Any):
    f = _files(files, "validation")
    rows = _convert(f["validation"], _read_jsonl(f["validation"]), _boolq_row)
    for i, r in enumerate(rows):
        if r["idx"] < 0:
            r["idx"] = i
    return _dataset_dict({"validation": rows})


# --------------------------------------------------------------------------------- OpenBookQA
_OBQA_CHOICE = re.compile(r"\(([A-Z])\)\s")


def _obqa_choices(text: str) -> dict[str, list[str]]:
    parts = _OBQA_CHOICE.split(text.strip())
    if parts[0].strip():
        raise ValueError(f"choices do not start with '(A) ': {text[:40]!r}")
    labels, texts = parts[1::2], [p.strip() for p in parts[2::2]]
    if labels != [chr(ord("A") + i) for i in range(len(labels))] or len(labels) < 2:
        raise ValueError(f"choice labels {labels} are not A, B, C, ...")
    return {"text": texts, "label": labels}


def openbookqa_rows(path: str | Path) -> list[dict[str, Any]]:
    """OpenBookQA Main release (TSV: ID, Question Stem, Choices "(A) .. (B) ..", .., Answer Key; or
    the original jsonl: id, question{stem, choices[]}, answerKey) -> allenai/openbookqa `main` rows."""
    p = Path(path)
    if p.suffix == ".tsv":
        with open(p, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            rows = list(reader)
        if not rows:
            raise CompressError(f"{path} holds no rows")
        return _convert(path, rows, lambda d: {
            "id": d["ID"], "question_stem": d["Question Stem"], "choices": _obqa_choices(d["Choices"]),
            "answerKey": d["Answer Key"].strip()})
    return _convert(path, _read_jsonl(p), lambda d: {
        "id": d["id"], "question_stem": d["question"]["stem"],
        "choices": {"text": [c["text"] for c in d["question"]["choices"]],
                    "label": [c["label"] for c in d["question"]["choices"]]},
        "answerKey": d["answerKey"]} if isinstance(d["question"], dict) else {
        "id": d["id"], "question_stem": d["question_stem"], "choices": d["choices"], "answerKey": d["answerKey"]})


def openbookqa(files: dict[str, str] | None = None, **_: Any):
    f = _files(files, "test")
    return _dataset_dict({"test": openbookqa_rows(f["test"])})


# ---------------------------------------------------------------------------------- HellaSwag
def _hellaswag_row(d: dict[str, Any]) -> dict[str, Any]:
    if len(d["endings"]) != 4:
        raise ValueError(f"{len(d['endings'])} endings, expected 4")
    return {"ind": int(d.get("ind", 0)), "activity_label": d["activity_label"], "ctx_a": d["ctx_a"],
            "ctx_b": d["ctx_b"], "ctx": d.get("ctx", f"{d['ctx_a']} {d['ctx_b']}"), "endings": list(d["endings"]),
            "source_id": d.get("source_id", ""), "split": d.get("split", "val"),
            "split_type": d.get("split_type", ""), "label": str(d["label"])}


def hellaswag(files: dict[str, str] | None = None, **_: Any):
    """Original `hellaswag_val.jsonl` rows (or Rowan/hellaswag exports) -> Rowan/hellaswag rows."""
    f = _files(files, "validation")
    return _dataset_dict({"validation": _convert(f["validation"], _read_jsonl(f["validation"]), _hellaswag_row)})


# -------------------------------------------------------------------------------------- GSM8K
def gsm8k(files: dict[str, str] | None = None, **_: Any):
    """openai/grade-school-math jsonl {question, answer} -> openai/gsm8k `main`. The few-shot split
    is `train` when a train file is given, else the test split itself (lm-eval then leaves the
    document being answered out of its own examples)."""
    f = _files(files, "test")
    row = lambda d: {"question": d["question"], "answer": d["answer"]}  # noqa: E731
    splits = {"test": _convert(f["test"], _read_jsonl(f["test"]), row)}
    if f.get("train"):
        splits["train"] = _convert(f["train"], _read_jsonl(f["train"]), row)
    return _dataset_dict(splits)
