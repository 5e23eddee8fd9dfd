"""`compress eval MODEL [MODEL...] --tasks ...`: several models, one table, one eval.json.

Each model is loaded once with `compress.load` (so pruned checkpoints with custom blocks work),
scored on the lm-eval tasks through lm-eval's HF wrapper and, for the `ppl` task, by
`compress.eval.ppl` on a text file; then freed before the next one is loaded.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
from pathlib import Path
from typing import Any

from compress.checkpoint.atomic import atomic_dir, check_output
from compress.checkpoint.provenance import file_sha256
from compress.checkpoint.reader import Checkpoint
from compress.errors import CompressError
from compress.eval import socialbench
from compress.eval.report import bar_plot, build_table, markdown, model_hash
from compress.eval.tasks import (
    LM_EVAL_TASKS,
    PPL_FILE,
    PPL_TASK,
    TaskData,
    default_data_dirs,
    load_task_yaml,
    parse_tasks,
    primary_metric,
    resolve_task_data,
    task_data_paths,
)
from compress.progress import info

METRIC_POLICY = "acc_norm_else_acc"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("compress", "lm_eval", "torch", "transformers", "datasets"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", None) or _dist_version(mod)
        except Exception:  # noqa: BLE001
            out[mod] = "unknown"
    return out


def _dist_version(mod: str) -> str:
    from importlib.metadata import version

    try:
        return version(mod.replace("_", "-"))
    except Exception:  # noqa: BLE001
        return "unknown"


def _names(models: list[str], names: list[str] | None) -> list[str]:
    if names:
        if len(names) != len(models):
            raise CompressError(f"--names gives {len(names)} names for {len(models)} models")
        return list(names)
    out: list[str] = []
    for m in models:
        base = Path(m).resolve().name or str(m)
        name, k = base, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out.append(name)
    return out


def parse_task_data(items: list[str] | tuple[str, ...] | dict[str, str] | None) -> dict[str, str]:
    """['hellaswag=/data/hellaswag_val.jsonl'] -> {'hellaswag': '/data/hellaswag_val.jsonl'}."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else [
        (it.split("=", 1) if "=" in it else (it, "")) for it in items]
    out: dict[str, str] = {}
    for task, path in pairs:
        task = task.strip().lower()
        if not path:
            raise CompressError(f"--task-data {task!r}: write TASK=PATH, e.g. hellaswag=data/hellaswag_val.jsonl")
        if task not in LM_EVAL_TASKS and socialbench.expand(task) is None:
            raise CompressError(f"--task-data: unknown task {task}: lm-eval tasks are {', '.join(LM_EVAL_TASKS)} "
                                "and socialbench (or one of its groups)")
        out[task] = str(path)
    return out


