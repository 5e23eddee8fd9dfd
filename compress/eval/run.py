"""`compress eval MODEL [MODEL...] --tasks ...`: several models, one table, one eval.json.

Each model is loaded once with `compress.load` (so pruned checkpoints with custom blocks work),
scored on the lm-eval tasks through lm-eval's HF wrapper and, for the `ppl` task, by
`compress.eval.ppl` on a text file; then freed before the next one is loaded.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress import jsonsafe
from compress.checkpoint.atomic import atomic_dir, check_output
from compress.checkpoint.hashing import model_hash
from compress.checkpoint.provenance import file_sha256
from compress.checkpoint.reader import Checkpoint
from compress.data.text import FORMATS, describe_format
from compress.errors import CompressError
from compress.eval import paired, socialbench
from compress.eval.inspect import inspect
from compress.eval.ppl import file_perplexity
from compress.eval.report import bar_plot, build_table, markdown
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
from compress.model.device import canonical_dtype_name, dtype_name, parse_dtype
from compress.model.labels import model_labels
from compress.model.load import check_model, load
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


@dataclass
class Plan:
    """What `evaluate` will do, every input checked before any model is loaded."""

    models: list[str]
    labels: list[str]
    tasks: list[str]
    lm_tasks: list[TaskData]
    ppl_file: Path | None
    task_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scoring:
    """How every model is scored (the same for all of them)."""

    device: str
    dtype: str
    limit: int | None
    num_fewshot: int | None
    batch_size: int
    seed: int
    chat_template: bool
    max_gen_toks: int | None
    seq_len: int
    ppl_batch_size: int
    max_windows: int | None
    text_format: str


def check_options(limit: int | None, num_fewshot: int | None, max_gen_toks: int | None, max_windows: int | None,
                  batch_size: int, text_format: str) -> None:
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
    if text_format not in FORMATS:
        raise CompressError(f"unknown --format {text_format!r}: choose one of {', '.join(FORMATS)}")


def dtype_setting(dtype: str | torch.dtype | None) -> str:
    """'bfloat16' / torch.bfloat16 / 'bf16' -> 'bf16': eval.json records one spelling; unknown ones are refused."""
    parse_dtype(dtype)
    return canonical_dtype_name(dtype) if dtype is not None else "auto"


def data_dirs(data_dir: str | os.PathLike[str] | list[str | os.PathLike[str]] | None) -> list[Path] | None:
    if data_dir is None:
        return None
    dirs = [Path(d) for d in ([data_dir] if isinstance(data_dir, str | os.PathLike) else data_dir)]
    for d in dirs:
        if not d.is_dir():
            raise CompressError(f"--data-dir {d} is not a folder")
    return dirs


def find_ppl_file(tasks: list[str], data: str | os.PathLike[str] | None, dirs: list[Path] | None) -> Path | None:
    """The text of the ppl task: --data, else wikitext-2-raw/wiki.test.raw in the data folders."""
    if PPL_TASK not in tasks:
        if data is not None:
            raise CompressError("--data is the text of the ppl task: add ppl to --tasks")
        return None
    if data is not None:
        if not Path(data).is_file():
            raise CompressError(f"no data for task ppl: {data} is not a file")
        return Path(data)
    look = dirs if dirs is not None else default_data_dirs()
    found = [d / PPL_FILE for d in look if (d / PPL_FILE).is_file()]
    if not found:
        raise CompressError(f"no data for task ppl: looked for {PPL_FILE} in "
                            f"{', '.join(map(str, look)) or '(no data folder)'}; pass --data FILE")
    return found[0]


def task_records(lm_tasks: list[TaskData], ppl_file: Path | None, seq_len: int, max_windows: int | None,
                 text_format: str, limit: int | None = None) -> dict[str, Any]:
    """Per task: metric, direction, data files with their sha256 (and, for ppl, the text protocol)."""
    out: dict[str, Any] = {}
    for td in lm_tasks:
        files = {"data": {k: {"path": str(Path(v).resolve()), "sha256": file_sha256(v)} for k, v in td.files.items()}}
        if socialbench.is_task(td.task):
            from compress.eval.socialbench.run import describe

            out[td.task] = {"metric": "strict", "higher_is_better": True, **describe(td, limit), **files}
        else:
            out[td.task] = {"metric": primary_metric(load_task_yaml(td.task)), "higher_is_better": True, **files}
    if ppl_file is not None:
        out[PPL_TASK] = {"metric": "ppl", "higher_is_better": False, "seq_len": seq_len, "max_windows": max_windows,
                         "protocol": "non-overlapping windows of seq_len tokens, no context carried over; "
                                     "ppl = exp(mean over windows of the window's mean NLL)",
                         "text_format": describe_format(ppl_file, text_format),
                         "data": {"text": {"path": str(ppl_file.resolve()), "sha256": file_sha256(ppl_file)}}}
    return out


def plan(models, tasks, *, data_dir, task_data, data, names, seq_len, max_windows, text_format,
         ensembles: list[list[str]] = (), socialbench_options: dict[str, Any] | None = None,
         limit: int | None = None) -> Plan:
    model_list = [str(models)] if isinstance(models, str | os.PathLike) else [str(m) for m in models]
    for members in ensembles:
        for m in members:
            check_model(m)
    if not model_list and not ensembles:
        raise CompressError("no model given: compress eval MODEL [MODEL...] --tasks ...")
    task_list = parse_tasks(tasks)
    for m in model_list:  # a missing folder, a non-model, a mask whose base moved: refused before any work
        check_model(m)
    labels = model_labels(model_list, names)
    dirs = data_dirs(data_dir)
    per_task = parse_task_data(task_data)
    lm_names = [t for t in task_list if t != PPL_TASK]
    per_task = task_data_paths(per_task, lm_names)
    lm_tasks = [resolve_task_data(t, dirs, per_task.get(t)) for t in lm_names]
    for td in lm_tasks:
        if socialbench.is_task(td.task):
            td.options.update(socialbench_options or {})
    ppl_file = find_ppl_file(task_list, data, dirs)
    return Plan(model_list, labels, task_list, lm_tasks, ppl_file,
                task_records(lm_tasks, ppl_file, seq_len, max_windows, text_format, limit))


def describe_model(path: str, label: str, hash_models: bool) -> dict[str, Any]:
    """The table's facts about a model folder: parameters, size on disk, family, dtypes, hash."""
    rec: dict[str, Any] = {"name": label, "path": str(Path(path).resolve())}
    try:
        summary = inspect(path)
        rec.update(parameters=summary["parameters"], size_on_disk=summary["size_on_disk"],
                   family=summary["family"], pruned=summary["pruned"], dtypes=summary["dtypes"])
    except CompressError as e:
        info(f"[{label}] inspect failed ({e}); parameters and size left blank")
        rec.update(parameters=None, size_on_disk=Checkpoint(path).size_on_disk())
    if hash_models:
        rec["hash"] = model_hash(path)
    return rec


