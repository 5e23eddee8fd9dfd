"""SocialBench inside `compress eval`: check the data before any model loads, score a loaded model,
and summarise the columns (per language, both languages pooled, the 9-column average).

Prompting: the benchmark is defined for chat models (zero-shot queries), so a model whose tokenizer
has a chat template always gets its prompts as one user turn of that template (whatever
`--chat-template` says for the other tasks); a model without one (a base model) gets the plain prompt
text. Each result records which (`prompt_format`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from compress.errors import CompressError
from compress.eval.socialbench import COLUMNS, LANGS, split_task, task_name
from compress.eval.socialbench.data import column_items, column_report
from compress.eval.socialbench.prompts import INSTRUCTION_LAYOUT
from compress.eval.socialbench.scoring import chance
from compress.eval.socialbench.tasks import checked_file, rows, score_generation, score_loglik
from compress.eval.tasks import TaskData

LOGLIK_RULE = ("softmax over the option letters' log-likelihoods; every option with probability above 1/k "
               "(k options) is chosen, most likely first, the most likely always; the number of right answers "
               "is never used")
SCORING = ("strict: mean score with unreadable answers as 0 (the table's number); score: the paper's mean over "
           "readable answers only (= strict / coverage); coverage: share of readable answers")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def effective_mode(task: str, mode: str) -> str:
    col, _ = split_task(task)
    return "generative" if col.key.startswith("cm_") else mode


def describe(td: TaskData, limit: int | None = None) -> dict[str, Any]:
    """The task's settings and data report; refuses a file of the wrong shape or a column it lacks."""
    col, lang = split_task(td.task)
    check = checked_file(td.files["test"])
    report = column_report(check, col, lang)
    if report["items"] == 0:
        raise CompressError(f"no data for task {td.task}: {td.files['test']} holds no {col.label} items in {lang} "
                            f"(categories {', '.join(col.categories)}); pass the file of that dimension, {col.file}")
    items = column_items(check, col, lang)[:limit]
    choice = [it for it in items if it.kind != "mem"]
    mode = effective_mode(td.task, td.options.get("mode", "generative"))
    source = td.options.get("prompt_source", "template")
    out = {"family": "socialbench", "column": col.label, "lang": lang, "mode": mode, "prompt_source": source,
           "scoring": SCORING, "data_report": report,
           "chance": sum(chance(len(it.choices)) for it in choice) / len(choice) if choice else None}
    if mode == "loglik":
        out["loglik_rule"] = LOGLIK_RULE
    if source == "instruction":
        out["instruction_layout"] = INSTRUCTION_LAYOUT
    return out


