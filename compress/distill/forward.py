"""Model forward passes restricted to response tokens (no [B, T, V] logits over prompt positions)."""

from __future__ import annotations

import torch

from compress.data.preference import SlotBatch
from compress.errors import CompressError
from compress.model.logits import decoder_of, head_logits


def distill_device(device: str) -> torch.device:
    """The device of a distill command: cpu or cuda (a GPU asked for and absent is an error, never a CPU run)."""
    from compress.model.device import parse_device

    dev = parse_device(device)
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


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Summed response log-probabilities per sequence [B] from row-major response logits [N, V]."""
    tok = -torch.nn.functional.cross_entropy(logits.float(), targets.to(logits.device), reduction="none")
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=logits.device), lengths.to(logits.device))
    return torch.zeros(len(lengths), device=logits.device, dtype=tok.dtype).index_add(0, seq, tok)
