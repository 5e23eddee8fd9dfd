"""Removing blocks from a model in memory: the block's sub-modules are replaced, nothing else changes.

A removed block is the identity on the residual stream (BlockPruner's minimal residual block).
The attention module is replaced by one that returns zeros (and writes no KV-cache entry), the MLP
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


class RemovedAttention(nn.Module):
    """Stands in for a removed attention module: contributes nothing, caches nothing."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


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
            repl: nn.Module = RemovedAttention()
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
