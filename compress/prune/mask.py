"""Removing blocks from a model in memory: the block's sub-modules are replaced, nothing else changes.

A removed block is the identity on the residual stream (BlockPruner's minimal residual block).
The attention module is replaced by one that returns zeros (it writes no KV-cache entry and turns its
cache slot into a `DummyLayer`, so masked models generate with a cache correctly), the MLP
by one that returns zeros, and the block's norms by `nn.Identity` (their output only feeds the
removed module, or - Gemma2/3's post-norms - normalises the zero output, and RMSNorm(0) = 0).
The replaced modules hold no parameters, so `state_dict()` of a masked model is exactly the set of
tensors a physically pruned checkpoint keeps.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from compress.arch.families import ATTN, Family
from compress.errors import CompressError


def dummy_layer_class() -> type:
    """transformers' `DummyLayer`: the cache slot of a layer without attention (transformers >= 5.23)."""
    try:
        from transformers.cache_utils import DummyLayer
    except ImportError:
        import transformers

        raise CompressError(f"a model without some attention blocks needs transformers>=5.23 (cache_utils.DummyLayer)"
                            f"; this is transformers {transformers.__version__}: pip install -U 'transformers>=5.23'"
                            ) from None
    return DummyLayer


class RemovedAttention(nn.Module):
    """Stands in for a removed attention module: contributes nothing, caches nothing.

    Its KV-cache slot becomes a transformers `DummyLayer` the first time a cache passes by
    (transformers reads the past length from cache layer 0 and sizes masks from the first
    full-attention slot; an empty slot of a removed attention would restart positions at every
    decoding step). So an in-memory masked model generates with a cache exactly as without one.
    """

    def __init__(self, layer_idx: int | None = None):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and self.layer_idx is not None:
            _dummy_slot(cache, self.layer_idx)
        return torch.zeros_like(hidden_states), None


def _dummy_slot(cache, layer_idx: int) -> None:
    slots = getattr(cache, "layers", None)
    if slots is None or layer_idx >= len(slots):
        return
    DummyLayer = dummy_layer_class()  # noqa: N806 (a class)
    if isinstance(slots[layer_idx], DummyLayer):
        return
    # With no attention left at all, one real (empty) slot stays: transformers needs one to ask for a
    # length, and positions do not matter without attention.
    if any(not isinstance(s, DummyLayer) for i, s in enumerate(slots) if i != layer_idx):
        slots[layer_idx] = DummyLayer()


class RemovedMLP(nn.Module):
    """Stands in for a removed MLP module."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return torch.zeros_like(hidden_states)


def decoder_layers(model: nn.Module, family: Family) -> nn.ModuleList:
    mod = model
    for part in family.layers.split("."):
        mod = getattr(mod, part)
    return mod  # type: ignore[return-value]


def remove_block(layer: nn.Module, family: Family, kind: str) -> dict[str, nn.Module]:
    """Replace the modules of one block in a decoder layer; return the originals (for restoring)."""
    saved = {}
    for name in family.block_modules(kind):
        saved[name] = getattr(layer, name)
        if name == family.attn_module:
            repl: nn.Module = RemovedAttention(getattr(saved[name], "layer_idx", None))
        elif name == family.mlp_module:
            repl = RemovedMLP()
        else:
            repl = nn.Identity()
        setattr(layer, name, repl)
    return saved


def restore_block(layer: nn.Module, saved: dict[str, nn.Module]) -> None:
    for name, module in saved.items():
        setattr(layer, name, module)


def apply_removals(model: nn.Module, family: Family, removed: Iterable[tuple[int, str]]) -> nn.Module:
    """Remove blocks (layer, 'attn' | 'mlp') in place; returns the model."""
    layers = decoder_layers(model, family)
    for layer_idx, kind in removed:
        remove_block(layers[layer_idx], family, kind)
    return model


def is_removed(layer: nn.Module, family: Family, kind: str) -> bool:
    module = getattr(layer, family.attn_module if kind == ATTN else family.mlp_module)
    return isinstance(module, (RemovedAttention, RemovedMLP))
