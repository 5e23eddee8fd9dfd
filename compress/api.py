"""The Python API: the same functions the CLI calls."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from compress.arch import block_map_text, summarize
from compress.checkpoint.gguf import convert_gguf
from compress.checkpoint.reader import Checkpoint
from compress.checkpoint.writer import DEFAULT_MAX_SHARD
from compress.data.text import load_windows
from compress.distill.train import distill
from compress.errors import CompressError
from compress.eval.run import evaluate
from compress.merge import merge
from compress.model.device import dtype_name, parse_dtype
from compress.model.load import load
from compress.progress import progress_bar
from compress.prune.run import prune

__all__ = ["convert", "distill", "evaluate", "inspect", "load", "merge", "perplexity", "prune"]


def convert(gguf: str | os.PathLike[str], output: str | os.PathLike[str], dtype: str | torch.dtype = "bf16",
            force: bool = False, max_shard_size: int | str = DEFAULT_MAX_SHARD) -> Path:
    """GGUF file -> HF safetensors folder (dequantised to `dtype`, default bf16)."""
    return convert_gguf(gguf, output, parse_dtype(dtype, torch.bfloat16), force, max_shard_size)


def inspect(model: str | os.PathLike[str]) -> dict[str, Any]:
    """Family, layers, blocks, parameters by kind, dtype, size on disk, tied embeddings, block map."""
    from compress.prune.maskfile import inspect_mask, is_mask_folder

    if is_mask_folder(model):  # `compress prune --export mask`: the base's summary, its blocks removed
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


def perplexity(model: str | os.PathLike[str] | torch.nn.Module, data: str | os.PathLike[str], *,
               tokenizer=None, seq_len: int = 2048, batch_size: int = 4, max_windows: int | None = None,
               field: str | None = None, device: str = "cpu", dtype: str = "auto") -> dict[str, Any]:
    """Perplexity on a text file (WikiText-2 protocol); `model` is a folder or a loaded model."""
    from compress.eval.ppl import perplexity as _ppl

    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise CompressError("pass the tokenizer with a loaded model")
        m, tok = model, tokenizer
    else:
        m, tok = load(model, device, dtype)
    windows = load_windows(data, tok, seq_len, field=field)
    total = windows.shape[0]
    if max_windows is not None:
        if max_windows <= 0:
            raise CompressError(f"--max-windows must be positive, got {max_windows}")
        windows = windows[:max_windows]
    with progress_bar("perplexity", windows.shape[0]) as advance:
        res = _ppl(m, windows, batch_size, advance)
    out = res.as_dict()
    out.update({"data": str(data), "windows_available": total,
                "dtype": dtype_name(next(m.parameters()).dtype), "device": str(next(m.parameters()).device)})
    if not isinstance(model, torch.nn.Module):
        out["model"] = str(model)
    return out