def score_model(p: Plan, path: str, label: str, opts: Scoring, hash_models: bool) -> dict[str, Any]:
    """Load one model, run its lm-eval tasks and perplexity, free it: its eval.json record."""
    info(f"[{label}] loading {path}")
    rec = describe_model(path, label, hash_models)
    model, tok = load(path, opts.device, opts.dtype)
    rec["dtype"] = dtype_name(next(model.parameters()).dtype)
    rec["loaded_parameters"] = sum(t.numel() for t in model.parameters())
    results: dict[str, Any] = {}
    sb_data = [td for td in p.lm_tasks if socialbench.is_task(td.task)]
    lm_data = [td for td in p.lm_tasks if td not in sb_data]
    if sb_data:
        from compress.eval.socialbench.run import score_model as score_socialbench

        info(f"[{label}] socialbench ({sb_data[0].options.get('mode')}): {', '.join(t.task for t in sb_data)}"
             + (f" (limit {opts.limit})" if opts.limit else ""))
        results.update(score_socialbench(model, tok, sb_data, limit=opts.limit, batch_size=opts.batch_size,
                                         seed=opts.seed, max_gen_toks=opts.max_gen_toks))
    if lm_data:
        from compress.eval.harness import run_lm_eval

        info(f"[{label}] lm-eval: {', '.join(t.task for t in lm_data)}"
             + (f" (limit {opts.limit})" if opts.limit else ""))
        for task, r in run_lm_eval(model, tok, lm_data, limit=opts.limit, num_fewshot=opts.num_fewshot,
                                   batch_size=opts.batch_size, seed=opts.seed, chat_template=opts.chat_template,
                                   max_gen_toks=opts.max_gen_toks).items():
            results[task] = r.as_dict()
    if p.ppl_file is not None:
        info(f"[{label}] perplexity on {p.ppl_file}")
        results[PPL_TASK] = file_perplexity(model, p.ppl_file, tokenizer=tok, seq_len=opts.seq_len,
                                            batch_size=opts.ppl_batch_size, max_windows=opts.max_windows,
                                            text_format=opts.text_format)
    rec["results"] = {t: results[t] for t in p.tasks}
    del model, tok
    gc.collect()
    return rec


