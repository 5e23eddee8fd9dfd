"""Executing a merge plan: read, merge, write, one tensor at a time, into an atomic output folder.

A small thread pool runs "read the inputs of one tensor (pread, no mmap, so the inputs never
accumulate in this process's memory) -> merge in fp32 on the device -> cast -> write at the
planned offset" for a bounded window of tensors, so I/O overlaps compute and peak memory is about
(window) x (number of models) x (one tensor). VaRM runs a statistics pass first. Results do not
depend on the number of threads: every tensor is merged by one call whose sums are fixed-order
(`methods.stream.fixed_sum`) and whose random masks are seeded per (seed, model, tensor).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import torch

from compress.arch.remote_code import pruned_modeling_files
from compress.checkpoint import Checkpoint, TensorSpec, check_output, save_checkpoint
from compress.checkpoint.writer import DEFAULT_MAX_SHARD, parse_size
from compress.errors import CompressError
from compress.merge.methods import Job
from compress.merge.methods.stream import tune_malloc
from compress.merge.methods.varm import granular_statistics, squared_change, varm_weights
from compress.merge.plan import MergePlan, Source, TensorTask, chat_template_files
from compress.merge.vocab import align, default_rows
from compress.model.device import parse_device
from compress.progress import info, progress_bar, warn

METHOD_VERSION = 3  # 3: fixed-order sums (thread-independent bits), SCE's FuseChat-2.0 variant by default
MAX_THREADS = 64


def bounded_map(fn: Callable[[Any], Any], items: list[Any], threads: int) -> Iterator[Any]:
    """Run fn over items on a pool with at most `threads + 1` in flight; yield results as they finish."""
    if threads <= 1:
        for it in items:
            yield fn(it)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: set[Future] = set()
        try:
            for x in items:
                pending.add(pool.submit(fn, x))
                if len(pending) > threads:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for d in done:
                        yield d.result()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for d in done:
                    yield d.result()
        except BaseException:
            for p in pending:
                p.cancel()
            raise


class Loader:
    """Reads a task's input tensors (checked finite once each), re-laid out in the output vocabulary."""

    def __init__(self, plan: MergePlan, device: torch.device):
        self.readers = [Checkpoint(p) for p in plan.models]
        self.paths = plan.models
        self.device = device
        self._defaults: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._checked: set[tuple[int, str]] = set()

    def _check(self, t: torch.Tensor, src: Source) -> None:
        # One reduction instead of an elementwise isfinite pass: a NaN/Inf anywhere makes the sum
        # non-finite (an overflowing sum of finite values is re-checked exactly). Once per input
        # tensor (methods that read an input twice do not pay twice).
        key = (src.model, src.name)
        if key in self._checked:
            return
        if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
            raise CompressError(f"tensor {src.name!r} in {self.paths[src.model]} contains NaN or Inf: "
                                f"fix or re-export that model before merging")
        self._checked.add(key)

    def defaults(self, task: TensorTask) -> torch.Tensor:
        """The default rows of a vocabulary tensor (tokens some model lacks), computed once per tensor."""
        assert task.vocab is not None
        with self._lock:
            got = self._defaults.get(task.out)
            if got is None:
                names = {s.model: s.name for s in ([task.base] if task.base else []) + task.others}
                got = default_rows(task.vocab, lambda m: self.readers[m].read(names[m]))
                self._defaults[task.out] = got
            return got

    def load(self, src: Source, task: TensorTask) -> torch.Tensor:
        t = self.readers[src.model].read(src.name)
        self._check(t, src)
        if task.vocab is not None:
            return align(t, src.model, task.vocab, self.defaults(task)).to(self.device)
        # Stored dtype: the methods convert chunk by chunk to fp32 and never modify their inputs.
        return t.to(self.device)

    def close(self) -> None:
        for r in self.readers:
            r.close()


def varm_statistics(plan: MergePlan, loader: Loader, threads: int) -> dict[str, torch.Tensor]:
    """Pass 1 of VaRM: Σ Δθ² and numel per target per tensor, aggregated per granularity -> weights."""
    def stat(task: TensorTask) -> tuple[str, list[tuple[float, int]]]:
        assert task.base is not None
        b = loader.load(task.base, task)
        return task.out, [squared_change(b, loader.load(s, task)) for s in task.others]

    sums: dict[str, list[tuple[float, int]]] = {}
    with progress_bar("varm statistics", len(plan.tasks)) as advance:
        for name, s in bounded_map(stat, plan.tasks, threads):
            sums[name] = s
            advance(1)
    layer_of = {t.out: t.layer for t in plan.tasks}
    by_granularity = {g: granular_statistics(sums, layer_of, g) for g in {t.params["granularity"] for t in plan.tasks}}
    weights: dict[str, torch.Tensor] = {}
    for task in plan.tasks:
        p = task.params
        stats = by_granularity[p["granularity"]][task.out]
        k = len(task.others)
        weights[task.out] = torch.full((k,), 1.0 / k, dtype=torch.float64) if stats is None else \
            varm_weights(stats, p["norm"], p["temperature"], p["zero_fallback"])
    return weights


