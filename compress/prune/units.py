"""What one search step removes (a `Unit`), and the candidates of each method in the official order.

BlockPruner's candidates are ('attn', i) for every layer i, then ('mlp', i); a candidate's place in
that order breaks ties (the first one wins). The layer methods' candidates are whole layers (the
blocks a layer still has), optionally without the first / last layers (SLEB's barriers).
"""

from __future__ import annotations

from dataclasses import dataclass

from compress.arch.families import ATTN, MLP
from compress.prune.score import Block, block_name, position

__all__ = ["Unit", "block_units", "layer_units"]


@dataclass(frozen=True)
class Unit:
    """What one step removes: one block (BlockPruner) or the remaining blocks of one layer."""

    name: str
    blocks: tuple[Block, ...]
    index: int  # position in the official candidate order: the tie-break
    params: int

    @property
    def positions(self) -> frozenset[int]:
        return frozenset(position(b) for b in self.blocks)

    @property
    def first(self) -> int:
        return min(self.positions)


def block_units(n_layers: int, block_type: str, present: set[int], params: dict[Block, int]) -> list[Unit]:
    """Candidates in the official order: ('attn', i) for all i, then ('mlp', i)."""
    kinds = {"mix": (ATTN, MLP), "attn": (ATTN,), "mlp": (MLP,)}[block_type]
    units = []
    for kind in kinds:
        for i in range(n_layers):
            if position((i, kind)) in present:
                units.append(Unit(block_name((i, kind)), ((i, kind),), len(units), params.get((i, kind), 0)))
    return units


def layer_units(n_layers: int, present: set[int], params: dict[Block, int],
                barriers: tuple[int, int] = (0, 0)) -> list[Unit]:
    """Whole-layer candidates (the blocks a layer still has); `barriers` excludes the first/last layers (SLEB)."""
    units = []
    for i in range(barriers[0], n_layers - barriers[1]):
        blocks = tuple(b for b in ((i, ATTN), (i, MLP)) if position(b) in present)
        if blocks:
            units.append(Unit(f"layer {i}", blocks, len(units), sum(params.get(b, 0) for b in blocks)))
    return units
