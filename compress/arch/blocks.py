"""Block maps and parameter accounting of a checkpoint (config + tensor names; no weights read)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from compress.arch.families import ATTN, BLOCK_KINDS, MLP, Family, block_of, family_for, kind_of, num_layers
from compress.checkpoint.reader import Checkpoint
from compress.errors import CompressError

PRUNED_KEY = "compress_pruned_blocks"


def pruned_blocks(config: dict[str, Any]) -> dict[str, list[int]]:
    """Blocks a `compress prune` checkpoint has removed from its (renumbered) layers."""
    raw = config.get(PRUNED_KEY) or {}
    bad = not isinstance(raw, dict) or any(
        not isinstance(raw.get(k, []), list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in raw.get(k, []))
        for k in BLOCK_KINDS)
    if bad:
        raise CompressError(f"config.json: {PRUNED_KEY} must be an object of layer-index lists under 'attn' and 'mlp'")
    return {kind: sorted(raw.get(kind, [])) for kind in BLOCK_KINDS}


@dataclass
class ModelSummary:
    family: Family
    layers: int
    blocks: dict[str, list[bool]]  # kind -> per layer, present?
    params_by_kind: dict[str, int]
    params_by_block: dict[tuple[int, str], int]
    total_params: int
    tied_embeddings: bool
    dtypes: dict[str, int]
    size_on_disk: int

    def block_count(self) -> int:
        return sum(sum(v) for v in self.blocks.values())


def summarize(ckpt: Checkpoint) -> ModelSummary:
    cfg = ckpt.config
    names = ckpt.names()
    fam = family_for(cfg, names)
    n_layers = num_layers(cfg)
    by_kind: Counter[str] = Counter()
    by_block: Counter[tuple[int, str]] = Counter()
    dtypes: Counter[str] = Counter()
    for info in ckpt.infos():
        by_kind[kind_of(fam, info.name)] += info.numel
        dtypes[str(info.dtype).replace("torch.", "")] += info.numel
        blk = block_of(fam, info.name)
        if blk is not None:
            by_block[blk] += info.numel
    tied = bool(cfg.get("tie_word_embeddings", False))
    if tied and f"{fam.head}.weight" in ckpt:
        # A tied head stored twice is still one set of parameters.
        by_kind["head"] -= ckpt.info(f"{fam.head}.weight").numel
    removed = pruned_blocks(cfg)
    blocks = {kind: [i not in removed[kind] for i in range(n_layers)] for kind in BLOCK_KINDS}
    for (layer, kind), _ in by_block.items():
        if layer >= n_layers:
            blocks[kind].extend([False] * (layer + 1 - len(blocks[kind])))
    return ModelSummary(
        family=fam,
        layers=n_layers,
        blocks=blocks,
        params_by_kind={k: v for k, v in by_kind.items() if v},
        params_by_block=dict(by_block),
        total_params=sum(by_kind.values()),
        tied_embeddings=tied,
        dtypes=dict(dtypes),
        size_on_disk=ckpt.size_on_disk(),
    )


def block_map_text(summary: ModelSummary) -> str:
    """One character per layer: A = attention only, M = MLP only, B = both, . = neither."""
    out = []
    for a, m in zip(summary.blocks[ATTN], summary.blocks[MLP], strict=True):
        out.append("B" if a and m else "A" if a else "M" if m else ".")
    return "".join(out)
