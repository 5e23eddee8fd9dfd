"""Perplexity, the WikiText-2 protocol of BlockPruner and SLEB (shared/specs/eval.md §1.1).

Rows joined with "\\n\\n", tokenized once, cut into non-overlapping windows of `seq_len` (remainder
dropped, no context carried over), each window predicting its tokens 2..seq_len with no KV cache.
PPL = exp(mean over windows of the per-window mean NLL), the NLL accumulated in fp32 from chunked
logits. With no masked tokens this equals exp(total NLL / total predicted tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from compress.model.logits import decoder_of, token_nll


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
