"""Search state saved after every step, so that `--resume` continues an interrupted search.

The file lives beside the output folder (`OUT.prune-state.json`; the output itself only appears
atomically at the end) and carries a fingerprint of everything the result depends on: the model
(config and tensor shapes), the calibration tokens, and the search settings. A file whose
fingerprint differs is refused. Exact searches (`naive` and `fast`) share a fingerprint since they
give the identical sequence; `lazy` does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from compress.checkpoint.atomic import replace_file
from compress.checkpoint.reader import Checkpoint
from compress.errors import CompressError

VERSION = 1


def state_path(output: str | os.PathLike[str]) -> Path:
    out = Path(output)
    return out.parent / f"{out.name}.prune-state.json"


def model_fingerprint(ckpt: Checkpoint) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(ckpt.config, sort_keys=True, default=str).encode())
    for name in sorted(ckpt.names()):
        info = ckpt.info(name)
        h.update(f"{name}:{tuple(info.shape)}:{info.dtype}".encode())
    return h.hexdigest()[:16]


def tokens_fingerprint(windows: torch.Tensor) -> str:
    return hashlib.sha256(windows.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def fingerprint(ckpt: Checkpoint, windows: torch.Tensor, settings: dict[str, Any]) -> dict[str, Any]:
    return {"model": model_fingerprint(ckpt), "calibration": tokens_fingerprint(windows),
            "windows": list(windows.shape), "settings": settings}


def save_state(path: Path, fp: dict[str, Any], search_state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename): an interruption never leaves a broken state."""
    replace_file(path, json.dumps({"version": VERSION, "fingerprint": fp, "search": search_state}, default=str))


def load_state(path: Path, fp: dict[str, Any]) -> dict[str, Any]:
    """The saved search state; refuses a file made for another model, data or settings."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompressError(f"--resume: no search state at {path} (run without --resume to start)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CompressError(f"--resume: {path} is not a search state file: delete it and start again") from None
    if not isinstance(data, dict) or data.get("version") != VERSION or "search" not in data:
        raise CompressError(f"--resume: {path} is not a search state of this version: delete it and start again")
    old = data.get("fingerprint", {})
    for key, what in (("model", "another model"), ("calibration", "other calibration data"),
                      ("windows", "other calibration data"), ("settings", "other settings")):
        if old.get(key) != fp.get(key):
            detail = ""
            if key == "settings":
                diff = sorted(k for k in set(old.get(key, {})) | set(fp[key]) if old.get(key, {}).get(k) != fp[key].get(k))
                detail = f" ({', '.join(diff)} differ)"
            raise CompressError(f"--resume: {path} was made for {what}{detail}: rerun with the same settings "
                                "or without --resume (and delete the file)")
    return data["search"]
