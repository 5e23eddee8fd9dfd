"""`compress prune --export mask`: the pruning, not the weights.

The output folder holds `pruning.json` - the method, block type, criterion, calibration spec
(source, seed, windows, sequence length, tokens), the ordered removals of the search with the
calibration perplexity after each step, the chosen K, and a reference to the base model: its
absolute path, its path relative to the mask folder (found there when both moved together), a sha256
over its weight files and config.json, and their sizes and mtimes (while those match, a load skips
re-hashing the base; otherwise the hash decides) - plus the base's tokenizer files,
the search report and `compress.json`. No weights: `compress.load(out)` (and so `compress eval`,
`compress inspect`) loads the base model and re-applies the first K removals in memory
(`compress.prune.mask`), after checking that the base is still where it was and unchanged and that
the removals fit it (an edited pruning.json naming a layer the base lacks, an unknown block kind, or
every block, is refused with one line).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from compress.checkpoint.hashing import MASK_FILE, files_stat, is_mask_folder, weights_hash
from compress.errors import CompressError

FORMAT = "compress-prune-mask"
VERSION = 1

__all__ = ["MASK_FILE", "files_stat", "inspect_mask", "is_mask_folder", "read_mask", "weights_hash", "write_mask"]


def _locate_base(folder: Path, rec: dict[str, Any], p: Path) -> Path:
    """The base at its recorded absolute path, else at its recorded place relative to the mask folder
    (both moved together)."""
    tried = [Path(rec["path"])]
    if isinstance(rec.get("relative_path"), str):
        tried.append((folder.resolve() / rec["relative_path"]).resolve())
    for cand in tried:
        if (cand / "config.json").is_file():
            return cand
    raise CompressError(f"the base model of {folder} is not at {' nor '.join(map(str, dict.fromkeys(tried)))} any "
                        f"more (moved or deleted): put it back, or edit base.path in {p}")


def write_mask(model_dir: str | os.PathLike[str], output: str | os.PathLike[str], report: dict[str, Any],
               steps: list[dict[str, Any]], *, force: bool = False, before_commit=None) -> Path:
    """Write the mask folder atomically. `report` is the prune report (its `steps` are the chosen
    K); `steps` every step the search made, in order (K or more)."""
    from compress.checkpoint.atomic import atomic_dir
    from compress.checkpoint.provenance import write_provenance
    from compress.checkpoint.reader import Checkpoint

    base = Path(model_dir).resolve()
    ckpt = Checkpoint(base)
    k = len(report["steps"])
    data = {
        "format": FORMAT,
        "version": VERSION,
        "base": {"path": str(base), "relative_path": os.path.relpath(base, Path(output).resolve()),
                 "weights_sha256": weights_hash(base), "files": files_stat(base)},
        "method": report["method"],
        "block_type": report["block_type"],
        "criterion": report["criterion"],
        "search": report["search"],
        "calibration": report["calibration"],
        "dtype": report["dtype"],
        "k": k,
        "removed": report["removed"],
        "already_removed": report.get("already_removed", []),
        "params": report["params"],
        "ratio": report["ratio"],
        "steps": [{"step": s["step"], "unit": s["unit"], "blocks": [list(b) for b in s["blocks"]],
                   "ppl": s["ppl"], "ratio": s["ratio"]} for s in steps],
    }
    with atomic_dir(output, [model_dir], force) as tmp:
        (tmp / MASK_FILE).write_text(json.dumps(data, indent=1) + "\n")
        for f in ckpt.side_files():
            if f.name != "modeling_compress_pruned.py":
                shutil.copy2(f, tmp / f.name)
        write_provenance(tmp, inputs=[str(model_dir)], extra={"prune": {"export": "mask", "k": k,
                                                                        "removed": report["removed"]}})
        if before_commit is not None:
            before_commit(tmp)
    return Path(output)


def read_mask(path: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """pruning.json of a mask folder, checked; with `verify`, the base must exist and be unchanged."""
    p = Path(path) / MASK_FILE
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CompressError(f"cannot read {p}: {e}") from None
    try:
        ok = (data["format"] == FORMAT and isinstance(data["base"]["path"], str)
              and isinstance(data["k"], int) and isinstance(data["removed"], list)
              and all(isinstance(b, list) and len(b) == 2 for b in data["removed"]))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise CompressError(f"{p} is not a pruning mask written by `compress prune --export mask`")
    if data.get("version") != VERSION:
        raise CompressError(f"{p} has version {data.get('version')}; this compress reads version {VERSION}")
    if verify:
        base = _locate_base(Path(path), data["base"], p)
        data["base"]["path"] = str(base)
        unchanged = data["base"].get("files") == files_stat(base)  # same sizes and mtimes: skip the hash
        if not unchanged and weights_hash(base) != data["base"]["weights_sha256"]:
            raise CompressError(f"the base model at {base} changed since {path} was written (its weights hash "
                                "differs): the mask applies only to the model it was searched on")
        _check_removed(data, base, p)
    return data


def _check_removed(data: dict[str, Any], base: Path, p: Path) -> None:
    """The removals of an (possibly edited) pruning.json fit the base: layers that exist, known block
    kinds, none twice or already missing from the base, and at least one block left."""
    from compress.arch import num_layers
    from compress.checkpoint.reader import Checkpoint
    from compress.prune.modeling import check_removals, validate_pruned_map

    cfg = Checkpoint(base).config
    where = f"{p} (removed)"
    data["removed"] = [list(b) for b in check_removals(data["removed"], num_layers(cfg),
                                                       validate_pruned_map(cfg, f"{base}/config.json"), where)]


def inspect_mask(path: str | os.PathLike[str], base_inspect) -> dict[str, Any]:
    """`compress inspect` of a mask folder: the base's summary with the removed blocks taken out."""
    from compress.checkpoint.reader import Checkpoint
    from compress.prune.params import checkpoint_params

    data = read_mask(path)
    base = data["base"]["path"]
    out = base_inspect(base)
    removed = [(int(i), str(k)) for i, k in data["removed"]]
    params = checkpoint_params(Checkpoint(base))
    block_map = list(out["block_map"])
    for i, kind in removed:
        c = block_map[i]
        has_a, has_m = c in "BA", c in "BM"
        has_a, has_m = has_a and kind != "attn", has_m and kind != "mlp"
        block_map[i] = "B" if has_a and has_m else "A" if has_a else "M" if has_m else "."
    n_attn = sum(1 for _, k in removed if k == "attn")
    from compress.arch import block_of, family_for, kind_of

    ckpt = Checkpoint(base)
    fam = family_for(ckpt.config, ckpt.names())
    by_kind = dict(out["parameters_by_kind"])
    gone = set(removed)
    for t in ckpt.infos():
        if block_of(fam, t.name) in gone:
            by_kind[kind_of(fam, t.name)] -= t.numel
    out.update({
        "path": str(Path(path)),
        "format": "mask",
        "base": base,
        "pruned": True,
        "removed_blocks": [[i, k] for i, k in removed],
        "parameters": out["parameters"] - params.removed(removed),
        "parameters_by_kind": by_kind,
        "blocks": {"attn": out["blocks"]["attn"] - n_attn, "mlp": out["blocks"]["mlp"] - (len(removed) - n_attn),
                   "total": out["blocks"]["total"] - len(removed)},
        "block_map": "".join(block_map),
        "size_on_disk": sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file()),
        "base_size_on_disk": out["size_on_disk"],
    })
    return out