def summarize(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """strict (None as 0), score (readable only), coverage and the fallback share, as fractions."""
    n = len(items)
    read = [it for it in items if it["score"] is not None]
    total = sum(it["score"] for it in read)
    return {"n": n, "strict": total / n if n else None, "score": total / len(read) if read else None,
            "coverage": len(read) / n if n else None,
            "fallback": sum(it["method"] == "fallback" for it in read) / len(read) if read else None}


def _item_record(raw: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    if "loglikelihoods" in raw:
        s = score_loglik(doc, raw["loglikelihoods"])
        out = {"loglikelihoods": raw["loglikelihoods"]}
    else:
        s = score_generation(doc, raw.get("response"))
        out = {"response": raw.get("response")}
    rec = {"doc_id": raw["doc_id"], "index": doc["index"], "category": doc["category"], "label": doc["label"], **out,
           "letters": s["letters"], "method": s["method"], "score": s["score"],
           "strict": 0.0 if s["score"] is None else s["score"]}
    if s.get("pattern"):
        rec["pattern"] = s["pattern"]
    return rec


def score_model(model: torch.nn.Module, tokenizer: Any, data: list[TaskData], *, limit: int | None = None,
                batch_size: int = 1, seed: int = 1234, max_gen_toks: int | None = None) -> dict[str, dict[str, Any]]:
    """Run the SocialBench tasks in `data` on a loaded model through lm-eval; {task: result}."""
    from compress.eval.harness import run_lm_eval

    chat = has_chat_template(tokenizer)
    raw = run_lm_eval(model, tokenizer, data, limit=limit, num_fewshot=None, batch_size=batch_size, seed=seed,
                      chat_template=chat, max_gen_toks=max_gen_toks)
    out: dict[str, dict[str, Any]] = {}
    for td in data:
        r = raw[td.task].as_dict()
        col, lang = split_task(td.task)
        docs = rows(td.files["test"], col.key, lang, td.options.get("prompt_source", "template"))
        items = [_item_record(it, docs[it["doc_id"]]) for it in r["items"]]
        s = summarize(items)
        r.update(metric="strict", value=s["strict"], score=s["score"], coverage=s["coverage"], fallback=s["fallback"],
                 prompt_format="chat template" if chat else "plain (no chat template)", items=items)
        out[td.task] = r
    return out


def prompts_of(td: TaskData, limit: int | None = None) -> list[str]:
    col, lang = split_task(td.task)
    return [d["prompt"] for d in rows(td.files["test"], col.key, lang, td.options.get("prompt_source", "template"))][:limit]


def _pooled(results: dict[str, Any], column: str, key: str) -> float | None:
    """Both languages together, item-weighted (the official runner pools a column over its file)."""
    parts = [results.get(task_name(column, lang)) for lang in LANGS]
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    items = [it for p in parts for it in p["items"]]
    return summarize(items)[key] if items else None


def column_table(results: dict[str, Any]) -> dict[str, Any]:
    """Per column: en / zh / both languages (strict), the paper's score (both languages), coverage;
    the 9-column averages only where all nine columns were measured."""
    cols: dict[str, Any] = {}
    for c in COLUMNS:
        row = {lang: (results[task_name(c.key, lang)]["value"] if task_name(c.key, lang) in results else None)
               for lang in LANGS}
        row.update(all=_pooled(results, c.key, "strict"), paper=_pooled(results, c.key, "score"),
                   coverage=_pooled(results, c.key, "coverage"))
        cols[c.key] = row
    avg: dict[str, float | None] = {}
    for key in (*LANGS, "all", "paper"):
        vals = [cols[c.key][key] for c in COLUMNS]
        avg[key] = sum(vals) / len(vals) if all(v is not None for v in vals) else None
    return {"columns": cols, "average": avg}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown(records: list[dict[str, Any]], task_info: dict[str, Any]) -> str:
    """One block per model: the nine columns by language, with chance and coverage."""
    lines = ["", "SocialBench (percent; strict = unreadable answers count 0; paper = readable answers only, "
             "both languages; Avg only when all nine columns were measured):", ""]
    for rec in records:
        tab = rec.get("socialbench")
        if not tab:
            continue
        lines += [f"**{rec['name']}**", "", "| column | en | zh | both | paper | coverage | chance en | chance zh |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in COLUMNS:
            row = tab["columns"][c.key]
            if all(row[k] is None for k in (*LANGS, "all")):
                continue
            ch = [task_info.get(task_name(c.key, lang), {}).get("chance") for lang in LANGS]
            lines.append(f"| {c.label} | {_pct(row['en'])} | {_pct(row['zh'])} | {_pct(row['all'])} | "
                         f"{_pct(row['paper'])} | {_pct(row['coverage'])} | {_pct(ch[0])} | {_pct(ch[1])} |")
        a = tab["average"]
        lines.append(f"| Avg (9 columns) | {_pct(a['en'])} | {_pct(a['zh'])} | {_pct(a['all'])} | {_pct(a['paper'])} | | | |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_samples(folder: Path, records: list[dict[str, Any]], data: list, limit: int | None) -> None:
    """`compress eval --log-samples`: one JSONL per model and task, each item's record (with its prompt for
    SocialBench)."""
    import json

    from compress.eval import socialbench

    folder.mkdir()
    prompts = {td.task: prompts_of(td, limit) for td in data if socialbench.is_task(td.task)}
    for rec in records:
        for task, r in rec["results"].items():
            if not isinstance(r, dict) or not r.get("items"):
                continue
            with open(folder / f"{rec['name']}.{task}.jsonl", "w", encoding="utf-8") as f:
                for it in r["items"]:
                    extra = {"prompt": prompts[task][it["doc_id"]]} if task in prompts else {}
                    f.write(json.dumps({**it, **extra}, ensure_ascii=False, default=str) + "\n")

