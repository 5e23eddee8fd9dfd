"""Student responses for ADPA: batched greedy generation on the prompts of a preference file.

Writes a copy of the preference jsonl with the student's response in its own `student_response`
column (the released ADPA code overwrote `rejected` with it, so text and labels disagreed), atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from compress.checkpoint.atomic import atomic_file, check_output_file
from compress.data.preference import PreferenceData
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


def is_generated(path: Path) -> bool:
    """True when `path` looks like a file this module wrote: its first line is a JSON object with a
    `student_response` (`--force` replaces only such a file)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline(1 << 20)
        rec = json.loads(first)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(rec, dict) and "student_response" in rec


def check_generated_output(output: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]],
                           force: bool = False) -> Path:
    """Validate `-o` before any work: a file, not an input nor inside one, replaced only with `force`
    and only when it is an earlier output of this command; takes the output's lock."""
    return check_output_file(output, inputs, force, is_ours=is_generated)


def write_generated(data: PreferenceData, responses: list[str], output: str | os.PathLike[str],
                    force: bool = False, inputs: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Copy the kept records of `data` with `student_response` added, written atomically."""
    lines = Path(data.path).read_text(encoding="utf-8").splitlines()
    with atomic_file(output, [data.path, *inputs], force, is_ours=is_generated) as f:
        for ex, resp in zip(data.examples, responses, strict=True):
            rec = json.loads(lines[ex.line - 1])
            rec["student_response"] = resp
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return Path(output)


def run_generate(student: str, run, force: bool = False) -> dict[str, Any]:
    """`compress distill generate`: the student's response to every prompt of `run.data` (a GenerateRun)."""
    from compress import progress
    from compress.data.preference import read_preference
    from compress.distill.forward import distill_device
    from compress.model import load

    check_temperature(run.temperature)
    check_generated_output(run.output, [student, run.data], force)
    model, tok = load(student, distill_device(run.device), run.dtype)
    ds = read_preference(run.data, tok, run.max_length, run.max_prompt_length, run.long_prompt, run.limit)
    with progress.progress_bar("generate", len(ds.examples)) as adv:
        resp = generate_responses(model, tok, [ex.prompt for ex in ds.examples], run.max_new_tokens, run.batch_size,
                                  run.temperature, run.seed, adv)
    path = write_generated(ds, resp, run.output, force, inputs=(student,))
    return {"output": str(path), "pairs": len(resp), "skipped_long_prompts": ds.skipped_long}
