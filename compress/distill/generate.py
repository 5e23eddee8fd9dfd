"""Student responses for ADPA: batched greedy generation on the prompts of a preference file.

Writes a copy of the preference jsonl with the student's response in its own `student_response`
column (the released ADPA code overwrote `rejected` with it, so text and labels disagreed), atomically.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from compress.data.preference import PreferenceData
from compress.errors import CompressError


@torch.no_grad()
def generate_responses(model: torch.nn.Module, tokenizer, prompts: list[list[int]], max_new_tokens: int = 256,
                       batch_size: int = 8, temperature: float = 0.0, seed: int = 42, advance=None) -> list[str]:
    """Generate one response per prompt (token ids), left-padded batches; greedy when temperature is 0."""
    if not math.isfinite(temperature) or temperature < 0:
        raise CompressError(f"the sampling temperature must be a finite number >= 0, got {temperature}")
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


def check_generated_output(output: str | os.PathLike[str], inputs: list[str], force: bool = False) -> Path:
    """Validate the output jsonl before any generation: not a folder, not an input or inside one, not an
    existing file without `force`; its folder can be made."""
    # TODO(safety): use compress.checkpoint.atomic.check_output_file / atomic_file once they are on main.
    out = Path(output).resolve()
    for inp in inputs:
        src = Path(inp).resolve()
        if out == src or src in out.parents:
            raise CompressError(f"output {output} is or lies inside the input {inp}: choose another file")
    if out.is_dir():
        raise CompressError(f"output {output} is a folder: give a file name")
    if out.exists() and not force:
        raise CompressError(f"output {output} exists: pass --force to overwrite it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CompressError(f"cannot create {out.parent}: {e.strerror}") from None
    return out


def write_generated(data: PreferenceData, responses: list[str], output: str | os.PathLike[str],
                    force: bool = False) -> Path:
    """Copy the kept records of `data` with `student_response` added, written atomically: on any failure
    (a full disk included) the temporary is removed and `output` is left as it was."""
    out = check_generated_output(output, [data.path], force)
    lines = Path(data.path).read_text(encoding="utf-8").splitlines()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for ex, resp in zip(data.examples, responses, strict=True):
                rec = json.loads(lines[ex.line - 1])
                rec["student_response"] = resp
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or str(e)
            raise CompressError(f"cannot write {output} ({what}); nothing was written") from None
        raise
    return Path(output)


def run_generate(student: str, run, force: bool = False) -> dict[str, Any]:
    """`compress distill generate`: the student's response to every prompt of `run.data` (a GenerateRun)."""
    from compress import progress
    from compress.data.preference import read_preference
    from compress.distill.forward import distill_device
    from compress.model import load

    check_generated_output(run.output, [student, run.data], force)
    model, tok = load(student, distill_device(run.device), run.dtype)
    ds = read_preference(run.data, tok, run.max_length, run.max_prompt_length, run.long_prompt, run.limit)
    with progress.progress_bar("generate", len(ds.examples)) as adv:
        resp = generate_responses(model, tok, [ex.prompt for ex in ds.examples], run.max_new_tokens, run.batch_size,
                                  run.temperature, run.seed, adv)
    path = write_generated(ds, resp, run.output, force)
    return {"output": str(path), "pairs": len(resp), "skipped_long_prompts": ds.skipped_long}
