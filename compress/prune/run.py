"""`compress prune`: load -> calibration windows -> search -> export -> report.

Methods (`method`): `blockpruner` (BlockPruner's greedy search over attention / MLP blocks, the
default), `layer` (the same search over whole layers), `sleb` (SLEB: the same over whole layers,
first and last layers excluded), `shortgpt` (one-shot ranking by Block Influence). Every method
reports the calibration perplexity after each removal.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from compress.arch import family_for, num_layers
from compress.checkpoint.atomic import check_output
from compress.checkpoint.reader import Checkpoint
from compress.errors import CompressError
from compress.model.device import dtype_name, parse_device, parse_dtype
from compress.progress import info, progress_bar, warn
from compress.prune import report as rep
from compress.prune.baselines import SLEB_BARRIERS, rank_by_score, shortgpt_scores
from compress.prune.params import checkpoint_params
from compress.prune.score import BlockRunner, block_at, block_name, position
from compress.prune.search import (
    CRITERIA,
    SEARCHES,
    FastEvaluator,
    GreedySearch,
    NaiveEvaluator,
    SearchResult,
    StepRecord,
    StopRule,
    block_units,
    layer_units,
)
from compress.prune.state import fingerprint, load_state, save_state, state_path

METHODS = ("blockpruner", "shortgpt", "sleb", "layer")
BLOCK_TYPES = ("mix", "attn", "mlp")
EXPORTS = ("physical", "zeroed", "mask")
SMALL_CALIBRATION = 8192  # scored tokens; the issue measured overfitting at 1.5k
DEFAULT_SAMPLES = 32


def validate(method: str, block_type: str, blocks: int | None, ratio: float | None, max_ppl: float | None,
             search: str, criterion: str, lazy_m: int, lazy_every: int, export: str, batch_size: int,
             offload: bool = False, data: object = None) -> None:
    if method not in METHODS:
        raise CompressError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if block_type not in BLOCK_TYPES:
        raise CompressError(f"unknown block type {block_type!r}: choose one of {', '.join(BLOCK_TYPES)}")
    if block_type != "mix" and method != "blockpruner":
        raise CompressError(f"--block-type {block_type} applies to --method blockpruner only ({method} removes whole layers)")
    if search not in SEARCHES:
        raise CompressError(f"unknown search {search!r}: choose one of {', '.join(SEARCHES)}")
    if criterion not in CRITERIA:
        raise CompressError(f"unknown criterion {criterion!r}: choose one of {', '.join(CRITERIA)}")
    if export not in EXPORTS:
        raise CompressError(f"unknown export mode {export!r}: choose one of {', '.join(EXPORTS)}")
    if blocks is None and ratio is None and max_ppl is None:
        raise CompressError("say how much to remove: --blocks N, --ratio R or --max-ppl X")
    if blocks is not None and ratio is not None:
        raise CompressError("--blocks and --ratio are alternatives: pass one of them (optionally with --max-ppl)")
    if blocks is not None and blocks < 1:
        raise CompressError(f"--blocks must be at least 1, got {blocks}")
    if ratio is not None and not (0 < ratio < 1):
        raise CompressError(f"--ratio is the share of parameters to remove and must be between 0 and 1 (exclusive), got {ratio}")
    if max_ppl is not None and not (max_ppl > 0 and math.isfinite(max_ppl)):
        raise CompressError(f"--max-ppl must be a positive number, got {max_ppl}")
    if lazy_m < 1:
        raise CompressError(f"--lazy-m must be at least 1, got {lazy_m}")
    if lazy_every < 0:
        raise CompressError(f"--lazy-every must be 0 (never) or positive, got {lazy_every}")
    if batch_size < 1:
        raise CompressError(f"--batch-size must be at least 1, got {batch_size}")
    if offload and search == "naive":
        raise CompressError("--offload runs its own exact layer-by-layer search (the sequence of --search naive): "
                            "drop --search naive")
    if offload and data is None:
        raise CompressError("--offload needs calibration text from --data (generating it would need the whole "
                            "model in memory)")


def compute_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """'auto': as stored on a GPU; fp32 on CPU (CPUs without bf16 units run bf16 matmuls ~10x slower)."""
    if dtype in (None, "auto") and device.type == "cpu":
        return torch.float32
    return parse_dtype(dtype)


def calibration_windows(model, tok, data: str | os.PathLike[str] | None, field: str | None, seq_len: int,
                        samples: int | None, calib_tokens: int | None, seed: int,
                        text_format: str = "auto") -> tuple[torch.Tensor, str]:
    from compress.data import generate_windows, load_windows
    from compress.data.text import describe_format

    if calib_tokens is not None:
        if calib_tokens < seq_len:
            raise CompressError(f"--calib-tokens {calib_tokens} is less than one window of --seq-len {seq_len}")
        samples = math.ceil(calib_tokens / seq_len)
    if data is not None:
        windows = load_windows(data, tok, seq_len, samples if samples is not None else DEFAULT_SAMPLES, seed, field,
                               text_format)
        return windows, f"{data}, {describe_format(data, text_format, field)}"
    n = samples if samples is not None else DEFAULT_SAMPLES
    with progress_bar("generating calibration text", n) as advance:
        windows = generate_windows(model, tok, n, seq_len, seed, progress=advance)
    return windows, "generated by the model"


def select_prefix(steps: list[StepRecord], stop: StopRule) -> list[StepRecord]:
    """The removals the stop rule asks for: one greedy run gives the whole nested sequence."""
    out = []
    for s in steps:
        if stop.max_ppl is not None and s.ppl > stop.max_ppl:
            break
        out.append(s)
        if stop.reached(len(out), s.ratio):
            break
    return out


def prune(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    method: str = "blockpruner",
    block_type: str = "mix",
    blocks: int | None = None,
    ratio: float | None = None,
    max_ppl: float | None = None,
    data: str | os.PathLike[str] | None = None,
    field: str | None = None,
    text_format: str = "auto",
    seq_len: int = 2048,
    samples: int | None = None,
    calib_tokens: int | None = None,
    seed: int = 42,
    search: str = "fast",
    lazy_m: int = 8,
    lazy_every: int = 0,
    criterion: str = "ppl",
    batch_size: int = 1,
    device: str = "cpu",
    dtype: str = "auto",
    export: str = "physical",
    force: bool = False,
    resume: bool = False,
    max_shard_size: int | str = "5GB",
    show_table: bool = True,
    offload: bool = False,
) -> dict[str, Any]:
    """Prune `model` into `output`; returns the report (also written as prune_report.json there).

    `offload=True` streams the weights layer by layer from the checkpoint (at most one decoder
    layer on the device; `compress.prune.offload`), for models larger than the device; it needs
    `data`, and gives the sequence of the exact search.
    """
    validate(method, block_type, blocks, ratio, max_ppl, search, criterion, lazy_m, lazy_every, export, batch_size,
             offload, data)
    check_output(output, [model], force)
    t0 = time.perf_counter()
    from compress.model.load import load_model, load_tokenizer

    ckpt = Checkpoint(model)
    family = family_for(ckpt.config, ckpt.names())
    params = checkpoint_params(ckpt)
    n_layers = num_layers(ckpt.config)
    # Blocks the checkpoint has (an already pruned input lacks some): checked before any work.
    present = {position(b) for b in params.blocks if b[0] < n_layers}
    if method == "blockpruner":
        units = block_units(n_layers, block_type, present, params.blocks)
        what = "blocks" if block_type == "mix" else f"{block_type} blocks"
    else:
        units = layer_units(n_layers, present, params.blocks, SLEB_BARRIERS if method == "sleb" else (0, 0))
        what = "candidate layers"
    if not units:
        raise CompressError(f"{model} has no {what} left to remove")
    if blocks is not None and blocks > len(units):
        raise CompressError(f"--blocks {blocks}: {model} has only {len(units)} {what} that {method} can remove")
    if ratio is not None:
        reachable = sum(u.params for u in units) / params.total
        if ratio > reachable:
            raise CompressError(f"--ratio {ratio}: removing every candidate of {method} removes only "
                                f"{100 * reachable:.1f}% of the parameters")
    stop = StopRule(blocks, ratio, max_ppl)

    dev = parse_device(device)
    cdtype = compute_dtype(dtype, dev)
    torch.manual_seed(seed)
    if offload:
        from compress.prune.offload import StreamedRunner, build_skeleton, stored_dtype

        cdtype = cdtype or stored_dtype(ckpt)
        net = build_skeleton(ckpt, cdtype, dev)
        runner = StreamedRunner(net, family, ckpt, dev)
    else:
        net = load_model(model, dev, cdtype, ckpt=ckpt)
        runner = BlockRunner(net, family)
    tok = load_tokenizer(model)
    already = runner.removed_in_model()
    if already != set(range(runner.n_positions)) - present:
        raise CompressError(f"{model}: the loaded model's blocks do not match its checkpoint's tensors")
    windows, source = calibration_windows(net, tok, data, field, seq_len, samples, calib_tokens, seed,
                                          text_format)
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    info(f"calibration: {windows.shape[0]} windows x {windows.shape[1]} tokens = {tokens:,} scored tokens ({source})")
    if tokens < SMALL_CALIBRATION:
        warn(f"only {tokens:,} calibration tokens: the search may fit this text rather than the model's "
             f"general behaviour (use at least {SMALL_CALIBRATION:,}: more --samples, longer --seq-len, or --data)")

    settings = {"method": method, "block_type": block_type, "criterion": criterion,
                "search": "exact" if search in ("fast", "naive") else
                f"lazy m={lazy_m} every={lazy_every}" + (" offload" if offload else ""),
                "batch_size": batch_size, "dtype": dtype_name(cdtype or next(net.parameters()).dtype),
                "device": dev.type}
    fp = fingerprint(ckpt, windows, settings)
    spath = state_path(output)
    saved = load_state(spath, fp) if resume else None
    if not resume and spath.exists():
        warn(f"{spath} holds an earlier search state: starting again (pass --resume to continue it)")

    stream_device = None
    if offload:
        from compress.prune.offload import OffloadEvaluator

        stream_device = _stream_device(dev, len(units) + 1, tokens + windows.shape[0], ckpt.config, cdtype)
        info(f"--offload: weights streamed layer by layer from {model}; candidate streams on {stream_device}")
        ev = OffloadEvaluator(runner, windows, batch_size, removed=already, stream_device=stream_device)

    fixed_order = None
    if method == "shortgpt":
        info("shortgpt: block influence of every layer (one pass)")
        bi = ev.block_influence() if offload else shortgpt_scores(net, family, windows, batch_size)
        fixed_order = rank_by_score(units, bi)
    else:
        bi = None

    if search == "naive":
        ev = NaiveEvaluator(runner, windows, batch_size)
        ev.removed |= already
    elif not offload:
        with progress_bar("caching block-boundary states", windows.shape[0]) as advance:
            ev = FastEvaluator(runner, windows, batch_size, removed=already, progress=advance)

    def on_step(g: GreedySearch) -> None:
        save_state(spath, fp, g.state())
        s = g.steps[-1]
        info(f"step {s.step}: removed {s.unit}  ratio {100 * s.ratio:.2f}%  calib ppl {s.ppl:.3f}  "
             f"({s.evaluated} scored, {s.abandoned} abandoned, {s.seconds:.1f}s)")

    g = GreedySearch(ev, units, stop=stop, total_params=params.total, criterion=criterion, search=search,
                     lazy_m=lazy_m, lazy_every=lazy_every, fixed_order=fixed_order, on_step=on_step)
    if saved is not None:
        g.restore(saved)
        info(f"resuming after {len(g.steps)} saved steps from {spath}")
    try:
        result = g.run()
    finally:
        ev.close()
    chosen = select_prefix(result.steps, stop)
    if not chosen:
        raise CompressError(f"nothing to remove: the first removal already exceeds --max-ppl {max_ppl} "
                            f"(calibration ppl {result.steps[0].ppl if result.steps else math.nan:.3f}, "
                            f"dense {result.dense_ppl:.3f})")
    removed = [b for s in chosen for b in s.blocks]
    report = build_report(model, result, chosen, method=method, block_type=block_type, criterion=criterion,
                          search=search, lazy=(lazy_m, lazy_every), source=source, windows=windows, seed=seed,
                          params_total=params.total, layers=runner.n_layers, already=sorted(block_at(p) for p in already),
                          export=export, dtype=settings["dtype"], device=str(dev), bi=bi)
    if offload:
        st = runner.streamer
        report["offload"] = {"streams": str(stream_device), "passes": ev.passes,
                             "peak_weight_bytes": st.peak_bytes, "bytes_read": st.bytes_read}
    del net, runner, ev
    from compress.prune.export import export_pruned

    def before_commit(tmp: Path) -> None:
        rep.write_json(report, tmp)
        rep.plot(report, tmp / rep.REPORT_PNG)

    if export == "mask":  # pruning.json + a reference to the base (maskfile.py)
        from compress.prune.maskfile import write_mask

        out = write_mask(model, output, report, [s.as_dict() for s in result.steps], force=force,
                         before_commit=before_commit)
    else:
        out = export_pruned(model, output, removed, mode=export, force=force, max_shard_size=max_shard_size,
                            extra={"prune": {k: v for k, v in report.items() if k not in ("steps", "all_steps")}},
                            before_commit=before_commit)
    report["output"] = str(out)
    report["seconds_total"] = time.perf_counter() - t0
    if spath.exists():
        spath.unlink()
    if show_table:
        rep.print_table(report)
        info(f"wrote {out} ({len(removed)} blocks removed, {100 * chosen[-1].ratio:.2f}% of parameters, "
             f"calibration ppl {result.dense_ppl:.3f} -> {chosen[-1].ppl:.3f})")
    return report


def _stream_device(dev: torch.device, streams: int, tokens: int, config: dict, dtype: torch.dtype) -> torch.device:
    """Where --offload keeps the candidates' residual streams: the GPU when they take at most half
    of its free memory, else the host."""
    if dev.type != "cuda":
        return dev
    hidden = int(config.get("hidden_size") or (config.get("text_config") or {}).get("hidden_size") or 0)
    need = streams * tokens * hidden * torch.empty((), dtype=dtype).element_size()
    free, _ = torch.cuda.mem_get_info(dev)
    return dev if need <= free // 2 else torch.device("cpu")


def build_report(model, result: SearchResult, chosen: list[StepRecord], *, method: str, block_type: str,
                 criterion: str, search: str, lazy: tuple[int, int], source: str, windows: torch.Tensor, seed: int,
                 params_total: int, layers: int, already: list, export: str, dtype: str, device: str,
                 bi: list[float] | None) -> dict[str, Any]:
    last = chosen[-1]
    rep_ = {
        "model": str(model),
        "method": method,
        "block_type": block_type,
        "criterion": criterion,
        "search": search,
        "export": export,
        "dtype": dtype,
        "device": device,
        "layers": layers,
        "calibration": {"source": source, "windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]),
                        "tokens": result.tokens, "seed": seed, "dense_ppl": result.dense_ppl},
        "params": {"dense": params_total, "removed": last.params_removed, "left": last.params_left},
        "removed": [[int(layer), kind] for s in chosen for layer, kind in s.blocks],
        "sequence": [s.unit for s in chosen],
        "ratio": last.ratio,
        "ppl": last.ppl,
        "stopped": result.stopped,
        "search_seconds": result.seconds,
        "already_removed": [[int(layer), kind] for layer, kind in already],
        "steps": [s.as_dict() for s in chosen],
    }
    if search == "lazy":
        rep_["lazy"] = {"m": lazy[0], "every": lazy[1],
                        "could_differ": [{"step": s.step, "candidates": s.lazy["could_differ"]}
                                         for s in chosen if s.lazy and s.lazy.get("could_differ")]}
    if bi is not None:
        rep_["block_influence"] = {f"layer {i}": v for i, v in enumerate(bi)}
    if len(result.steps) > len(chosen):
        rep_["further_steps"] = [{"step": s.step, "unit": s.unit, "ratio": s.ratio, "ppl": s.ppl}
                                 for s in result.steps[len(chosen):]]
    rep_["names"] = [block_name(tuple(b)) for b in rep_["removed"]]
    return rep_
