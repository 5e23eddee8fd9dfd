"""No-data default: calibration text sampled from the model itself.

Each window starts from the BOS token (or EOS where there is none) and is sampled with
temperature 1 and nucleus 0.95 under a fixed seed; end-of-sequence is suppressed so every window is
exactly `seq_len` tokens. The text follows the model's own distribution, which is what a
perplexity-guided search needs when the user has no data of their own.
"""

from __future__ import annotations

import torch

from compress.errors import CompressError


@torch.no_grad()
def generate_windows(model, tokenizer, samples: int, seq_len: int, seed: int = 0, batch_size: int = 8,
                     top_p: float = 0.95, progress=None) -> torch.Tensor:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise CompressError("the tokenizer has neither BOS nor EOS: pass calibration text with --data")
    device = next(model.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for b0 in range(0, samples, batch_size):
            b = min(batch_size, samples - b0)
            ids = torch.full((b, 1), start, dtype=torch.long, device=device)
            res = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                top_p=top_p, min_new_tokens=seq_len - 1, max_new_tokens=seq_len - 1,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start,
            )
            out.append(res.cpu())
            if progress is not None:
                progress(b)
    return torch.cat(out)
