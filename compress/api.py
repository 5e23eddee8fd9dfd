"""The Python API: the same functions the CLI calls."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from compress.checkpoint.gguf import convert_gguf
from compress.checkpoint.writer import DEFAULT_MAX_SHARD
from compress.distill.train import distill
from compress.eval.inspect import inspect
from compress.eval.ppl import file_perplexity
from compress.eval.run import evaluate
from compress.merge import merge
from compress.model.device import parse_dtype
from compress.model.load import load
from compress.prune.run import prune

__all__ = ["convert", "distill", "evaluate", "inspect", "load", "merge", "perplexity", "prune"]


def convert(gguf: str | os.PathLike[str], output: str | os.PathLike[str], dtype: str | torch.dtype = "bf16",
            force: bool = False, max_shard_size: int | str = DEFAULT_MAX_SHARD) -> Path:
    """GGUF file -> HF safetensors folder (dequantised to `dtype`, default bf16)."""
    return convert_gguf(gguf, output, parse_dtype(dtype, torch.bfloat16), force, max_shard_size)


def perplexity(model: str | os.PathLike[str] | torch.nn.Module, data: str | os.PathLike[str], *,
               tokenizer=None, seq_len: int = 2048, batch_size: int = 4, max_windows: int | None = None,
               field: str | None = None, text_format: str = "auto", device: str = "cpu",
               dtype: str = "auto") -> dict[str, Any]:
    """Perplexity on a data file; `model` is a folder or a loaded model (then pass its tokenizer).

    `text_format` says how the file becomes text: `auto` (WikiText's `wiki.*.raw` files by the WikiText-2
    protocol, `.jsonl`/`.json` as records, any other file as written), `text` or `wikitext`. The
    result names it (`text_format`).
    """
    return file_perplexity(model, data, tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size,
                           max_windows=max_windows, field=field, text_format=text_format, device=device, dtype=dtype)
