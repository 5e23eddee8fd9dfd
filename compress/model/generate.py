"""Batched generation from token-id prompts: greedy, or seeded sampling (used by distill, fuse and eval)."""

from __future__ import annotations

import math

import torch

from compress.errors import CompressError


def check_temperature(temperature: float) -> None:
    if not math.isfinite(temperature) or temperature < 0:
        raise CompressError(f"--temperature {temperature}: use 0 (greedy) or a positive number")


@torch.no_grad()
def generate_responses(model: torch.nn.Module, tokenizer, prompts: list[list[int]], max_new_tokens: int = 256,
                       batch_size: int = 8, temperature: float = 0.0, seed: int = 42, advance=None) -> list[str]:
    """Generate one response per prompt (token ids), left-padded batches; greedy when temperature is 0."""
    check_temperature(temperature)
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: list[str] = []
    was = model.training
    model.eval()
    for b0 in range(0, len(prompts), batch_size):
        chunk = prompts[b0: b0 + batch_size]
        t = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), t), pad, dtype=torch.long)
        att = torch.zeros((len(chunk), t), dtype=torch.long)
        for i, p in enumerate(chunk):
            ids[i, t - len(p):] = torch.tensor(p)
            att[i, t - len(p):] = 1
        kwargs = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature, "top_p": 1.0}
        if temperature:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        seqs = model.generate(input_ids=ids.to(dev), attention_mask=att.to(dev), max_new_tokens=max_new_tokens,
                              pad_token_id=pad, eos_token_id=eos, **kwargs)
        for row in seqs[:, t:].tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        if advance:
            advance(len(chunk))
    model.train(was)
    return out
