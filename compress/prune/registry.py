"""What `compress prune` offers, by name: methods, searches, criteria, block types and export modes.

The command line's choices, the config's `Literal` types and the code's dispatch all read these
tables, so a name exists in one place. This module imports nothing heavy (no torch): the CLI builds
its options from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """A pruning method: what one step removes and how the candidates are ranked."""

    name: str
    help: str
    unit: str  # "block": one attention or MLP block per step; "layer": a whole decoder layer per step
    barriers: tuple[int, int] = (0, 0)  # first / last layers that are never candidates
    one_shot: bool = False  # ranked once by block influence (ShortGPT) instead of a greedy search


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("blockpruner", "greedy removal of attention / MLP blocks by calibration perplexity (BlockPruner)",
           "block"),
    Method("shortgpt", "whole layers ranked once by Block Influence, 1 - cos(layer in, layer out) (ShortGPT)",
           "layer", one_shot=True),
    Method("sleb", "greedy removal of whole layers by calibration perplexity, first and last layers kept (SLEB)",
           "layer", barriers=(1, 1)),
    Method("layer", "BlockPruner's greedy search over whole layers, every layer a candidate", "layer"),
)}

BLOCK_TYPES: dict[str, str] = {
    "mix": "attention and MLP blocks",
    "attn": "attention blocks only",
    "mlp": "MLP blocks only",
}

SEARCHES: dict[str, str] = {
    "fast": "exact, the residual stream cached at every block boundary and losing candidates abandoned early",
    "naive": "exact, BlockPruner's own loop running the whole model for every candidate",
    "lazy": "approximate, only the --lazy-m best candidates of the previous step re-scored",
}
EXACT_SEARCHES = ("fast", "naive")  # give the identical removal sequence


def ppl_of_loss(loss: float, tokens: int) -> float:
    """PPL = exp(L / tokens), L the summed token NLL; inf when it overflows."""
    x = loss / tokens
    return math.exp(x) if x < 700 else math.inf


@dataclass(frozen=True)
class Criterion:
    """How a candidate is ranked from its summed calibration loss L (lower key = removed first).

    Every key is non-decreasing in L, so a candidate whose partial loss already ranks below the best
    complete one can be abandoned without changing the choice.
    """

    name: str
    help: str
    key: Callable[[float, int, int, float], float]  # (loss, candidate params, tokens, ppl before the step)


CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("ppl", "the calibration perplexity with the candidate removed (the paper's)",
              lambda loss, params, tokens, ppl_s: loss),
    Criterion("ppl-per-param", "the perplexity increase per parameter removed, (PPL(S + c) - PPL(S)) / params(c)",
              lambda loss, params, tokens, ppl_s: (ppl_of_loss(loss, tokens) - ppl_s) / max(params, 1)),
)}

EXPORTS: dict[str, str] = {
    "physical": "a smaller checkpoint: removed blocks' tensors dropped, empty layers deleted",
    "zeroed": "the same architecture with the removed blocks' output projections zeroed (no speed gain)",
    "mask": "pruning.json + a reference to MODEL, re-applied at load (no weights written)",
}


def describe(table: dict) -> str:
    """'a: help; b: help' of a registry, for --help texts."""
    return "; ".join(f"{k}: {v.help if hasattr(v, 'help') else v}" for k, v in table.items())
