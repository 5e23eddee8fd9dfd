"""Model forward passes restricted to response tokens (no [B, T, V] logits over prompt positions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from compress.data.preference import SlotBatch
from compress.errors import CompressError
from compress.model.logits import decoder_of, head_logits


def distill_device(device: str) -> torch.device:
    """The device of a distill command: cpu or cuda (a GPU asked for and absent is an error, never a CPU run)."""
    from compress.model.device import parse_device

    try:
        dev = parse_device(device)
    except CompressError as e:
        raise CompressError(f"--device: {e}") from None
    if dev.type not in ("cpu", "cuda"):
        raise CompressError(f"--device {device}: compress distill runs on cpu or cuda")
    return dev


def response_hidden(model: torch.nn.Module, batch: SlotBatch) -> torch.Tensor:
    """Final hidden states at the positions that predict each response token, row-major: [N, H]."""
    body = decoder_of(model)
    dev = next(model.parameters()).device
    out = body(input_ids=batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev), use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden[:, :-1][batch.response_mask[:, 1:].to(dev)]


def response_logits(model: torch.nn.Module, batch: SlotBatch) -> torch.Tensor:
    """fp32 logits predicting each response token [N, V] (row n predicts `batch.targets[n]`)."""
    return head_logits(model, response_hidden(model, batch))


ROWS_PER_CHUNK = 256  # response rows per LM-head chunk: 256 x 49k vocab x 4 B = 50 MB


def response_token_logps(model: torch.nn.Module, batch: SlotBatch, rows_per_chunk: int = ROWS_PER_CHUNK) -> torch.Tensor:
    """log π(y_n | prefix) of each response token [N] (fp32), without keeping [N, V] logits: the LM head and
    log-softmax run chunk by chunk, and under autograd each chunk is recomputed in the backward pass
    (activation checkpointing), so only one chunk's logits exist at a time. Costs one more LM-head
    forward; saves three [N, V] fp32 tensors (logits, log-softmax, their gradient)."""
    hidden = response_hidden(model, batch)
    targets = batch.targets.to(hidden.device)

    def chunk(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(head_logits(model, h), y, reduction="none")

    grad = torch.is_grad_enabled()
    parts = []
    for a in range(0, hidden.shape[0], rows_per_chunk):
        h, y = hidden[a: a + rows_per_chunk], targets[a: a + rows_per_chunk]
        parts.append(checkpoint(chunk, h, y, use_reentrant=False) if grad else chunk(h, y))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def sequence_sums(token_values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-sequence sums [B] of row-major per-token values [N] (response lengths [B])."""
    dev = token_values.device
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=dev), lengths.to(dev))
    return torch.zeros(len(lengths), device=dev, dtype=token_values.dtype).index_add(0, seq, token_values)


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Summed response log-probabilities per sequence [B] from row-major response logits [N, V]."""
    tok = -F.cross_entropy(logits.float(), targets.to(logits.device), reduction="none")
    return sequence_sums(tok, lengths)
