"""SocialBench as lm-eval tasks: the local-data loader, the per-item scoring hooks and the task configs.

Each column × language is an lm-eval task built from `tasks/socialbench.yaml` (generative) or
`tasks/socialbench_loglik.yaml` (loglik; memory columns always stay generative), reading the user's
copy of the official file through `dataset` below. A document is one checked item of the column, in
file order: `doc_id` i is the i-th item of the column, `index` its position in the file.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.eval.socialbench import COLUMN, MODES, PROMPT_SOURCES, split_task
from compress.eval.socialbench.data import FileCheck, Item, check_file, column_items
from compress.eval.socialbench.prompts import build_prompt
from compress.eval.socialbench.scoring import parse_answer, score_choice, score_memory, select_by_loglik


@lru_cache(maxsize=8)
def _checked(path: str, mtime_ns: int, size: int) -> FileCheck:  # noqa: ARG001 - the cache key
    return check_file(path)


def checked_file(path: str) -> FileCheck:
    """`check_file`, read once per file version."""
    st = Path(path).stat()
    return _checked(str(path), st.st_mtime_ns, st.st_size)


def doc_row(item: Item, prompt_source: str) -> dict[str, Any]:
    letters = item.letters
    return {"index": item.index, "category": item.category, "kind": item.kind, "lang": item.lang,
            "prompt": build_prompt(item, prompt_source), "letters": letters, "label": list(item.label),
            "options": [text for _, text in item.choices],
            "gold": letters.index(item.label[0]) if letters else 0, "target": ", ".join(item.label)}


def rows(path: str, column: str, lang: str, prompt_source: str = "template") -> list[dict[str, Any]]:
    items = column_items(checked_file(path), COLUMN[column], lang)
    if not items:
        raise CompressError(f"SocialBench data {path} holds no {COLUMN[column].label} items in {lang} "
                            f"(categories {', '.join(COLUMN[column].categories)})")
    return [doc_row(it, prompt_source) for it in items]


def dataset(files: dict[str, str] | None = None, column: str | None = None, lang: str | None = None,
            prompt_source: str = "template", **_: Any):
    """lm-eval `custom_dataset`: the column's documents as a one-split DatasetDict."""
    import datasets

    if not files or "test" not in files or column not in COLUMN or lang is None:
        raise CompressError(f"SocialBench task data needs a file, a column and a language; got {files}, {column}, {lang}")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows(files["test"], column, lang, prompt_source))})


def score_generation(doc: dict[str, Any], text: str | None) -> dict[str, Any]:
    """Score of one generated reply: {score (None if unreadable), letters, method}."""
    if doc["kind"] == "mem":
        s = score_memory(text, doc["label"])
        return {"score": s, "letters": [], "method": "none" if s is None else "keywords"}
    p = parse_answer(text, doc["letters"], doc.get("options"), single=len(set(doc["label"])) == 1)
    return {"score": score_choice(p.letters, doc["label"]), "letters": list(p.letters), "method": p.method,
            "pattern": p.pattern}


def score_loglik(doc: dict[str, Any], logliks: list[float]) -> dict[str, Any]:
    letters = select_by_loglik(logliks, doc["letters"])
    return {"score": score_choice(letters, doc["label"]), "letters": list(letters), "method": "loglik"}


def _metrics(s: dict[str, Any]) -> dict[str, float]:
    return {"strict": 0.0 if s["score"] is None else float(s["score"]), "coverage": float(s["score"] is not None),
            "fallback": float(s["method"] == "fallback")}


def process_generation(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    return _metrics(score_generation(doc, results[0] if results else None))


def process_loglik(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    return _metrics(score_loglik(doc, [float(r[0]) for r in results]))


def task_config(task: str, files: dict[str, str], options: dict[str, Any] | None,
                load_task_yaml) -> dict[str, Any]:
    """The inline lm-eval config of one SocialBench task (`options`: mode, prompt_source), from the packaged
    YAML that `load_task_yaml(name)` reads (compress.eval.tasks)."""
    opts = dict(options or {})
    mode, source = opts.get("mode", "generative"), opts.get("prompt_source", "template")
    if mode not in MODES:
        raise CompressError(f"--socialbench-mode must be one of {', '.join(MODES)}, got {mode!r}")
    if source not in PROMPT_SOURCES:
        raise CompressError(f"--prompt-source must be one of {', '.join(PROMPT_SOURCES)}, got {source!r}")
    col, lang = split_task(task)
    loglik = mode == "loglik" and not col.key.startswith("cm_")
    cfg = load_task_yaml("socialbench_loglik" if loglik else "socialbench")
    cfg["task"] = task
    cfg["dataset_kwargs"] = {"files": dict(files), "column": col.key, "lang": lang, "prompt_source": source}
    return cfg
