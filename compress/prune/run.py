"""`compress prune`: options -> plan -> load -> calibration windows -> search -> export -> report.

Methods (`method`, registry.py): `blockpruner` (BlockPruner's greedy search over attention / MLP
blocks, the default), `layer` (the same search over whole layers), `sleb` (SLEB: the same over whole
layers, first and last layers excluded), `shortgpt` (one-shot ranking by Block Influence). Every
method reports the calibration perplexity after each removal.

Every check that needs only the options or the checkpoint's headers runs before the model is loaded
(config.py, plan.py); the search state is saved after every step (state.py) so that `--resume`
continues an interrupted run; the output appears atomically at the end.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress.checkpoint.atomic import check_output
from compress.checkpoint.lock import release
from compress.errors import CompressError
from compress.model.device import dtype_name, parse_device, parse_dtype
from compress.progress import info, progress_bar, warn
from compress.prune import report as rep
from compress.prune.baselines import rank_by_score, shortgpt_scores
from compress.prune.config import PruneConfig, parse_config
from compress.prune.evaluators import Evaluator, FastEvaluator, NaiveEvaluator
from compress.prune.modeling import text_config_value
from compress.prune.offload import OffloadEvaluator, StreamedRunner, build_skeleton, stored_dtype
from compress.prune.plan import Plan, check_search_memory, make_plan
from compress.prune.registry import METHODS
from compress.prune.score import BlockRunner
from compress.prune.search import GreedySearch, SearchResult, StepRecord, select_prefix
from compress.prune.state import fingerprint, load_state, save_state, state_path

__all__ = ["compute_dtype", "prune", "run"]

SMALL_CALIBRATION = 8192  # scored tokens; fewer overfit the calibration text


def compute_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """'auto': as stored on a GPU; fp32 on CPU (CPUs without bf16 units run bf16 matmuls ~10x slower)."""
    if dtype in (None, "auto") and device.type == "cpu":
        return torch.float32
    return parse_dtype(dtype)


def prune(model: str | os.PathLike[str], output: str | os.PathLike[str], *, force: bool = False,
          resume: bool = False, show_table: bool = True, **options: Any) -> dict[str, Any]:
    """Prune `model` into `output`; returns the report (also written as prune_report.json there).

    `options` are the fields of `PruneConfig` (the command line's options: method, blocks, ratio,
    data, seq_len, export, offload, ...). `offload=True` streams the weights layer by layer from the
    checkpoint (at most one decoder layer on the device; `compress.prune.offload`), for models larger
    than the device; it needs `data`, and gives the sequence of the exact search.
    """
    cfg = parse_config(model=str(model), output=str(output), **options)
    return run(cfg, force=force, resume=resume, show_table=show_table)


@dataclass
class Loaded:
    """The model as the search runs it."""

    runner: BlockRunner
    tokenizer: Any
    dtype: torch.dtype
    already: set[int]  # positions of blocks the input already lacks


def run(cfg: PruneConfig, *, force: bool = False, resume: bool = False, show_table: bool = True) -> dict[str, Any]:
    """One prune run from a validated config (see `prune`)."""
    t0 = time.perf_counter()
    out = check_output(cfg.output, [cfg.model], force)  # takes the output's lock
    try:
        report, result = _run(cfg, force, resume)
    finally:
        release(out)  # also when the run fails: a later run (or another process) may write OUT
    report["seconds_total"] = time.perf_counter() - t0
    if show_table:
        rep.print_table(report)
        info(f"wrote {report['output']} ({len(report['removed'])} blocks removed, {100 * report['ratio']:.2f}% of "
             f"parameters, calibration ppl {result.dense_ppl:.3f} -> {report['ppl']:.3f})")
    return report


def _run(cfg: PruneConfig, force: bool, resume: bool) -> tuple[dict[str, Any], SearchResult]:
    """plan -> load -> calibrate -> search -> export; returns the report and the search result."""
    plan = make_plan(cfg)
    dev = parse_device(cfg.device)
    torch.manual_seed(cfg.seed)
    loaded = _load(cfg, plan, dev)
    windows, source = _calibrate(cfg, plan, loaded, dev)
    result, extra = _search(cfg, plan, loaded, windows, dev, resume)
    chosen = select_prefix(result.steps, plan.stop)
    if not chosen:
        raise CompressError(f"nothing to remove: the first removal already exceeds --max-ppl {cfg.max_ppl} "
                            f"(dense calibration ppl {result.dense_ppl:.3f})")
    report = rep.build_report(cfg, result, chosen, source=source, windows=windows, params_total=plan.params.total,
                              layers=plan.n_layers, already=loaded.already, dtype=dtype_name(loaded.dtype),
                              device=str(dev), **extra)
    del loaded
    report["output"] = str(_export(cfg, report, result, force))
    state_path(cfg.output).unlink(missing_ok=True)
    return report, result


def _load(cfg: PruneConfig, plan: Plan, dev: torch.device) -> Loaded:
    """The model (or, with --offload, its weightless skeleton) and tokenizer; its blocks must be the
    checkpoint's."""
    from compress.model.load import load_model, load_tokenizer

    dtype = compute_dtype(cfg.dtype, dev)
    if cfg.offload:
        dtype = dtype or stored_dtype(plan.ckpt)
        runner: BlockRunner = StreamedRunner(build_skeleton(plan.ckpt, dtype, dev), plan.family, plan.ckpt, dev)
    else:
        net = load_model(cfg.model, dev, dtype, ckpt=plan.ckpt)
        runner = BlockRunner(net, plan.family)
        dtype = next(net.parameters()).dtype
    already = runner.removed_in_model()
    if already != set(range(runner.n_positions)) - plan.present:
        raise CompressError(f"{cfg.model}: the loaded model's blocks do not match its checkpoint's tensors")
    return Loaded(runner, load_tokenizer(cfg.model), dtype, already)