def evaluate(
    models: str | os.PathLike[str] | list[str | os.PathLike[str]],
    tasks: str | list[str] | None = None,
    *,
    data_dir: str | os.PathLike[str] | list[str | os.PathLike[str]] | None = None,
    task_data: dict[str, str] | list[str] | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    dtype: str = "auto",
    seed: int = 1234,
    chat_template: bool = False,
    max_gen_toks: int | None = None,
    data: str | os.PathLike[str] | None = None,
    seq_len: int = 2048,
    max_windows: int | None = None,
    ppl_batch_size: int = 4,
    names: list[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    force: bool = False,
    hash_models: bool = True,
    socialbench_mode: str = "generative",
    prompt_source: str = "template",
    log_samples: bool = False,
) -> dict[str, Any]:
    """Evaluate one or more model folders on lm-eval tasks (local data) and/or perplexity.

    Returns the eval.json record: settings, versions, per-task configs, per-model results (with
    per-item outputs), and the comparison table (change against the first model). With `output`,
    writes eval.json, results.md and results.png there atomically.
    """
    from compress.api import inspect as inspect_model
    from compress.api import perplexity as api_perplexity
    from compress.model.load import load

    model_list = [str(models)] if isinstance(models, str | os.PathLike) else [str(m) for m in models]
    if not model_list:
        raise CompressError("no model given: compress eval MODEL [MODEL...] --tasks ...")
    task_list = parse_tasks(tasks)
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit <= 0):
        raise CompressError(f"--limit must be a positive number of documents, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise CompressError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    if max_gen_toks is not None and max_gen_toks <= 0:
        raise CompressError(f"--max-gen-toks must be positive, got {max_gen_toks}")
    if max_windows is not None and max_windows <= 0:
        raise CompressError(f"--max-windows must be positive, got {max_windows}")
    if batch_size < 1:
        raise CompressError(f"--batch-size must be at least 1, got {batch_size}")
    from compress.prune.maskfile import is_mask_folder, read_mask

    for m in model_list:  # refuses a missing folder / non-model before any work starts
        if is_mask_folder(m):
            read_mask(m)  # `compress prune --export mask`: its base must be where it was, unchanged
        else:
            Checkpoint(m)
    labels = _names(model_list, names)

    dirs = None
    if data_dir is not None:
        dirs = [Path(d) for d in ([data_dir] if isinstance(data_dir, str | os.PathLike) else data_dir)]
        for d in dirs:
            if not d.is_dir():
                raise CompressError(f"--data-dir {d} is not a folder")
    per_task = parse_task_data(task_data)
    lm_tasks = [t for t in task_list if t != PPL_TASK]
    per_task = task_data_paths(per_task, lm_tasks)
    resolved: list[TaskData] = [resolve_task_data(t, dirs, per_task.get(t)) for t in lm_tasks]
    sb_data = [td for td in resolved if socialbench.is_task(td.task)]
    for td in sb_data:
        td.options.update(mode=socialbench_mode, prompt_source=prompt_source)
    if log_samples and output is None:
        raise CompressError("--log-samples writes the per-item logs into the output folder: give -o OUT")
    ppl_file = None
    if PPL_TASK in task_list:
        if data is None:
            look = dirs if dirs is not None else default_data_dirs()
            found = [d / PPL_FILE for d in look if (d / PPL_FILE).is_file()]
            if not found:
                raise CompressError(f"no data for task ppl: looked for {PPL_FILE} in "
                                    f"{', '.join(map(str, look)) or '(no data folder)'}; pass --data FILE")
            ppl_file = found[0]
        else:
            ppl_file = Path(data)
            if not ppl_file.is_file():
                raise CompressError(f"no data for task ppl: {data} is not a file")
    elif data is not None:
        raise CompressError("--data is the text of the ppl task: add ppl to --tasks")
    if output is not None:
        check_output(output, model_list, force)

    task_info: dict[str, Any] = {}
    for td in resolved:
        if socialbench.is_task(td.task):
            from compress.eval.socialbench.run import describe

            task_info[td.task] = {"metric": "strict", "higher_is_better": True, **describe(td, limit),
                                  "data": {k: {"path": str(Path(v).resolve()), "sha256": file_sha256(v)} for k, v in td.files.items()}}
            continue
        cfg = load_task_yaml(td.task)
        task_info[td.task] = {"metric": primary_metric(cfg), "higher_is_better": True,
                              "data": {k: {"path": str(Path(v).resolve()), "sha256": file_sha256(v)} for k, v in td.files.items()}}
    if ppl_file is not None:
        task_info[PPL_TASK] = {"metric": "ppl", "higher_is_better": False, "seq_len": seq_len,
                               "max_windows": max_windows, "protocol": "eval.md §1.1 (BlockPruner form)",
                               "data": {"text": {"path": str(ppl_file.resolve()), "sha256": file_sha256(ppl_file)}}}

    records: list[dict[str, Any]] = []
    for path, label in zip(model_list, labels, strict=True):
        info(f"[{label}] loading {path}")
        rec: dict[str, Any] = {"name": label, "path": str(Path(path).resolve())}
        try:
            summary = inspect_model(path)
            rec.update(parameters=summary["parameters"], size_on_disk=summary["size_on_disk"],
                       family=summary["family"], pruned=summary["pruned"], dtypes=summary["dtypes"])
        except CompressError as e:
            info(f"[{label}] inspect failed ({e}); parameters and size left blank")
            rec.update(parameters=None, size_on_disk=Checkpoint(path).size_on_disk())
        if hash_models:
            rec["hash"] = model_hash(path)
        model, tok = load(path, device, dtype)
        rec["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
        rec["loaded_parameters"] = sum(p.numel() for p in model.parameters())
        results: dict[str, Any] = {}
        lm_data = [td for td in resolved if td not in sb_data]
        if sb_data:
            from compress.eval.socialbench.run import score_model

            info(f"[{label}] socialbench ({socialbench_mode}): {', '.join(t.task for t in sb_data)}"
                 + (f" (limit {limit})" if limit else ""))
            results.update(score_model(model, tok, sb_data, limit=limit, batch_size=batch_size, seed=seed,
                                       max_gen_toks=max_gen_toks))
        if lm_data:
            from compress.eval.harness import run_lm_eval

            info(f"[{label}] lm-eval: {', '.join(t.task for t in lm_data)}" + (f" (limit {limit})" if limit else ""))
            for task, r in run_lm_eval(model, tok, lm_data, limit=limit, num_fewshot=num_fewshot,
                                       batch_size=batch_size, seed=seed, chat_template=chat_template,
                                       max_gen_toks=max_gen_toks).items():
                results[task] = r.as_dict()
        if ppl_file is not None:
            info(f"[{label}] perplexity on {ppl_file}")
            results[PPL_TASK] = api_perplexity(model, ppl_file, tokenizer=tok, seq_len=seq_len,
                                               batch_size=ppl_batch_size, max_windows=max_windows)
        rec["results"] = {t: results[t] for t in task_list}
        records.append(rec)
        del model, tok
        gc.collect()

    for td in resolved:  # prompt settings are the same for every model: keep them once, per task
        first = records[0]["results"][td.task]
        task_info[td.task].update(version=first["version"], num_fewshot=first["num_fewshot"], n=first["n"],
                                  n_total=first["n_total"], config=first["config"])
        for rec in records:
            rec["results"][td.task].pop("config", None)
    table = build_table(records, task_list)
    for rec, row in zip(records, table["rows"], strict=True):
        rec["average"] = row["average"]
        if "delta" in row:
            rec["delta"] = row["delta"]
    from compress.eval import paired

    cis = paired.intervals(records, task_list, seed=seed)
    for rec in records[1:]:
        rec["delta_ci"] = cis.get(rec["name"], {})
    if sb_data:
        from compress.eval.socialbench.run import column_table

        for rec in records:
            rec["socialbench"] = column_table(rec["results"])
    result = {
        "tool": "compress eval",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "settings": {"tasks": task_list, "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
                     "device": device, "dtype": dtype, "seed": seed, "chat_template": chat_template,
                     "max_gen_toks": max_gen_toks,
                     "metric_policy": METRIC_POLICY, "average": "unweighted mean of the accuracy tasks, percent"},
        "tasks": task_info,
        "models": records,
        "table": table,
        "markdown": markdown(table, task_list, {t: v["metric"] for t, v in task_info.items()})
        + paired.markdown(cis, labels[0]),
    }
    if sb_data:
        from compress.eval.socialbench.run import markdown as sb_markdown

        result["settings"].update(socialbench_mode=socialbench_mode, prompt_source=prompt_source)
        result["markdown"] += sb_markdown(records, task_info)
    if output is not None:
        with atomic_dir(output, model_list, force) as tmp:
            (tmp / "eval.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
            if log_samples:
                _write_samples(tmp / "samples", records, resolved, limit)
            (tmp / "results.md").write_text(result["markdown"])
            bar_plot(table, task_list, tmp / "results.png")
        result["output"] = str(Path(output).resolve())
    return result


def _write_samples(folder: Path, records: list[dict[str, Any]], data: list[TaskData], limit: int | None) -> None:
    """--log-samples: one JSONL per model and task, each item's record (with its prompt for SocialBench)."""
    from compress.eval.socialbench.run import prompts_of

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


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """eval.json without the per-item outputs (what `--json` prints)."""
    out = dict(result)
    out["models"] = [{**m, "results": {t: {k: v for k, v in r.items() if k != "items"} for t, r in m["results"].items()}}
                     for m in result["models"]]
    return out
