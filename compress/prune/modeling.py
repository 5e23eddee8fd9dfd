"""Loading checkpoints written by `compress prune` (physical export) without remote code.

A physically pruned checkpoint is a standard transformers architecture with fewer layers, where
some layers lost their attention or MLP block. `config.json` lists those blocks as
`compress_pruned_blocks: {"attn": [...], "mlp": [...]}` (indices of the checkpoint's own layers).
`load_pruned` builds the standard model class with those blocks replaced by the identity modules of
`compress.prune.mask` (before any weight is loaded, so their tensors are not expected) and then
loads the weights with transformers: any other missing tensor is fatal. This module also checks
the block structure a checkpoint claims: config and tensors agree on the layers, the pruned-block
map is valid, a list of removals fits the model.

KV cache: a removed attention block writes no cache entry, and transformers reads the
past length from cache layer 0 and sizes the masks from the first full-attention cache layer. The
cache slot of every removed attention layer is therefore turned into a transformers `DummyLayer`
(as for KV-sharing layers): `Cache.get_seq_length()` and the mask builders then skip it and read a
layer that really holds keys. Slots stay indexed by decoder-layer index.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.arch import ATTN, BLOCK_KINDS, MLP, PRUNED_KEY, Family, family_for, num_layers, split_layer_name
from compress.arch.remote_code import MODELING_FILE, MODELING_MODULE, remote_modeling_source
from compress.checkpoint.reader import Checkpoint
from compress.errors import CompressError
from compress.prune.mask import apply_removals, decoder_layers, dummy_layer_class

__all__ = ["check_layers", "check_removals", "dummy_cache_slots", "install_cache_fix", "load_pruned", "pruned_class",
           "text_config_value", "validate_pruned_map", "write_modeling_code"]


def validate_pruned_map(config: dict[str, Any], where: str = "config.json") -> dict[str, list[int]]:
    """The `compress_pruned_blocks` map of a config, checked: known kinds, integer indices in range."""
    raw = config.get(PRUNED_KEY)
    if raw is None:
        return {ATTN: [], MLP: []}
    if not isinstance(raw, dict) or set(raw) - set(BLOCK_KINDS):
        raise CompressError(f"{where}: {PRUNED_KEY} must be an object with keys 'attn' and 'mlp'")
    n = num_layers(config)
    out: dict[str, list[int]] = {}
    for kind in BLOCK_KINDS:
        vals = raw.get(kind, [])
        if not isinstance(vals, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in vals):
            raise CompressError(f"{where}: {PRUNED_KEY}[{kind!r}] must be a list of layer indices")
        bad = [i for i in vals if not 0 <= i < n]
        if bad:
            raise CompressError(f"{where}: {PRUNED_KEY}[{kind!r}] names layer {bad[0]}, but the model has {n} layers")
        out[kind] = sorted(set(vals))
    return out


def text_config_value(config: dict[str, Any], key: str) -> Any:
    """A config value, from the config itself or its `text_config` (multimodal configs)."""
    value = config.get(key)
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get(key)
    return value


def check_layers(ckpt: Checkpoint, family: Family) -> int:
    """The layer count, once config.json and the tensors agree on it: n >= 1 and tensors for layers
    0 .. n-1 exactly (a layer whose both blocks are listed as pruned may hold none)."""
    try:
        n = num_layers(ckpt.config)
    except CompressError:
        n = text_config_value(ckpt.config, "num_hidden_layers")
    held = sorted({s[0] for s in (split_layer_name(family, name) for name in ckpt.names()) if s is not None})
    have = f"the tensors hold {len(held)} layers" + (f" ({held[0]}..{held[-1]})" if held else "")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or (held and held[-1] >= n):
        raise CompressError(f"{ckpt.path}: config.json says num_hidden_layers = {n!r}, but {have}: "
                            "the config and the weights disagree")
    pruned = validate_pruned_map(ckpt.config, f"{ckpt.path}/config.json")
    empty = set(pruned["attn"]) & set(pruned["mlp"])
    missing = [i for i in range(n) if i not in held and i not in empty]
    if missing:
        raise CompressError(f"{ckpt.path}: config.json says num_hidden_layers = {n}, but {have} "
                            f"(none for layer {missing[0]}): the config and the weights disagree")
    return n


def check_removals(removed: Iterable[Any], n: int, already: dict[str, list[int]] | None = None,
                   where: str = "") -> list[tuple[int, str]]:
    """A list of blocks to remove, checked against a model of `n` layers: each item (layer, 'attn' |
    'mlp') with 0 <= layer < n, none twice, none among the blocks `already` removed, and at least one
    block of the model left. Returns the items as tuples."""
    already = already or {ATTN: [], MLP: []}
    at = f"{where}: " if where else ""
    out: list[tuple[int, str]] = []
    for item in removed:
        try:
            layer, kind = item
        except (TypeError, ValueError):
            raise CompressError(f"{at}a removed block must be (layer, 'attn' | 'mlp'), got {item!r}") from None
        if not isinstance(kind, str) or kind not in BLOCK_KINDS:
            raise CompressError(f"{at}unknown block kind {kind!r} for layer {layer}: use 'attn' or 'mlp'")
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
            raise CompressError(f"{at}cannot remove block {kind} of layer {layer}: the model has layers 0..{n - 1}")
        if (layer, kind) in out:
            raise CompressError(f"{at}block {kind} of layer {layer} is listed twice")
        if layer in already[kind]:
            raise CompressError(f"{at}block {kind} of layer {layer} was already removed from this checkpoint")
        out.append((layer, kind))
    if len(out) + len(already[ATTN]) + len(already[MLP]) >= 2 * n:
        raise CompressError(f"{at}this removes every block of the model ({2 * n} blocks in {n} layers): "
                            "keep at least one block")
    return out


def dummy_cache_slots(cache: Any, layers: Iterable[int]) -> None:
    """Replace the cache slots of attention-less layers by `DummyLayer`s (in place)."""
    DummyLayer = dummy_layer_class()  # noqa: N806 (a class)
    slots = getattr(cache, "layers", None)
    if slots is None:
        return
    for i in layers:
        if i < len(slots) and not isinstance(slots[i], DummyLayer):
            slots[i] = DummyLayer()


def install_cache_fix(model: nn.Module, family: Family, attn_removed: list[int]) -> None:
    """Hook the decoder body so that every cache it sees or returns has dummy slots for `attn_removed`.

    Before the forward: a cache created by `generate` (one slot per layer, from the config). After
    the forward: a cache the body created itself or grew lazily. With no attention left at all the
    slots are left alone (every slot stays empty; positions do not matter without attention).
    """
    n = len(decoder_layers(model, family))
    layers = sorted(attn_removed)
    if not layers or len(layers) >= n:
        return
    dummy_layer_class()  # an old transformers fails here, at load, with a clear message
    body = model
    for part in family.layers.split(".")[:-1]:
        body = getattr(body, part)

    def before(module, args, kwargs):
        cache = kwargs.get("cache")
        if cache is None:
            cache = kwargs.get("past_key_values")
        if cache is not None:
            dummy_cache_slots(cache, layers)

    def after(module, args, kwargs, output):
        cache = output.get("cache") if hasattr(output, "get") else None
        if cache is not None:
            dummy_cache_slots(cache, layers)

    body.register_forward_pre_hook(before, with_kwargs=True)
    body.register_forward_hook(after, with_kwargs=True)


def write_modeling_code(folder: str | os.PathLike[str], family: Family) -> None:
    """Add modeling_compress_pruned.py (rendered from the package template) to a saved pruned model
    folder and register it in config.json."""
    cfg_file = Path(folder) / "config.json"
    cfg = json.loads(cfg_file.read_text())
    src, cls = remote_modeling_source(family, cfg.get("model_type", ""))
    (Path(folder) / MODELING_FILE).write_text(src)
    cfg.setdefault("auto_map", {})["AutoModelForCausalLM"] = f"{MODELING_MODULE}.{cls}"
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


@functools.cache
def pruned_class(base: type, family: Family) -> type:
    """A subclass of the transformers class `base` whose __init__ removes the config's pruned blocks."""

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        cfg = config.to_dict()
        cfg["num_hidden_layers"] = len(decoder_layers(self, family))
        pruned = validate_pruned_map(cfg)
        apply_removals(self, family, [(i, kind) for kind in BLOCK_KINDS for i in pruned[kind]])
        install_cache_fix(self, family, pruned[ATTN])

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save_pretrained, plus the modeling file that lets others load the folder."""
        base.save_pretrained(self, save_directory, *args, **kwargs)
        write_modeling_code(save_directory, family)

    return type(f"Pruned{base.__name__}", (base,),
                {"__init__": __init__, "save_pretrained": save_pretrained, "__module__": __name__})


def config_and_class(ckpt: Checkpoint):
    """(transformers config, causal-LM class) of a checkpoint folder; one-line errors."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    path = ckpt.path
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise CompressError(f"cannot read the config of {path}: {str(e).splitlines()[0]}") from None
    base = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if base is None:
        raise CompressError(f"{path}: transformers has no causal-LM class for model_type {config.model_type!r}")
    return config, base