def _calibrate(cfg: PruneConfig, plan: Plan, loaded: Loaded, dev: torch.device) -> tuple[torch.Tensor, str]:
    """The calibration windows (from --data, else generated by the model) and where they came from."""
    from compress.data import generate_windows, load_windows
    from compress.data.text import describe_format

    esize = torch.empty((), dtype=loaded.dtype).element_size()
    n = cfg.windows
    if cfg.data is not None:
        windows = load_windows(cfg.data, loaded.tokenizer, cfg.seq_len, n, cfg.seed, cfg.field, cfg.text_format)
        source = f"{cfg.data}, {describe_format(cfg.data, cfg.text_format, cfg.field)}"
    else:
        check_search_memory(plan, cfg, n, cfg.seq_len, dev, esize)  # before generating them
        with progress_bar("generating calibration text", n) as advance:
            windows = generate_windows(loaded.runner.model, loaded.tokenizer, n, cfg.seq_len, cfg.seed,
                                       progress=advance)
        source = "generated by the model"
    check_search_memory(plan, cfg, windows.shape[0], windows.shape[1], dev, esize,
                        _stream_device(cfg, plan, windows, dev, loaded.dtype))
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    info(f"calibration: {windows.shape[0]} windows x {windows.shape[1]} tokens = {tokens:,} scored tokens ({source})")
    if tokens < SMALL_CALIBRATION:
        warn(f"only {tokens:,} calibration tokens: the search may fit this text rather than the model's "
             f"general behaviour (use at least {SMALL_CALIBRATION:,}: more --samples, longer --seq-len, or --data)")
    return windows, source


def _evaluator(cfg: PruneConfig, plan: Plan, loaded: Loaded, windows: torch.Tensor,
               dev: torch.device) -> tuple[Evaluator, dict[str, Any]]:
    """The evaluator of the search (and what the report says about it)."""
    runner, already = loaded.runner, loaded.already
    if cfg.offload:
        stream = _stream_device(cfg, plan, windows, dev, loaded.dtype)
        info(f"--offload: weights streamed layer by layer from {cfg.model}; candidate streams on {stream}")
        return OffloadEvaluator(runner, windows, cfg.batch_size, removed=already, stream_device=stream), {
            "streams": str(stream)}
    if cfg.search == "naive":
        return NaiveEvaluator(runner, windows, cfg.batch_size, removed=already), {}
    with progress_bar("caching block-boundary states", windows.shape[0]) as advance:
        return FastEvaluator(runner, windows, cfg.batch_size, removed=already, progress=advance), {}


