"""Run lm-evaluation-harness on an already loaded model (so `compress prune` outputs work too).

lm-eval's own HF wrapper (`HFLM(pretrained=<model object>, tokenizer=...)`) scores the requests;
the tasks are the inline configs of `compress.eval.tasks` (built-in prompts, local data), built by
lm-eval's `TaskManager` without its hub task index. The result per task is the primary metric of
the pruning papers (acc_norm where the task defines it, else acc; exact_match for GSM8K), all metrics,
the prompt settings and the per-item outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from compress.errors import CompressError
from compress.eval.tasks import TaskData, metric_key, primary_metric, task_config

PROMPT_KEYS = ("output_type", "doc_to_text", "doc_to_choice", "doc_to_target", "target_delimiter",
               "fewshot_delimiter", "description", "generation_kwargs", "filter_list", "metric_list",
               "training_split", "validation_split", "test_split", "fewshot_split", "repeats")


@dataclass
class TaskResult:
    task: str
    metric: str  # primary metric name, e.g. acc_norm
    value: float  # in [0, 1]
    stderr: float | None
    metrics: dict[str, float]  # every metric lm-eval reported, keyed "name,filter"
    n: int  # documents scored
    n_total: int  # documents in the split
    num_fewshot: int
    version: Any
    config: dict[str, Any] = field(default_factory=dict)  # prompts, splits, decoding
    items: list[dict[str, Any]] = field(default_factory=list)
    coverage: float | None = None  # generation tasks: share of answers the extraction could parse

    def as_dict(self, items: bool = True) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("task", "metric", "value", "stderr", "metrics", "n", "n_total",
                                          "num_fewshot", "version", "config", "coverage")}
        if items:
            d["items"] = self.items
        return d


def _describe(v: Any) -> Any:
    if callable(v):
        return f"{getattr(v, '__module__', '?')}.{getattr(v, '__qualname__', repr(v))}"
    if isinstance(v, dict):
        return {k: _describe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_describe(x) for x in v]
    return v


def _item(sample: dict[str, Any], metric_names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"doc_id": sample.get("doc_id"), "target": sample.get("target")}
    if sample.get("filter") not in (None, "none"):
        out["filter"] = sample["filter"]
    resps = sample.get("filtered_resps")
    if resps and isinstance(resps[0], list | tuple) and len(resps[0]) == 2 and isinstance(resps[0][0], float):
        out["loglikelihoods"] = [round(float(r[0]), 6) for r in resps]
    else:
        raw = sample.get("resps") or []
        out["response"] = raw[0][0] if raw and raw[0] else None
        out["extracted"] = resps[0] if resps else None
    for m in metric_names:
        if m in sample:
            out[m] = sample[m]
    return out


def quiet_lm_eval() -> None:
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_lm_eval(model: torch.nn.Module, tokenizer: Any, data: list[TaskData], *, limit: int | None = None,
                num_fewshot: int | None = None, batch_size: int = 1, seed: int = 1234,
                chat_template: bool = False, max_gen_toks: int | None = None,
                log_items: bool = True, lm: Any = None) -> dict[str, TaskResult]:
    """Score `model` on the lm-eval tasks in `data`; returns {task: TaskResult}. `lm`: an lm-eval model to
    score instead (e.g. the fused decoder of `compress.fuse.lm_eval_model`)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if limit is not None and limit <= 0:
        raise CompressError(f"--limit must be a positive number of documents, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise CompressError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    quiet_lm_eval()
    cfgs = {d.task: task_config(d) for d in data}
    if lm is None:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=list(cfgs.values()), num_fewshot=num_fewshot, limit=limit,
            task_manager=TaskManager(include_defaults=False), log_samples=log_items,
            apply_chat_template=chat_template, fewshot_random_seed=seed,
            gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
        )
    except CompressError:
        raise
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise CompressError(f"lm-eval failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if out is None:
        raise CompressError("lm-eval returned no results")
    results: dict[str, TaskResult] = {}
    for task, cfg in cfgs.items():
        res = out["results"][task]
        key = metric_key(cfg)
        if key not in res:
            raise CompressError(f"lm-eval reported no {key} for {task} (got {sorted(res)})")
        metrics = {k: float(v) for k, v in res.items() if isinstance(v, int | float) and "_stderr" not in k}
        name, flt = key.split(",", 1)
        stderr = res.get(f"{name}_stderr,{flt}")
        ncount = out.get("n-samples", {}).get(task, {})
        used = out.get("configs", {}).get(task, {})
        metric_names = [m["metric"] for m in cfg.get("metric_list", [])]
        items = [_item(s, metric_names) for s in out.get("samples", {}).get(task, [])
                 if s.get("filter") in (None, "none", (cfg.get("filter_list") or [{}])[0].get("name"))]
        coverage = None
        if cfg.get("output_type") == "generate_until" and items:
            coverage = sum(it.get("extracted") not in (None, "[invalid]") for it in items) / len(items)
        results[task] = TaskResult(
            task=task, metric=primary_metric(cfg), value=float(res[key]),
            stderr=float(stderr) if isinstance(stderr, int | float) else None, metrics=metrics,
            n=int(ncount.get("effective", len(items))), n_total=int(ncount.get("original", 0)),
            num_fewshot=int(used.get("num_fewshot") or 0), version=out.get("versions", {}).get(task),
            config={k: _describe(used[k]) for k in PROMPT_KEYS if used.get(k) is not None}, items=items,
            coverage=coverage)
    return results