def load_pruned(ckpt: Checkpoint, dtype: torch.dtype | None) -> nn.Module:
    """Load a physically pruned checkpoint: identity blocks where `compress_pruned_blocks` says.

    Missing weights of blocks not listed there are fatal (never randomly initialised).
    """
    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()
    path = ckpt.path
    family = family_for(ckpt.config, ckpt.names())
    validate_pruned_map(ckpt.config, f"{path}/config.json")
    config, base = config_and_class(ckpt)
    cls = pruned_class(base, family)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = cls.from_pretrained(str(path), config=config, dtype=dtype or "auto",
                                              output_loading_info=True, local_files_only=True)
    except CompressError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CompressError(f"cannot load the pruned model in {path}: {str(e).splitlines()[0]}") from None
    missing = sorted(k for k in info.get("missing_keys", []) if k)
    if missing:
        raise CompressError(
            f"{path} lacks {len(missing)} weight tensors (e.g. {missing[0]}) of blocks not listed in {PRUNED_KEY}: "
            "refusing to initialise them randomly"
        )
    unexpected = sorted(k for k in info.get("unexpected_keys", []) if k)
    if unexpected:
        raise CompressError(
            f"{path} holds {len(unexpected)} tensors of blocks listed as pruned in {PRUNED_KEY} (e.g. {unexpected[0]}): "
            "the config and the weights disagree"
        )
    if info.get("mismatched_keys"):
        raise CompressError(f"{path}: tensor shapes do not match the config, e.g. {list(info['mismatched_keys'])[0]}")
    return model
