"""`compress.json`: how an output checkpoint was made (command or recipe, versions, inputs)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from compress.jsonsafe import dumps

PROVENANCE_FILE = "compress.json"


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_input(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Identify an input model folder (or file) by hashes of its small descriptive files."""
    p = Path(path)
    entry: dict[str, Any] = {"path": str(p.resolve())}
    if p.is_file():
        entry["size"] = p.stat().st_size
        return entry
    for key, name in (
        ("config_sha256", "config.json"),
        ("index_sha256", "model.safetensors.index.json"),
        ("provenance_sha256", PROVENANCE_FILE),
    ):
        if (p / name).is_file():
            entry[key] = file_sha256(p / name)
    if "index_sha256" not in entry and (p / "model.safetensors").is_file():
        # Single-file checkpoints have no index: hash the header (names, shapes, dtypes) instead.
        with open(p / "model.safetensors", "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            entry["header_sha256"] = hashlib.sha256(f.read(n)).hexdigest()
    return entry


def versions() -> dict[str, str]:
    """Versions of the packages that shape a checkpoint. A module already imported reports its own
    __version__; otherwise the installed distribution's metadata is read (importing transformers
    only to read its version would cost a merge about 2 s)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for mod in ("compress", "torch", "transformers", "safetensors"):
        try:
            out[mod] = sys.modules[mod].__version__ if mod in sys.modules else metadata.version(mod)
        except Exception:  # noqa: BLE001
            out[mod] = "unknown"
    return out


def write_provenance(folder: str | os.PathLike[str], *, inputs: list[str] | tuple[str, ...] = (),
                     command: str | None = None, recipe: dict[str, Any] | None = None,
                     extra: dict[str, Any] | None = None) -> Path:
    record: dict[str, Any] = {
        "tool": "compress",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "versions": versions(),
        "inputs": [describe_input(i) for i in inputs],
    }
    if recipe is not None:
        record["recipe"] = recipe
    if extra:
        record.update(extra)
    path = Path(folder) / PROVENANCE_FILE
    path.write_text(dumps(record, indent=2) + "\n")
    return path
