"""Parameter accounting as BlockPruner counts it (official `eval.py`):

    ratio = 1 − P_pruned / P_dense = (Σ_{b ∈ S} P_b) / P_dense

over ALL parameters of the model - embeddings and `lm_head` included, a tied head counted once -
with each block's parameters including its norms (for Llama2-7B: 12 MHA + 5 MLP blocks = 21.99%,
7 whole layers = 21.02%). P_dense is the model the search starts from (for an already pruned input,
its own parameter count).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from compress.arch import block_of, family_for, summarize
from compress.checkpoint.reader import Checkpoint

Block = tuple[int, str]


@dataclass(frozen=True)
class ParamCount:
    total: int  # every parameter, tied weights once
    blocks: dict[Block, int]  # (layer, kind) -> parameters of that block (norms included)

    def removed(self, blocks: Iterable[Block]) -> int:
        return sum(self.blocks.get(b, 0) for b in blocks)

    def ratio(self, blocks: Iterable[Block]) -> float:
        """Share of parameters removed by `blocks`."""
        return self.removed(blocks) / self.total


def checkpoint_params(ckpt: Checkpoint) -> ParamCount:
    """From a checkpoint's tensor shapes (no weights read)."""
    s = summarize(ckpt)
    return ParamCount(total=s.total_params, blocks=dict(s.params_by_block))


def config_params(config: Any) -> ParamCount:
    """From a config alone (dict or transformers config): the model is built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

    if not isinstance(config, PretrainedConfig):
        cfg_dict = dict(config)
        config = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    named = dict(model.named_parameters())  # shared (tied) parameters appear once
    fam = family_for(config.to_dict(), list(named))
    blocks: dict[Block, int] = {}
    for name, p in named.items():
        b = block_of(fam, name)
        if b is not None:
            blocks[b] = blocks.get(b, 0) + p.numel()
    return ParamCount(total=sum(p.numel() for p in named.values()), blocks=blocks)
