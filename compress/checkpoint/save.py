"""One call that writes a complete HF model folder atomically: weights, config, side files, provenance."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from compress.checkpoint.atomic import atomic_dir
from compress.checkpoint.card import write_model_card
from compress.checkpoint.provenance import write_provenance
from compress.checkpoint.writer import DEFAULT_MAX_SHARD, ShardedWriter, TensorSpec

# The pruned-model module of `compress prune` (compress.arch.remote_code renders it from the package's
# template). Named here because checkpoint/ sits below arch/ and only checks for it.
PRUNED_MODULE = "modeling_compress_pruned"


def copy_side_files(files: Iterable[str | os.PathLike[str]], folder: str | os.PathLike[str]) -> None:
    """Copy tokenizer / template / generation files into `folder`. Python files are never copied: code
    in an output comes from the package, never from an input."""
    for f in files:
        if Path(f).suffix == ".py":
            continue
        shutil.copy2(f, Path(folder) / Path(f).name)


def _check_remote_code(config: dict[str, Any], files: dict[str, str]) -> None:
    """A config that registers the pruned-model module must come with the file rendered from the package."""
    auto = config.get("auto_map")
    named = isinstance(auto, dict) and any(isinstance(v, str) and v.startswith(PRUNED_MODULE + ".") for v in auto.values())
    if named and PRUNED_MODULE + ".py" not in files:
        raise ValueError(f"config.json registers {PRUNED_MODULE} but no file was given: pass the output of "
                         "compress.arch.remote_code.pruned_modeling_files(config, names)")


def save_checkpoint(
    output: str | os.PathLike[str],
    specs: Sequence[TensorSpec],
    produce: Callable[[ShardedWriter], None],
    *,
    config: dict[str, Any],
    inputs: Sequence[str | os.PathLike[str]] = (),
    side_files: Iterable[str | os.PathLike[str]] = (),
    force: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD,
    command: str | None = None,
    recipe: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
    before_commit: Callable[[Path], None] | None = None,
    method: str | None = None,
    tags: Sequence[str] = (),
    report: str | None = None,
) -> Path:
    """Write a model folder at `output`; nothing appears there unless everything succeeded.

    `produce(writer)` must call `writer.write(name, tensor)` once for every spec (any order).
    `before_commit(tmp)` may add more files (e.g. a tokenizer saved by transformers).
    Every folder gets `compress.json` (how it was made) and a model card `README.md` naming
    `method`, with `tags` and the Markdown `report`. Python files in `side_files` are skipped; a
    config registering the pruned-model module needs its file in `files`
    (`compress.arch.remote_code.pruned_modeling_files`).
    """
    _check_remote_code(config, files or {})
    with atomic_dir(output, inputs, force) as tmp:
        writer = ShardedWriter(tmp, specs, max_shard_size)
        try:
            produce(writer)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        copy_side_files(side_files, tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        if before_commit is not None:
            before_commit(tmp)
        write_provenance(tmp, inputs=[str(i) for i in inputs], command=command, recipe=recipe, extra=extra)
        write_model_card(tmp, title=Path(output).name, method=method, tags=tuple(tags), report=report)
    return Path(output)
