"""The one content hash of a model folder: what `compress eval` records, what a `--export mask` folder
checks its base against, what a teacher cache checks its teacher against.

    file digest  d_f = sha256(contents of f)
    model hash   H   = sha256( concat over f sorted by name of  f.name + "\\0" + d_f + "\\n" )

over every weight file of the checkpoint (safetensors shards or a .bin) and config.json. A mask
folder (`compress prune --export mask`: `pruning.json`, no config.json, no weights) is hashed by
its pruning.json, which records its base's own model hash.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from compress.checkpoint.reader import Checkpoint

MASK_FILE = "pruning.json"
CHUNK = 1 << 22

__all__ = ["MASK_FILE", "files_stat", "hashed_files", "is_mask_folder", "model_hash", "weights_hash"]


def is_mask_folder(path: str | os.PathLike[str]) -> bool:
    """A folder written by `compress prune --export mask` (pruning.json, no config.json of its own)."""
    p = Path(path)
    return p.is_dir() and (p / MASK_FILE).is_file() and not (p / "config.json").is_file()


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's contents, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def combine(digests: dict[str, str]) -> str:
    """sha256 over `name \\0 digest \\n` lines, sorted by name."""
    total = hashlib.sha256()
    for name in sorted(digests):
        total.update(f"{name}\0{digests[name]}\n".encode())
    return total.hexdigest()


def hashed_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files the model hash covers: every weight file and config.json, sorted."""
    ckpt = Checkpoint(path)
    cfg = Path(path) / "config.json"
    return sorted({Path(f) for f in ckpt.files()} | ({cfg} if cfg.is_file() else set()))


def model_hash(path: str | os.PathLike[str]) -> dict[str, Any]:
    """{"sha256": H, "files": {name: d_f}} of a model folder (or a mask folder: of its pruning.json)."""
    if is_mask_folder(path):
        per = {MASK_FILE: file_digest(Path(path) / MASK_FILE)}
    else:
        per = {f.name: file_digest(f) for f in hashed_files(path)}
    return {"sha256": combine(per), "files": per}


def weights_hash(path: str | os.PathLike[str]) -> str:
    """H alone: the hex digest of `model_hash`."""
    return model_hash(path)["sha256"]


def files_stat(path: str | os.PathLike[str]) -> dict[str, list[int]]:
    """{file name: [size, mtime_ns]} of the files the model hash covers: while these are unchanged
    the folder can be taken as unchanged without reading its weights again (a 7B model is ~15 GB)."""
    out = {}
    for f in hashed_files(path):
        st = f.stat()
        out[f.name] = [st.st_size, st.st_mtime_ns]
    return out
