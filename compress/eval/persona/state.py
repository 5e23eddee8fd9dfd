"""The work of a persona run saved as it goes (`OUT.persona-state.jsonl` beside the output), so that
`--resume` continues an interrupted run: finished dialogue chunks and judge answers, each under a key
that hashes everything its result depends on (model or judge weights, cards, topic, decoding, prompt).
An entry whose key does not match is simply not used, so a changed setting recomputes only what it
changes. The file is removed when the output is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.progress import warn


def state_path(output: str | os.PathLike[str]) -> Path:
    out = Path(output)
    return out.parent / f"{out.name}.persona-state.jsonl"


def key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


class State:
    """A key -> value store appended to a JSONL file."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.values: dict[str, Any] = {}
        if resume:
            if not path.is_file():
                raise CompressError(f"--resume: no persona state at {path} (run without --resume to start)")
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.values[rec["key"]] = rec["value"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by the interruption
        elif path.exists():
            warn(f"{path} holds an earlier persona run: starting again (pass --resume to continue it)")
            path.unlink()

    def get(self, k: str) -> Any:
        return self.values.get(k)

    def put(self, k: str, value: Any) -> None:
        self.values[k] = value
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": k, "value": value}, ensure_ascii=False) + "\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
