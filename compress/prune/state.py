"""Search state saved after every step, so that `--resume` continues an interrupted search.

The file lives beside the output folder (`OUT.prune-state.json`; the output itself only appears
atomically at the end) and carries a fingerprint of everything the result depends on:

- the model: its config, its tensors' names, shapes and dtypes, and the sha256 of its weight files
  (so another model of the same shapes - a fine-tune, another seed - is refused; hashing costs about
  0.3 CPU seconds for SmolLM2-135M's 269 MB, a few seconds per GB, against hours of search);
- the calibration tokens (which cover the data, field, window length, sample and seed);
- every option that changes the result (`PruneConfig.fingerprint`: all but how many removals are
  kept and how they are written).

A file whose fingerprint differs is refused with one line naming what differs. The state is written
to a temporary file in the same folder and renamed over the old one, so an interruption or a full
disk leaves the previous state intact and no partial file.
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

VERSION = 2


def state_path(output: str | os.PathLike[str]) -> Path:
    out = Path(output)
    return out.parent / f"{out.name}.prune-state.json"


def model_fingerprint(ckpt: Checkpoint) -> str:
    """sha256 over the config, every tensor's name, shape and dtype, and the weight files' own hash."""
    from compress.prune.maskfile import weights_hash

    h = hashlib.sha256()
    h.update(json.dumps(ckpt.config, sort_keys=True, default=str).encode())
    for name in sorted(ckpt.names()):
        info = ckpt.info(name)
        h.update(f"{name}:{tuple(info.shape)}:{info.dtype}".encode())
    h.update(weights_hash(ckpt.path).encode())
    return h.hexdigest()[:16]


def tokens_fingerprint(windows: torch.Tensor) -> str:
    return hashlib.sha256(windows.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def fingerprint(ckpt: Checkpoint, windows: torch.Tensor, options: dict[str, Any]) -> dict[str, Any]:
    return {"model": model_fingerprint(ckpt), "calibration": tokens_fingerprint(windows),
            "windows": list(windows.shape), "settings": options}


def save_state(path: Path, fp: dict[str, Any], search_state: dict[str, Any]) -> None:
    """Write atomically (temp file + fsync + rename, `checkpoint.atomic.replace_file`): an interruption
    or a full disk never leaves a broken or partial state; the previous state stays until the new one
    is complete, and a file-system error is one CompressError."""
    replace_file(path, json.dumps({"version": VERSION, "fingerprint": fp, "search": search_state}, default=str))


def load_state(path: Path, fp: dict[str, Any]) -> dict[str, Any]:
    """The saved search state; refuses a file made for another model, data or settings."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompressError(f"--resume: no search state at {path} (run without --resume to start)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise CompressError(f"--resume: {path} is not a search state file: delete it and start again") from None
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("search"), dict):
        raise CompressError(f"--resume: {path} is not a search state of this version: delete it and start again")
    old = data.get("fingerprint")
    old = old if isinstance(old, dict) else {}
    for key, what in (("model", "another model (or other weights)"), ("calibration", "other calibration data"),
                      ("windows", "other calibration data"), ("settings", "other settings")):
        if old.get(key) != fp.get(key):
            detail = ""
            if key == "settings" and isinstance(old.get(key), dict):
                diff = sorted(k for k in set(old[key]) | set(fp[key]) if old[key].get(k) != fp[key].get(k))
                detail = f" ({', '.join(diff)} differ)"
            raise CompressError(f"--resume: {path} was made for {what}{detail}: rerun with the same settings "
                                "or without --resume (and delete the file)")
    return data["search"]
