"""Atomic output folders: write into a temporary folder beside the target, rename at the end.

An existing non-empty target is refused unless `force`; an output inside (or equal to) one of the
inputs is refused; on any error or Ctrl-C the temporary folder is removed and the target is left
exactly as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from compress.errors import CompressError


def check_output(output: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]] = (), force: bool = False) -> Path:
    """Validate an output folder before any work starts; return it resolved."""
    out = Path(output).resolve()
    for inp in inputs:
        src = Path(inp).resolve()
        if out == src or (src.is_dir() and src in out.parents):
            raise CompressError(f"output {output} is inside the input {inp}: choose another folder")
        if out in src.parents:
            raise CompressError(f"output {output} contains the input {inp}: choose another folder")
    if out.exists():
        if not out.is_dir():
            raise CompressError(f"output {output} exists and is a file")
        if any(out.iterdir()) and not force:
            raise CompressError(f"output {output} exists and is not empty: pass --force to overwrite it")
    parent = out.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as e:
            raise CompressError(f"cannot create {parent}: {e.strerror}") from None
    return out


@contextmanager
def atomic_dir(output: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]] = (), force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `output`, on failure it is deleted."""
    out = check_output(output, inputs, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise CompressError(f"disk full while writing {output}; nothing was written") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Commit: move an existing target aside first so that a failed rename loses nothing.
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