def hoist_task_configs(p: Plan, records: list[dict[str, Any]]) -> None:
    """Prompt settings are the same for every model: keep them once, in the task's record."""
    for td in p.lm_tasks:
        first = records[0]["results"][td.task]
        p.task_info[td.task].update(version=first["version"], num_fewshot=first["num_fewshot"], n=first["n"],
                                    n_total=first["n_total"], config=first["config"])
        for rec in records:
            rec["results"][td.task].pop("config", None)


def write_outputs(result: dict[str, Any], output: str | os.PathLike[str], inputs: list[str], force: bool,
                  samples_of: list[TaskData] | None = None, limit: int | None = None) -> None:
    """eval.json, results.md and results.png (and with `samples_of`, the per-item logs), written atomically."""
    with atomic_dir(output, inputs, force) as tmp:
        (tmp / "eval.json").write_text(jsonsafe.dumps(result, indent=2) + "\n")
        if samples_of is not None:
            from compress.eval.socialbench.run import write_samples

            write_samples(tmp / "samples", result["models"], samples_of, limit)
        (tmp / "results.md").write_text(result["markdown"])
        bar_plot(result["table"], result["settings"]["tasks"], tmp / "results.png")
    result["output"] = str(Path(output).resolve())


def compare(p: Plan, records: list[dict[str, Any]], seed: int, socialbench: bool = False
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The comparison table (change against the first model) and the paired bootstrap intervals of the
    differences, both also recorded in each model's record (with its SocialBench columns)."""
    hoist_task_configs(p, records)
    table = build_table(records, p.tasks)
    for rec, row in zip(records, table["rows"], strict=True):
        rec["average"] = row["average"]
        if "delta" in row:
            rec["delta"] = row["delta"]
    cis = paired.intervals(records, p.tasks, seed=seed)
    for rec in records[1:]:
        rec["delta_ci"] = cis.get(rec["name"], {})
    if socialbench:
        from compress.eval.socialbench.run import column_table

        for rec in records:
            rec["socialbench"] = column_table(rec["results"])
    return table, cis


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
    text_format: str = "auto",
    names: list[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    force: bool = False,
    hash_models: bool = True,
    ensembles: list[str] | list[list[str]] | None = None,
    fusion: str = "cool-fusion",
    socialbench_mode: str = "generative",
    prompt_source: str = "template",
    log_samples: bool = False,
) -> dict[str, Any]:
    """Evaluate one or more model folders on lm-eval tasks (local data) and/or perplexity.

    Returns the eval.json record: settings, versions, per-task configs, per-model results (with
    per-item outputs), and the comparison table (change against the first model). With `output`,
    writes eval.json, results.md and results.png there atomically. `text_format` is how the ppl task's
    text file is read (see `compress.perplexity`). `ensembles` ("M1,M2" or [M1, M2] each) add one row per
    ensemble: its models fused at decoding time (`fusion`: cool-fusion or cool-fusion+r; generation tasks
    only, see `compress.fuse.lm_eval_model`).
    """
    check_options(limit, num_fewshot, max_gen_toks, max_windows, batch_size, text_format)
    dtype = dtype_setting(dtype)
    ens = _ensembles(ensembles, fusion)
    if log_samples and output is None:
        raise CompressError("--log-samples writes the per-item logs into the output folder: give -o OUT")
    p = plan(models, tasks, data_dir=data_dir, task_data=task_data, data=data, names=names, seq_len=seq_len,
             max_windows=max_windows, text_format=text_format, ensembles=ens, limit=limit,
             socialbench_options={"mode": socialbench_mode, "prompt_source": prompt_source})
    sb_data = [td for td in p.lm_tasks if socialbench.is_task(td.task)]
    if ens:
        from compress.fuse.lm_eval_model import check_generation_tasks

        check_generation_tasks(p.tasks, {td.task: load_task_yaml(td.task) for td in p.lm_tasks})
    if output is not None:
        check_output(output, p.models + [m for e in ens for m in e], force)
    opts = Scoring(device, dtype, limit, num_fewshot, batch_size, seed, chat_template, max_gen_toks, seq_len,
                   ppl_batch_size, max_windows, text_format)
    records = [score_model(p, path, label, opts, hash_models) for path, label in zip(p.models, p.labels, strict=True)]
    for members in ens:
        from compress.eval.ensemble import score_ensemble

        records.append(score_ensemble(members, model_labels(members, None), fusion, p.lm_tasks, device=device, dtype=dtype,
                                      limit=limit, num_fewshot=num_fewshot, seed=seed, chat_template=chat_template,
                                      max_gen_toks=max_gen_toks))
    table, cis = compare(p, records, seed, socialbench=bool(sb_data))
    result = {
        "tool": "compress eval",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "settings": {"tasks": p.tasks, "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
                     "device": device, "dtype": dtype, "seed": seed, "chat_template": chat_template,
                     "max_gen_toks": max_gen_toks, **({"ensembles": ens, "fusion": fusion} if ens else {}),
                     "metric_policy": METRIC_POLICY, "average": "unweighted mean of the accuracy tasks, percent"},
        "tasks": p.task_info,
        "models": records,
        "table": table,
        "markdown": markdown(table, p.tasks, {t: v["metric"] for t, v in p.task_info.items()})
        + paired.markdown(cis, records[0]["name"]),
    }
    if sb_data:
        from compress.eval.socialbench.run import markdown as sb_markdown

        result["settings"].update(socialbench_mode=socialbench_mode, prompt_source=prompt_source)
        result["markdown"] += sb_markdown(records, p.task_info)
    if output is not None:
        write_outputs(result, output, p.models + [m for e in ens for m in e], force,
                      samples_of=p.lm_tasks if log_samples else None, limit=limit)
    return result


def _ensembles(ensembles: list[str] | list[list[str]] | None, fusion: str) -> list[list[str]]:
    if not ensembles:
        return []
    from compress.fuse.lm_eval_model import FUSIONS, parse_ensemble

    if fusion not in FUSIONS:
        raise CompressError(f"unknown --fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
    return [parse_ensemble(e) if isinstance(e, str) else [str(m) for m in e] for e in ensembles]


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """eval.json without the per-item outputs (what `--json` prints)."""
    out = dict(result)
    out["models"] = [{**m, "results": {t: {k: v for k, v in r.items() if k != "items"} for t, r in m["results"].items()}}
                     for m in result["models"]]
    return out
