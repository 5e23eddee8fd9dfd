"""Labels of model folders in tables and outputs."""

from __future__ import annotations

from pathlib import Path

from compress.errors import CompressError


def model_labels(models: list[str], names: list[str] | None) -> list[str]:
    """`names` (one per model), or the folder names made unique (`m`, `m-2`, `m-3`, ...)."""
    if names:
        if len(names) != len(models):
            raise CompressError(f"--names gives {len(names)} names for {len(models)} models")
        return list(names)
    out: list[str] = []
    for m in models:
        base = Path(m).resolve().name or str(m)
        name, k = base, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out.append(name)
    return out
