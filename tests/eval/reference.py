"""The independent side of the eval tests: lm-eval run *directly*, as its users run it.

The local data is rewritten here into the hub datasets' schemas (a second, deliberately plain
conversion, independent of compress.eval.tasks.adapters), lm-eval's own built-in task YAML files
are loaded from its package and only pointed at those files (`dataset_path: json`), and the model
is loaded by lm-eval's HFLM from the folder path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

BUILTIN = {
    "piqa": "piqa/piqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "gsm8k": "gsm8k/gsm8k.yaml",
}

# Hand-written HellaSwag rows in the original hellaswag_val.jsonl format (rowanz/hellaswag).
HELLASWAG_ROWS = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
     "source_id": "activitynet~v_-JhWjGDPHMY"},
    {"ind": 92, "activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.",
     "ctx_b": "the lady", "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
     "split": "val", "split_type": "indomain", "label": 3,
     "endings": ["swings and lands in her arms.", "pulls the barbell forward.", "pulls a rope attached to the barbell.",
                 "stands and lifts the weight over her head."], "source_id": "activitynet~v_-lJS58hyo1c"},
    {"ind": 4031, "activity_label": "Home and Garden",
     "ctx_a": "[header] How to clean a fridge [title] Unplug the fridge. [step] Take everything out.",
     "ctx_b": "", "ctx": "[header] How to clean a fridge [title] Unplug the fridge. [step] Take everything out. ",
     "split": "val", "split_type": "zeroshot", "label": 0,
     "endings": ["[substeps] Throw away spoiled food and wipe the shelves.", "Paint the fridge [title] blue.",
                 "Sing to the fridge.", "[step] Sell the fridge online."], "source_id": "wikihow~123"},
]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def hub_format(task: str, data: Path, out: Path) -> dict[str, str]:
    """Write the local data of `task` in its hub schema; returns {split: file}."""
    if task == "piqa":
        docs = _lines(data / "piqa/valid.jsonl")
        labels = (data / "piqa/valid-labels.lst").read_text().split()
        rows = [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": int(lab)} for d, lab in zip(docs, labels, strict=True)]
        return {"validation": str(_jsonl(out / "piqa.jsonl", rows))}
    if task == "winogrande":
        # llm-foundry rows carry whole contexts; the trivial split (empty text before the blank)
        # gives lm-eval exactly the contexts and continuation of the original sentence.
        rows = [{"sentence": "_ " + d["continuation"], "option1": d["context_options"][0],
                 "option2": d["context_options"][1], "answer": "1" if d["gold"] == 0 else "2"}
                for d in _lines(data / "winogrande/winogrande.jsonl")]
        return {"validation": str(_jsonl(out / "winogrande.jsonl", rows))}
    if task in ("arc_easy", "arc_challenge"):
        name = "ARC-Easy-Test.jsonl" if task == "arc_easy" else "ARC-Challenge-Test.jsonl"
        rows = []
        for d in _lines(data / "arc" / name):
            q = d["question"]
            rows.append({"id": d["id"], "question": q["stem"],
                         "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
                         "answerKey": d["answerKey"]})
        return {"test": str(_jsonl(out / f"{task}.jsonl", rows))}
    if task == "boolq":
        rows = [{"question": d["question"], "passage": d["passage"], "idx": d["idx"], "label": 1 if d["label"] in (True, "true") else 0}
                for d in _lines(data / "boolq/val.jsonl")]
        return {"validation": str(_jsonl(out / "boolq.jsonl", rows))}
    if task == "openbookqa":
        lines = (data / "openbookqa/test.tsv").read_text().splitlines()
        rows = []
        for line in lines[1:]:
            ident, stem, choices, _, key = line.split("\t")
            found = re.findall(r"\(([A-D])\) (.*?)(?= \([A-D]\) |$)", choices)
            rows.append({"id": ident, "question_stem": stem,
                         "choices": {"text": [t for _, t in found], "label": [lab for lab, _ in found]}, "answerKey": key})
        return {"test": str(_jsonl(out / "openbookqa.jsonl", rows))}
    if task == "hellaswag":
        rows = [{**r, "label": str(r["label"])} for r in HELLASWAG_ROWS]
        return {"validation": str(_jsonl(out / "hellaswag.jsonl", rows))}
    if task == "gsm8k":
        rows = _lines(data / "gsm8k/test.jsonl")
        return {"test": str(_jsonl(out / "gsm8k_test.jsonl", rows)),
                "train": str(_jsonl(out / "gsm8k_train.jsonl", rows[-20:]))}
    raise KeyError(task)


def builtin_config(task: str, files: dict[str, str]) -> dict[str, Any]:
    """lm-eval's own task config for `task`, reading `files` instead of the hub."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / BUILTIN[task], resolve_func=True)
    for k in ("tag", "group"):
        cfg.pop(k, None)
    cfg.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": files})
    for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
        if cfg.get(key) and cfg[key] not in files and "x" not in files:
            cfg[key] = None  # splits with no local file (train/validation only feed few-shot examples)
    return cfg


def run_builtin(model_path: str | Path, tasks: dict[str, dict[str, str]], limit: int, dtype: str = "auto",
                num_fewshot: int | None = None, gen_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """lm_eval.simple_evaluate with its HFLM loading `model_path` itself; returns its raw output."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_path), dtype=dtype, batch_size=1, device="cpu")
    return lm_eval.simple_evaluate(model=lm, tasks=[builtin_config(t, f) for t, f in tasks.items()], limit=limit,
                                   num_fewshot=num_fewshot, gen_kwargs=gen_kwargs,
                                   task_manager=TaskManager(include_defaults=False), log_samples=True)
