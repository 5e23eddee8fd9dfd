"""Writing a pruned model as a checkpoint: `physical` (smaller) or `zeroed`.

`physical`: the tensors of removed blocks are not written. Layers that lost both blocks are
deleted and the remaining layers renumbered contiguously (tensor keys, `num_hidden_layers`, the
shard index, and per-layer config lists such as `layer_types`, written out explicitly for the kept
layers). Layers that lost one block are listed in `config.json` as
`compress_pruned_blocks: {"attn": [...], "mlp": [...]}` (indices after renumbering); the folder
then also holds `modeling_compress_pruned.py`, registered in `auto_map`, so that
`AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)` runs it without `compress`,
while `compress.load(out)` loads it without remote code (`compress.prune.modeling`). When only
whole layers were removed the output is a plain checkpoint of the input's architecture.

`zeroed`: the same architecture and tensors as the input, with the output projections of the removed
blocks (`family.attn_out` / `family.mlp_out`, weights and biases) set to zero. For pre-norm and
sandwich-norm layers this makes the block exactly the identity (its output is 0, and RMSNorm(0) = 0
for Gemma's post-norms; norms are never zeroed, Gemma scales by 1 + w). It loads in any runtime
without custom code, but gives NO speed or size gain: every block is still computed.

Tensors are streamed one at a time from the input (`Checkpoint.get`) into `save_checkpoint`; the
whole model is never loaded. The output appears atomically.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.arch import (
    ATTN,
    BLOCK_KINDS,
    MLP,
    PRUNED_KEY,
    Family,
    block_of,
    family_for,
    split_layer_name,
)
from compress.arch.remote_code import MODELING_FILE, MODELING_MODULE, remote_modeling_source
from compress.checkpoint.reader import Checkpoint
from compress.checkpoint.save import save_checkpoint
from compress.checkpoint.writer import ShardedWriter, TensorSpec
from compress.errors import CompressError
from compress.progress import progress_bar
from compress.prune.modeling import check_layers, check_removals, validate_pruned_map

MODES = ("physical", "zeroed")
# Index-based config fields of other architectures that cannot be remapped when layers are deleted.
_UNMAPPABLE = ("mlp_only_layers", "first_k_dense_replace", "decoder_sparse_step", "moe_layer_freq")

__all__ = ["MODELING_FILE", "MODES", "ExportPlan", "export_pruned", "plan_export"]


@dataclass
class ExportPlan:
    """What an export writes: tensor renames, zeroed tensors, new config."""

    mode: str
    family: Family
    layers_in: int
    kept: list[int]  # input layer indices kept, in order (physical); all layers (zeroed)
    removed_all: dict[str, list[int]]  # every block absent from the output, input layer indices
    pruned_out: dict[str, list[int]]  # compress_pruned_blocks of the output (output indices)
    sources: dict[str, str] = field(default_factory=dict)  # output name -> input name
    zeroed: set[str] = field(default_factory=set)  # output names written as zeros
    config: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def _config_object(cfg: dict[str, Any]):
    """The transformers config object of a config dict (None for model types transformers lacks)."""
    from transformers import CONFIG_MAPPING

    mt = cfg.get("model_type")
    if mt not in CONFIG_MAPPING:
        return None
    return CONFIG_MAPPING[mt].from_dict({k: v for k, v in cfg.items() if k != "auto_map"})


def _layer_lists(cfg: dict[str, Any], family: Family, n: int) -> dict[str, list[Any]]:
    """Per-layer config lists (length num_hidden_layers), as transformers sees them."""
    obj = _config_object(cfg)
    out: dict[str, list[Any]] = {}
    for name in dict.fromkeys(("layer_types", *family.layer_type_fields)):
        value = cfg.get(name)
        if value is None and obj is not None:
            value = getattr(obj, name, None)
        if isinstance(value, (list, tuple)) and len(value) == n:
            out[name] = list(value)
    for name, value in cfg.items():  # any other per-layer list must follow the layers too
        if name not in out and name != PRUNED_KEY and "layer" in name and isinstance(value, list) and len(value) == n:
            out[name] = list(value)
    return out


def plan_export(ckpt: Checkpoint, removed: Iterable[tuple[int, str]], mode: str = "physical") -> ExportPlan:
    """Plan an export of `ckpt` without reading any tensor data; raises CompressError on bad input."""
    if mode not in MODES:
        raise CompressError(f"unknown export mode {mode!r}: use one of {', '.join(MODES)}")
    cfg = ckpt.config
    names = ckpt.names()
    family = family_for(cfg, names)
    n = check_layers(ckpt, family)
    already = validate_pruned_map(cfg, f"{ckpt.path}/config.json")
    new = check_removals(removed, n, already)
    gone = {kind: set(already[kind]) for kind in BLOCK_KINDS}
    for layer, kind in new:
        gone[kind].add(layer)
    out_cfg = copy.deepcopy(cfg)

    if mode == "zeroed":
        kept = list(range(n))
        plan = ExportPlan(mode, family, n, kept, {k: sorted(v) for k, v in gone.items()}, already)
        targets = {}
        for layer, kind in new:
            outs = family.attn_out if kind == ATTN else family.mlp_out
            for module in outs:
                w = f"{family.layer_prefix(layer)}{module}.weight"
                if w not in ckpt:
                    raise CompressError(f"{ckpt.path} has no tensor {w}: cannot zero block {kind} of layer {layer}")
                targets[w] = True
                b = f"{family.layer_prefix(layer)}{module}.bias"
                if b in ckpt:
                    targets[b] = True
        plan.sources = {name: name for name in names}
        plan.zeroed = set(targets)
        plan.config = out_cfg
        if already[ATTN] or already[MLP]:  # an already pruned input keeps its map and its modeling code
            src, cls = remote_modeling_source(family, cfg.get("model_type", ""))
            out_cfg.setdefault("auto_map", {})["AutoModelForCausalLM"] = f"{MODELING_MODULE}.{cls}"
            plan.files = {MODELING_FILE: src}
        return plan

    kept = [i for i in range(n) if not (i in gone[ATTN] and i in gone[MLP])]  # not empty: check_removals
    new_index = {old: i for i, old in enumerate(kept)}
    pruned_out = {kind: sorted(new_index[i] for i in gone[kind] if i in new_index) for kind in BLOCK_KINDS}
    plan = ExportPlan(mode, family, n, kept, {k: sorted(v) for k, v in gone.items()}, pruned_out)

    for name in names:
        split = split_layer_name(family, name)
        if split is None:
            plan.sources[name] = name
            continue
        layer, rel = split
        blk = block_of(family, name)
        if layer not in new_index or (blk is not None and layer in gone[blk[1]]):
            continue
        plan.sources[f"{family.layer_prefix(new_index[layer])}{rel}"] = name

    deleted = len(kept) < n
    if deleted:
        present = [k for k in _UNMAPPABLE if cfg.get(k) not in (None, [], 0)]
        if present:
            raise CompressError(f"config field {present[0]!r} indexes layers and cannot be remapped: refusing to delete layers")
    lists = _layer_lists(cfg, family, n)
    out_cfg["num_hidden_layers"] = len(kept)
    for name, values in lists.items():
        out_cfg[name] = [values[i] for i in kept]
    auto_map = dict(out_cfg.get("auto_map") or {})
    auto_map.pop("AutoModelForCausalLM", None)
    out_cfg.pop(PRUNED_KEY, None)
    if pruned_out[ATTN] or pruned_out[MLP]:
        src, cls = remote_modeling_source(family, cfg.get("model_type", ""))
        out_cfg[PRUNED_KEY] = pruned_out
        auto_map["AutoModelForCausalLM"] = f"{MODELING_MODULE}.{cls}"
        plan.files = {MODELING_FILE: src}
    if auto_map:
        out_cfg["auto_map"] = auto_map
    else:
        out_cfg.pop("auto_map", None)
    _check_layer_config(out_cfg, family, {name: [values[i] for i in kept] for name, values in lists.items()})
    plan.config = out_cfg
    return plan


def _check_layer_config(cfg: dict[str, Any], family: Family, expected: dict[str, list[Any]]) -> None:
    """Refuse when the installed transformers would read per-layer fields differently than written."""
    obj = _config_object(cfg)
    if obj is None:
        return
    if getattr(obj, "num_hidden_layers", None) != cfg["num_hidden_layers"]:
        raise CompressError("transformers does not read num_hidden_layers back as written: refusing the export")
    for name, values in expected.items():
        got = getattr(obj, name, values)
        if got is not None and list(got) != values:
            raise CompressError(
                f"transformers would recompute {name} of the pruned model as {list(got)} instead of {values}: "
                "refusing the export"
            )


def export_pruned(
    model_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    removed: list[tuple[int, str]],
    *,
    mode: str = "physical",
    force: bool = False,
    max_shard_size: int | str = "5GB",
    extra: dict[str, Any] | None = None,
    before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Write `model_dir` with the blocks `removed` ([(layer, 'attn' | 'mlp')], input indices) taken out.

    `mode="physical"` writes a smaller checkpoint (see the module docstring); `mode="zeroed"` keeps
    the architecture and zeroes the removed blocks' output projections (no speed gain). The input
    may itself be a pruned checkpoint: its `compress_pruned_blocks` are merged in. `extra` goes into
    compress.json; `before_commit(tmp)` runs before the output folder appears.
    """
    removed = list(removed)
    ckpt = Checkpoint(model_dir)
    plan = plan_export(ckpt, removed, mode)
    specs = []
    for out_name, src in plan.sources.items():
        info = ckpt.info(src)
        specs.append(TensorSpec(out_name, info.shape, info.dtype))

    def produce(writer: ShardedWriter) -> None:
        with progress_bar(f"writing {mode} checkpoint", len(specs)) as advance:
            for spec in specs:
                if spec.name in plan.zeroed:
                    tensor = torch.zeros(spec.shape, dtype=spec.dtype)
                else:
                    tensor = ckpt.get(plan.sources[spec.name])
                writer.write(spec.name, tensor)
                advance(1)

    record = {
        "mode": mode,
        "removed": [[int(layer), kind] for layer, kind in removed],
        "removed_all_input_indices": plan.removed_all,
        "layers_in": plan.layers_in,
        "layers_out": len(plan.kept),
        "kept_layers": plan.kept,
        PRUNED_KEY: plan.pruned_out,
    }
    try:
        return save_checkpoint(
            output,
            specs,
            produce,
            config=plan.config,
            inputs=[model_dir],
            side_files=ckpt.side_files(),
            force=force,
            max_shard_size=max_shard_size,
            extra={"export": record, **(extra or {})},
            files=plan.files,
            before_commit=before_commit,
            method=str(((extra or {}).get("prune") or {}).get("method", "prune")),
            tags=("prune", f"export-{record.get('mode', 'physical')}"),
        )
    finally:
        ckpt.close()
