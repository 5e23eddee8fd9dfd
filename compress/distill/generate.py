"""Student responses for ADPA: batched greedy generation on the prompts of a preference file.

Writes a copy of the preference jsonl with the student's response in its own `student_response`
column (the released ADPA code overwrote `rejected` with it, so text and labels disagreed), atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compress.checkpoint.atomic import atomic_file, check_output_file
from compress.data.preference import PreferenceData
from compress.model.generate import check_temperature, generate_responses  # noqa: F401 (re-exported)


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
