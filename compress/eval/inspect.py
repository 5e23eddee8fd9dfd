"""`compress inspect`: what a model folder holds - family, layers, blocks, parameters by kind, dtypes,
size on disk, tied embeddings, the block map - read from its config and tensor headers (no weights
loaded). A `compress prune --export mask` folder reports its base with the removed blocks taken out.
"""

from __future__ import annotations

import os
from typing import Any

from compress.arch import block_map_text, summarize
from compress.checkpoint.hashing import is_mask_folder
from compress.checkpoint.reader import Checkpoint


def inspect(model: str | os.PathLike[str]) -> dict[str, Any]:
    """Family, layers, blocks, parameters by kind, dtype, size on disk, tied embeddings, block map."""
    if is_mask_folder(model):
        from compress.prune.maskfile import inspect_mask

        return inspect_mask(model, inspect)
    ckpt = Checkpoint(model)
    s = summarize(ckpt)
    cfg = ckpt.config
    return {
        "path": str(ckpt.path),
        "family": s.family.name,
        "model_type": cfg.get("model_type"),
        "architectures": ckpt.architectures,
        "layers": s.layers,
        "hidden_size": cfg.get("hidden_size"),
        "vocab_size": cfg.get("vocab_size"),
        "blocks": {"attn": sum(s.blocks["attn"]), "mlp": sum(s.blocks["mlp"]), "total": s.block_count()},
        "block_map": block_map_text(s),
        "parameters": s.total_params,
        "parameters_by_kind": s.params_by_kind,
        "dtypes": s.dtypes,
        "tied_embeddings": s.tied_embeddings,
        "size_on_disk": s.size_on_disk,
        "format": ckpt.format,
        "shards": len(ckpt.files()),
        "chat_template": any(
            p.name == "chat_template.jinja" or (p.name == "tokenizer_config.json" and "chat_template" in p.read_text())
            for p in ckpt.side_files()
        ),
        "pruned": "compress_pruned_blocks" in cfg,
    }
