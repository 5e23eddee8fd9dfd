"""Per-family block maps: which modules and tensors form each attention / MLP block."""

from compress.arch.blocks import PRUNED_KEY, ModelSummary, block_map_text, pruned_blocks, summarize
from compress.arch.families import (
    ATTN,
    BLOCK_KINDS,
    FAMILIES,
    MLP,
    SUPPORTED,
    Family,
    block_of,
    family_for,
    kind_of,
    num_layers,
    split_layer_name,
)

__all__ = [
    "ATTN",
    "BLOCK_KINDS",
    "FAMILIES",
    "MLP",
    "PRUNED_KEY",
    "SUPPORTED",
    "Family",
    "ModelSummary",
    "block_map_text",
    "block_of",
    "family_for",
    "kind_of",
    "num_layers",
    "pruned_blocks",
    "split_layer_name",
    "summarize",
]
