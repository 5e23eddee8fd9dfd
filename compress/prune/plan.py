"""Planning a prune run before any work: the checks that need the model but not its weights.

Everything here reads only `config.json` and the safetensors headers, so a bad model or an option the
model cannot satisfy is one error line before the model is loaded and the search runs:

- config and tensors agree: `num_hidden_layers` is a positive count and the tensors hold exactly the
  layers 0 .. n-1 (a config naming fewer layers than the files would silently give a smaller model);
- transformers knows the model type (the search runs the model);
- `--seq-len` fits the model's context (`max_position_embeddings`);
- the candidates of the method exist, and `--blocks` / `--ratio` can be reached while one block of the
  model stays (a model without any block is no model);
- the search's own memory (the fast search caches one residual stream per block boundary) fits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.arch import Family, family_for
from compress.checkpoint.reader import Checkpoint
from compress.errors import CompressError
from compress.prune.config import PruneConfig
from compress.prune.evaluators import fast_state_bytes
from compress.prune.modeling import check_layers, text_config_value
from compress.prune.params import ParamCount, checkpoint_params
from compress.prune.registry import METHODS
from compress.prune.score import position
from compress.prune.search import StopRule
from compress.prune.units import Unit, block_units, layer_units

__all__ = ["Plan", "available_memory", "check_search_memory", "make_plan", "text_config_value"]


@dataclass
class Plan:
    """What the search will work on, known from the checkpoint's config and headers."""

    ckpt: Checkpoint
    family: Family
    params: ParamCount
    n_layers: int
    present: set[int]  # depth positions of the blocks the checkpoint has
    units: list[Unit]  # the candidates, in the official order
    stop: StopRule
    what: str  # how to name the candidates in messages


def _check_runnable(config: dict[str, Any], path: Path, seq_len: int) -> None:
    """transformers knows the model type, and --seq-len fits the model's context."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise CompressError(f"{path}: transformers does not know model_type {model_type!r}, and compress prune "
                            "must run the model: nothing to prune with")
    context = text_config_value(config, "max_position_embeddings")
    if isinstance(context, int) and not isinstance(context, bool) and seq_len > context:
        raise CompressError(f"--seq-len {seq_len} is longer than the model's context "
                            f"(max_position_embeddings = {context}): use --seq-len {context} or less")


def _candidates(cfg: PruneConfig, n_layers: int, present: set[int], params: ParamCount) -> tuple[list[Unit], str]:
    method = METHODS[cfg.method]
    if method.unit == "block":
        what = "blocks" if cfg.block_type == "mix" else f"{cfg.block_type} blocks"
        return block_units(n_layers, cfg.block_type, present, params.blocks), what
    return layer_units(n_layers, present, params.blocks, method.barriers), "candidate layers"


def _stop_rule(cfg: PruneConfig, units: list[Unit], present: set[int], params: ParamCount, what: str) -> StopRule:
    """The stop rule, once --blocks / --ratio are reachable with at least one block of the model kept."""
    model = cfg.model
    if not units:
        raise CompressError(f"{model} has no {what} left to remove")
    covers_all = set().union(*(u.positions for u in units)) >= present
    limit = len(units) - 1 if covers_all else len(units)  # the last block of a model stays
    if limit == 0:
        raise CompressError(f"{model} has a single block left: nothing can be removed")
    if cfg.blocks is not None and cfg.blocks > limit:
        keep = " (one must stay)" if covers_all else ""
        raise CompressError(f"--blocks {cfg.blocks}: {model} has only {len(units)} {what} that {cfg.method} can "
                            f"remove{keep}: at most --blocks {limit}")
    if cfg.ratio is not None:
        sizes = sorted(u.params for u in units)
        reachable = sum(sizes[:limit]) / params.total  # whatever the order, `limit` units remove this much
        if cfg.ratio > reachable:
            raise CompressError(f"--ratio {cfg.ratio}: {cfg.method} can surely remove only {100 * reachable:.1f}% "
                                f"of the parameters of {model} (at most --ratio {reachable:.4f})")
    return StopRule(cfg.blocks, cfg.ratio, cfg.max_ppl, limit=limit)


def make_plan(cfg: PruneConfig) -> Plan:
    """Read the checkpoint's config and headers; refuse what the run could not do."""
    ckpt = Checkpoint(cfg.model)
    family = family_for(ckpt.config, ckpt.names())
    n_layers = check_layers(ckpt, family)
    _check_runnable(ckpt.config, ckpt.path, cfg.seq_len)
    params = checkpoint_params(ckpt)
    present = {position(b) for b in params.blocks}
    units, what = _candidates(cfg, n_layers, present, params)
    stop = _stop_rule(cfg, units, present, params, what)
    return Plan(ckpt, family, params, n_layers, present, units, stop, what)


def available_memory(device: Any) -> int | None:
    """Bytes that can still be allocated on `device` (a torch.device): free GPU memory, or the host's
    MemAvailable; None when unknown."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_search_memory(plan: Plan, cfg: PruneConfig, windows: int, seq_len: int, device: Any, element_size: int,
                        stream_device: Any = None) -> None:
    """Refuse a calibration set whose search state cannot fit: the fast search keeps one residual stream
    (tokens x hidden) per block boundary; --offload one per candidate plus the committed one."""
    if cfg.search == "naive":
        return
    hidden = text_config_value(plan.ckpt.config, "hidden_size")
    if not isinstance(hidden, int):
        return
    tokens = windows * seq_len
    if cfg.offload:
        need = (len(plan.units) + 1) * tokens * hidden * element_size
        where = stream_device or device
        what = f"--offload keeps {len(plan.units) + 1} residual streams"
    else:
        removed = 2 * plan.n_layers - len(plan.present)
        need = fast_state_bytes(2 * plan.n_layers, removed, tokens, hidden, element_size)
        where = device
        what = f"--search {cfg.search} keeps the residual stream at {2 * plan.n_layers - removed + 1} block boundaries"
    free = available_memory(where)
    if free is not None and need > free:
        raise CompressError(f"{what} of {windows} x {seq_len} calibration tokens: {need / 2**30:.1f} GiB, more than "
                            f"the {free / 2**30:.1f} GiB available on {where}: use fewer --samples, a shorter "
                            "--seq-len, or --search naive")
