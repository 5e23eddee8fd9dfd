"""Perplexity, the WikiText-2 protocol of BlockPruner and SLEB.

The text (for WikiText-2: the dataset's rows joined with "\\n\\n"; see `compress.data.text`) is
tokenized once and cut into non-overlapping windows of `seq_len` (remainder dropped, no context
carried over), each window predicting its tokens 2..seq_len with no KV cache.
PPL = exp(mean over windows of the per-window mean NLL), the NLL accumulated in fp32 from chunked
logits. With no masked tokens this equals exp(total NLL / total predicted tokens).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from compress.data.text import describe_format, load_windows
from compress.errors import CompressError
from compress.model.device import dtype_name
from compress.model.load import load
from compress.model.logits import decoder_of, token_nll
from compress.progress import progress_bar


@dataclass
class PplResult:
    ppl: float
    nll: float
    windows: int
    seq_len: int
    tokens: int  # predicted tokens

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def window_nlls(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Mean NLL of each window, fp32, shape [N]."""
    device = next(model.parameters()).device
    body = decoder_of(model)
    out = []
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start:start + batch_size].to(device)
        hidden = body(input_ids=ids, use_cache=False).last_hidden_state
        out.append(token_nll(model, hidden, ids).mean(dim=1).cpu())
        if progress is not None:
            progress(ids.shape[0])
    return torch.cat(out)


def perplexity_from_nlls(nlls: torch.Tensor, seq_len: int) -> PplResult:
    nll = float(nlls.double().mean())
    return PplResult(ppl=math.exp(nll), nll=nll, windows=int(nlls.numel()), seq_len=seq_len,
                     tokens=int(nlls.numel()) * (seq_len - 1))


def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4,
               progress: Callable[[int], None] | None = None) -> PplResult:
    return perplexity_from_nlls(window_nlls(model, windows, batch_size, progress), windows.shape[1])


def file_perplexity(model: str | os.PathLike[str] | torch.nn.Module, data: str | os.PathLike[str], *,
                    tokenizer=None, seq_len: int = 2048, batch_size: int = 4, max_windows: int | None = None,
                    field: str | None = None, text_format: str = "auto", device: str = "cpu",
                    dtype: str = "auto") -> dict[str, Any]:
    """Perplexity of a model (a folder, or a loaded model with its tokenizer) on a data file: the
    first `max_windows` windows (all when None), with a progress bar. `compress.perplexity`."""
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise CompressError("pass the tokenizer with a loaded model")
        m, tok = model, tokenizer
    else:
        m, tok = load(model, device, dtype)
    if max_windows is not None and max_windows <= 0:
        raise CompressError(f"--max-windows must be positive, got {max_windows}")
    windows = load_windows(data, tok, seq_len, field=field, format=text_format)
    total = windows.shape[0]
    windows = windows[:max_windows]
    with progress_bar("perplexity", windows.shape[0]) as advance:
        res = perplexity(m, windows, batch_size, advance)
    out: dict[str, Any] = res.as_dict()
    out.update({"data": str(data), "text_format": describe_format(data, text_format, field), "windows_available": total,
                "dtype": dtype_name(next(m.parameters()).dtype), "device": str(next(m.parameters()).device)})
    if not isinstance(model, torch.nn.Module):
        out["model"] = str(model)
    return out
