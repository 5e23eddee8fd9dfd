"""N seeded samples per prompt from one causal LM, in left-padded batches, cut at stop strings.

Each call re-seeds torch's generator from its own `seed`, so the samples of a prompt shard do not
depend on what ran before it (a resumed build samples exactly what an uninterrupted one would).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from compress.errors import CompressError


@dataclass
class Sample:
    text: str
    tokens: int  # generated tokens (end token and anything after a stop string excluded)
    finished: bool  # ended by the end token or a stop string (False: cut at max_new_tokens)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first occurrence of any stop string, and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def end_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """Token ids that end a response: the generation config's EOS ids and the tokenizer's EOS."""
    ids: list[int] = []
    for src in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if src is not None:
            ids.extend([src] if isinstance(src, int) else list(src))
    return sorted(set(ids))


def check_sampling(n: int, temperature: float, top_p: float) -> None:
    if temperature < 0:
        raise CompressError(f"--temperature {temperature}: use 0 (greedy) or a positive number")
    if temperature == 0 and n > 1:
        raise CompressError(f"--temperature 0 is greedy: the {n} samples of a prompt would be identical (use --n 1 "
                            "or a positive temperature)")
    if not 0 < top_p <= 1:
        raise CompressError(f"--top-p {top_p}: must be in (0, 1]")


@torch.no_grad()
def sample(model: torch.nn.Module, tokenizer, prompts: list[list[int]], n: int, *, temperature: float = 0.8,
           top_p: float = 0.95, max_new_tokens: int = 256, stop: tuple[str, ...] = (), batch_size: int = 8,
           seed: int = 0) -> tuple[list[list[Sample]], dict[str, float]]:
    """`n` responses per prompt (token ids); returns them and {responses, tokens, seconds, cpu_seconds}."""
    check_sampling(n, temperature, top_p)
    dev = next(model.parameters()).device
    eos = end_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    rows = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
    out: list[list[Sample]] = [[] for _ in prompts]
    t0, c0, ntok = time.perf_counter(), time.process_time(), 0
    torch.manual_seed(seed)
    kw = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 else {"do_sample": False}
    if stop:
        kw.update(stop_strings=list(stop), tokenizer=tokenizer)
    for b0 in range(0, len(rows), batch_size):
        chunk = rows[b0: b0 + batch_size]
        t = max(len(p) for _, p in chunk)
        ids = torch.full((len(chunk), t), pad, dtype=torch.long)
        att = torch.zeros((len(chunk), t), dtype=torch.long)
        for j, (_, p) in enumerate(chunk):
            ids[j, t - len(p):] = torch.tensor(p)
            att[j, t - len(p):] = 1
        seqs = model.generate(input_ids=ids.to(dev), attention_mask=att.to(dev), max_new_tokens=max_new_tokens,
                              pad_token_id=pad, eos_token_id=eos or None, **kw)
        for (i, _), row in zip(chunk, seqs[:, t:].tolist(), strict=True):
            ended = next((k for k, tok in enumerate(row) if tok in eos), None)
            row = row[:ended] if ended is not None else row
            text, stopped = cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), stop)
            if stopped:
                row = tokenizer(text, add_special_tokens=False)["input_ids"]
            ntok += len(row)
            out[i].append(Sample(text.strip(), len(row), ended is not None or stopped))
    stats = {"responses": len(rows), "tokens": ntok, "seconds": time.perf_counter() - t0,
             "cpu_seconds": time.process_time() - c0}
    return out, stats