def _search(cfg: PruneConfig, plan: Plan, loaded: Loaded, windows: torch.Tensor, dev: torch.device,
            resume: bool) -> tuple[SearchResult, dict[str, Any]]:
    """Run (or resume) the greedy search; returns the result and the report's extra sections."""
    options = {**cfg.fingerprint(), "device": dev.type, "dtype": dtype_name(loaded.dtype)}
    fp = fingerprint(plan.ckpt, windows, options)
    spath = state_path(cfg.output)
    saved = load_state(spath, fp) if resume else None
    if not resume and spath.exists():
        warn(f"{spath} holds an earlier search state: starting again (pass --resume to continue it)")
    ev, offload = _evaluator(cfg, plan, loaded, windows, dev)
    extra: dict[str, Any] = {"bi": None}
    fixed_order = None
    if METHODS[cfg.method].one_shot:
        info(f"{cfg.method}: block influence of every layer (one pass)")
        bi = (ev.block_influence() if isinstance(ev, OffloadEvaluator)
              else shortgpt_scores(loaded.runner.model, plan.family, windows, cfg.batch_size))
        fixed_order, extra["bi"] = rank_by_score(plan.units, bi), bi

    def on_step(g: GreedySearch) -> None:
        save_state(spath, fp, g.state())
        _log_step(g.steps[-1])

    g = GreedySearch(ev, plan.units, stop=plan.stop, total_params=plan.params.total, criterion=cfg.criterion,
                     search=cfg.search, lazy_m=cfg.lazy_m, lazy_every=cfg.lazy_every, fixed_order=fixed_order,
                     on_step=on_step)
    if saved is not None:
        g.restore(saved)
        info(f"resuming after {len(g.steps)} saved steps from {spath}")
    try:
        result = g.run()
    finally:
        ev.close()
    if isinstance(ev, OffloadEvaluator):
        st = ev.runner.streamer
        extra["offload"] = {**offload, "passes": ev.passes, "peak_weight_bytes": st.peak_bytes,
                            "bytes_read": st.bytes_read}
    return result, extra


def _log_step(s: StepRecord) -> None:
    info(f"step {s.step}: removed {s.unit}  ratio {100 * s.ratio:.2f}%  calib ppl {s.ppl:.3f}  "
         f"({s.evaluated} scored, {s.abandoned} abandoned, {s.seconds:.1f}s)")


def _export(cfg: PruneConfig, report: dict[str, Any], result: SearchResult, force: bool) -> Path:
    """Write the output folder (physical / zeroed checkpoint, or the mask) with the report inside."""

    def before_commit(tmp: Path) -> None:
        rep.write_json(report, tmp)
        rep.plot(report, tmp / rep.REPORT_PNG)

    if cfg.export == "mask":  # pruning.json + a reference to the base (maskfile.py)
        from compress.prune.maskfile import write_mask

        return write_mask(cfg.model, cfg.output, report, [s.as_dict() for s in result.steps], force=force,
                          before_commit=before_commit)
    from compress.prune.export import export_pruned

    removed = [(int(layer), str(kind)) for layer, kind in report["removed"]]
    return export_pruned(cfg.model, cfg.output, removed, mode=cfg.export, force=force,
                         max_shard_size=cfg.max_shard_size,
                         extra={"prune": {k: v for k, v in report.items() if k not in ("steps", "all_steps")}},
                         before_commit=before_commit)


def _stream_device(cfg: PruneConfig, plan: Plan, windows: torch.Tensor, dev: torch.device,
                   dtype: torch.dtype) -> torch.device | None:
    """Where --offload keeps the candidates' residual streams: the GPU when they take at most half
    of its free memory, else the host (None without --offload)."""
    if not cfg.offload:
        return None
    if dev.type != "cuda":
        return dev
    hidden = int(text_config_value(plan.ckpt.config, "hidden_size") or 0)
    tokens = windows.shape[0] * windows.shape[1]
    need = (len(plan.units) + 1) * tokens * hidden * torch.empty((), dtype=dtype).element_size()
    free, _ = torch.cuda.mem_get_info(dev)
    return dev if need <= free // 2 else torch.device("cpu")
