"""Token NLL from final hidden states, in chunks so [batch, seq, vocab] logits are never built."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROWS_PER_CHUNK = 2048  # hidden-state rows per LM-head call: 2048 x 49k vocab x 4 B = 400 MB


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body (embeddings, layers, final norm) of a *ForCausalLM model."""
    body = getattr(model, model.base_model_prefix, None)
    if body is None:
        raise TypeError(f"{type(model).__name__} has no base model")
    return body


def head_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """LM head (+ Gemma2/3 final logit soft-capping), in fp32."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def token_nll(model: torch.nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor,
              rows_per_chunk: int = ROWS_PER_CHUNK) -> torch.Tensor:
    """NLL of tokens 2..T given final (normed) hidden states [B, T, H]: returns [B, T-1] fp32."""
    b, t, h = hidden.shape
    hs = hidden[:, :-1].reshape(-1, h)
    targets = input_ids[:, 1:].reshape(-1).to(hidden.device)
    out = torch.empty(hs.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hs.shape[0], rows_per_chunk):
        end = min(start + rows_per_chunk, hs.shape[0])
        logits = head_logits(model, hs[start:end])
        out[start:end] = F.cross_entropy(logits, targets[start:end], reduction="none")
    return out.view(b, t - 1)