def merge_one(plan: MergePlan, task: TensorTask, loader: Loader, seed: int,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    base = loader.load(task.base, task) if task.base is not None else None
    lazy = plan.method.lazy
    tensors = [] if lazy else [loader.load(s, task) for s in task.others]
    job = Job(task.out, base, tensors, task.model_params, task.params, seed, [s.model for s in task.others],
              weights.to(torch.float32) if weights is not None else None,
              (lambda i: loader.load(task.others[i], task)) if lazy else None, out_dtype=task.dtype,
              device=loader.device)
    return plan.method.merge(job).to(task.dtype)


def check_threads(threads: int | None) -> int:
    if threads is None:
        return min(4, max(2, os.cpu_count() or 2))
    if not 1 <= threads <= MAX_THREADS:
        raise CompressError(f"--threads {threads}: use 1 to {MAX_THREADS} (each thread holds one tensor of every model)")
    return threads


def execute(plan: MergePlan, output: str | os.PathLike[str], *, device: str = "cpu", seed: int = 42,
            force: bool = False, max_shard_size: int | str = DEFAULT_MAX_SHARD, threads: int | None = None,
            command: str | None = None) -> dict[str, Any]:
    """Run the plan and write the merged checkpoint atomically; return a small report."""
    dev = parse_device(device)
    threads = check_threads(threads)
    parse_size(max_shard_size)
    check_output(output, plan.models, force)
    tune_malloc()
    start = time.perf_counter()
    # The workers already keep the cores busy: each op gets its share of the cores instead of all
    # of them (2 workers x 2 intra-op threads on 2 cores made TIES ~10 % slower).
    intra = torch.get_num_threads()
    loader = Loader(plan, dev)
    try:
        if dev.type == "cpu" and threads > 1:
            torch.set_num_threads(max(1, intra // threads))
        weights = varm_statistics(plan, loader, threads) if plan.method.two_pass else {}
        specs = [TensorSpec(t.out, t.shape, t.dtype) for t in plan.tasks]

        def produce(writer: Any) -> None:
            def work(task: TensorTask) -> None:
                writer.write(task.out, merge_one(plan, task, loader, seed, weights.get(task.out)))
            with progress_bar(f"merge ({plan.method.name})", len(plan.tasks)) as advance:
                for _ in bounded_map(work, plan.tasks, threads):
                    advance(1)

        resolved = resolved_recipe(plan, seed)
        config, code = pruned_modeling_files(plan.config, [t.out for t in plan.tasks])  # code from the package only
        save_checkpoint(output, specs, produce, config=config, inputs=[str(p) for p in plan.models],
                        side_files=plan.side_files, force=force, max_shard_size=max_shard_size, command=command,
                        recipe=resolved, extra={"merge_method": plan.method.name, "seed": seed,
                                                "device": str(dev), "threads": threads},
                        files={**_record_files(plan, resolved, weights, seed), **code}, method=plan.method.name,
                        tags=("merge",))
    finally:
        loader.close()
        torch.set_num_threads(intra)
    wall = time.perf_counter() - start
    for w in plan.warnings:
        warn(w)
    info(f"merged {len(plan.models)} models with {plan.method.name} into {output} ({len(plan.tasks)} tensors, {wall:.1f}s)")
    return {"output": str(output), "method": plan.method.name, "models": [str(p) for p in plan.models],
            "tensors": len(plan.tasks), "seconds": round(wall, 3), "seed": seed}


def _record_files(plan: MergePlan, resolved: dict[str, Any], weights: dict[str, torch.Tensor],
                  seed: int) -> dict[str, str]:
    """mergekit_config.yml (the recipe as given), a chat template, compress_merge.json (per tensor)."""
    per_tensor = {t.out: {"t": t.t, **t.params,
                          "models": [{"model": str(plan.models[s.model]), **mp}
                                     for s, mp in zip(t.others, t.model_params, strict=True)],
                          **({"varm_weights": weights[t.out].tolist()} if t.out in weights else {})}
                  for t in plan.tasks}
    record = {"method": plan.method.name, "method_version": METHOD_VERSION, "seed": seed, "resolved": resolved,
              **({"tokenizer": plan.tokenizer_info} if plan.tokenizer_info else {}), "tensors": per_tensor}
    return {"mergekit_config.yml": plan.recipe_text or _yaml(resolved), **chat_template_files(plan.recipe),
            "compress_merge.json": json.dumps(record, indent=1, default=str) + "\n"}


def resolved_recipe(plan: MergePlan, seed: int) -> dict[str, Any]:
    r = plan.recipe.model_dump(mode="json", exclude_none=True)
    defaults = {k: v.default for k, v in plan.method.shared.items() if not v.required}
    r["parameters"] = {**defaults, **(r.get("parameters") or {})}
    r["resolved_models"] = [str(p) for p in plan.models]
    r["seed"] = seed
    return r


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)
