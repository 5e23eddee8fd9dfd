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
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for b0 in range(0, samples, batch_size):
        b = min(batch_size, samples - b0)
        ids = torch.full((b, 1), start, dtype=torch.long, device=device)
        cache = None
        for _ in range(seq_len - 1):
            res = model(input_ids=ids if cache is None else ids[:, -1:], past_key_values=cache, use_cache=True)
            cache = res.past_key_values
            logits = res.logits[:, -1].float()
            if tokenizer.eos_token_id is not None:
                logits[:, tokenizer.eos_token_id] = -float("inf")
            probs = torch.softmax(logits, -1).cpu()
            sorted_p, order = probs.sort(-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < top_p
            sorted_p = sorted_p * keep
            choice = torch.multinomial(sorted_p, 1, generator=gen)
            nxt = order.gather(-1, choice).to(device)
            ids = torch.cat([ids, nxt], dim=1)
        out.append(ids.cpu())
        if progress is not None:
            progress(b)
    return torch.cat(out)
