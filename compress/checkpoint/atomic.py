"""Output policy and atomic writes: an output appears whole or not at all, and replaces only what compress wrote.

Where an output may go (`check_output` for folders, `check_output_file` for files), checked before
any work starts:
- never the current folder or a folder above it, never an input, inside an input or above an input;
- never a mount point (the folder itself is replaced: write into a folder inside it);
- a missing or empty folder is fine; an existing non-empty folder is replaced only with `force`, and
  only when compress wrote it (`written_by_compress`: it has `compress.json`, or the `eval.json` of
  `compress eval`, or the `cache.json` of a teacher cache). Every folder written here gets a
  `compress.json`, so every compress output is recognisable;
- an existing file is replaced only with `force` (and, where the caller can tell, only when compress
  wrote it); a folder is never replaced by a file.
Then the output's lock is taken (`compress.checkpoint.lock`: a second run into the same output stops
with one error line) and temporaries of dead runs beside it are removed.

Writing (`atomic_dir`, `atomic_file`): into a temporary beside the target, renamed into place at the
end. On any error, Ctrl-C or SIGTERM the temporary is removed and the target is left exactly as it
was; a file-system error (disk full, read-only, busy, permission) becomes one CompressError. A new
output gets the mode the umask gives; a replaced one keeps the mode it had.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from compress.checkpoint.lock import acquire, clean_stale, old_name, release, temp_name
from compress.checkpoint.provenance import PROVENANCE_FILE, write_provenance
from compress.errors import CompressError

PathLike = str | os.PathLike[str]
# (file, key, test of its value): a folder holding one of these was written by compress.
MARKERS: tuple[tuple[str, str, Callable[[object], bool]], ...] = (
    (PROVENANCE_FILE, "tool", lambda v: v == "compress"),
    ("eval.json", "tool", lambda v: v == "compress eval"),
    ("cache.json", "format", lambda v: isinstance(v, str) and v.startswith("compress-teacher-cache/")),
)
_rename = os.replace  # module-level so that a test can make the final rename fail (EBUSY)


def written_by_compress(folder: PathLike) -> bool:
    """True when `folder` holds a marker file that compress writes into its outputs."""
    for name, key, test in MARKERS:
        try:
            data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and test(data.get(key)):
            return True
    return False


def _check_place(out: Path, output: PathLike, inputs: Sequence[PathLike], what: str = "output") -> None:
    """Refuse an output that is, contains or lies inside an input, or is or contains the current folder."""
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        where = "the current folder" if out == cwd else "a folder above the current folder"
        raise CompressError(f"{what} {output} is {where}: choose another folder")
    for inp in inputs:
        src = Path(inp).resolve()
        if out == src:
            raise CompressError(f"{what} {output} would overwrite the input {inp} (nothing is written inside "
                                f"the input): choose another {what}")
        if src in out.parents:
            raise CompressError(f"{what} {output} is inside the input {inp}: choose another {what}")
        if out in src.parents:
            raise CompressError(f"{what} {output} contains the input {inp}: choose another folder")


def _make_parent(parent: Path) -> None:
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as e:
            raise CompressError(f"cannot create {parent}: {e.strerror}") from None
    elif not parent.is_dir():
        raise CompressError(f"cannot write into {parent}: it is a file")


def _start(out: Path) -> None:
    """Take the output's lock and remove dead runs' temporaries beside it."""
    acquire(out)
    removed = clean_stale(out.parent)
    if removed:
        from compress.progress import info

        info(f"removed {len(removed)} temporaries of stopped runs in {out.parent}: {', '.join(removed)}")


def check_output(output: PathLike, inputs: Sequence[PathLike] = (), force: bool = False, *, lock: bool = True) -> Path:
    """Validate an output folder before any work starts (see the module docstring); return it resolved.

    With `lock` (the default) the output's lock is taken; `atomic_dir` releases it, and so does the
    CLI when the command ends."""
    out = Path(output).resolve()
    _check_place(out, output, inputs)
    try:
        if out.exists():
            if not out.is_dir():
                raise CompressError(f"output {output} exists and is a file: choose a folder name")
            if os.path.ismount(out):
                raise CompressError(f"output {output} is a mount point, which cannot be replaced: "
                                    f"write into a folder inside it, e.g. {Path(output) / 'model'}")
            if any(out.iterdir()):
                if not written_by_compress(out):
                    raise CompressError(f"output {output} exists and was not written by compress (no {PROVENANCE_FILE}): "
                                        "choose another folder (--force replaces only compress outputs)")
                if not force:
                    raise CompressError(f"output {output} exists and is not empty: pass --force to replace it")
    except OSError as e:
        raise CompressError(f"cannot use {output} as output: {e.strerror}") from None
    _make_parent(out.parent)
    if lock:
        _start(out)
    return out


def check_output_file(output: PathLike, inputs: Sequence[PathLike] = (), force: bool = False, *,
                      is_ours: Callable[[Path], bool] | None = None, lock: bool = True) -> Path:
    """Validate an output file before any work starts; return it resolved.

    `is_ours(path)`, when given, tells whether an existing file was written by compress: `force`
    replaces only such a file."""
    out = Path(output).resolve()
    _check_place(out, output, inputs)
    if out.is_dir():
        raise CompressError(f"output {output} is a folder: give a file name")
    if out.exists():
        if not out.is_file():
            raise CompressError(f"output {output} exists and is not a regular file: choose another name")
        if is_ours is not None and not is_ours(out):
            raise CompressError(f"output {output} exists and was not written by this command: choose another "
                                "name (--force replaces only its own outputs)")
        if not force:
            raise CompressError(f"output {output} exists: pass --force to replace it")
    _make_parent(out.parent)
    if lock:
        _start(out)
    return out


def check_checkpoint_dir(path: PathLike, inputs: Sequence[PathLike] = (), output: PathLike | None = None) -> Path:
    """Validate a folder of training checkpoints: not a file, not the current folder, not an input nor
    inside or around one, and apart from the `output` folder (which is replaced at the end)."""
    p = Path(path).resolve()
    if p.exists() and not p.is_dir():
        raise CompressError(f"checkpoint folder {path} exists and is a file: choose a folder name")
    _check_place(p, path, inputs, "checkpoint folder")
    if output is not None:
        out = Path(output).resolve()
        if p == out or out in p.parents or p in out.parents:
            raise CompressError(f"checkpoint folder {path} and output {output} overlap: keep them apart "
                                f"(default: {output}.checkpoints)")
    return p


def _errno(e: BaseException) -> int | None:
    """errno of an OSError, or of the I/O error inside a safetensors error ("... (os error 28)")."""
    if isinstance(e, OSError):
        return e.errno
    if type(e).__name__ == "SafetensorError":
        m = re.search(r"os error (\d+)", str(e))
        return int(m.group(1)) if m else None
    return None


def write_error(e: BaseException, output: PathLike) -> CompressError | None:
    """The one-line error for a file-system failure while writing `output`; None for other errors."""
    code = _errno(e)
    if code is None:
        return None
    if code in (errno.ENOSPC, errno.EDQUOT):
        return CompressError(f"disk full while writing {output}; nothing was written")
    if code == errno.EROFS:
        return CompressError(f"cannot write {output}: read-only file system; nothing was written")
    if code == errno.EBUSY:
        return CompressError(f"cannot replace {output}: it is busy or a mount point; nothing was written")
    reason = os.strerror(code)
    where = getattr(e, "filename", None)
    return CompressError(f"cannot write {output}: {reason}{f' ({where})' if where else ''}; nothing was written")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _commit(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`. An existing `out` is moved aside first (and restored on failure), and
    its permission bits are given to the new one."""
    old = None
    if os.path.lexists(out):
        os.chmod(tmp, out.stat().st_mode & 0o7777)
        old = out.parent / old_name(out.name)
        _rename(out, old)
    try:
        _rename(tmp, out)
    except BaseException:
        if old is not None and not os.path.lexists(out):
            _rename(old, out)
        raise
    if old is not None:
        _remove(old)


@contextmanager
def _writing(tmp: Path, out: Path, output: PathLike) -> Iterator[None]:
    """Remove `tmp` on any failure, turn file-system errors into one CompressError, release the lock."""
    try:
        yield
    except BaseException as e:
        _remove(tmp)
        err = write_error(e, output)
        if err is not None:
            raise err from None
        raise
    finally:
        release(out)


@contextmanager
def atomic_dir(output: PathLike, inputs: Sequence[PathLike] = (), force: bool = False, *,
               marker: bool = True) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `output`, on failure it is deleted.

    With `marker`, a folder without `compress.json` gets a minimal one (inputs, command, versions) so
    that a later `--force` recognises it."""
    out = check_output(output, inputs, force)
    tmp = out.parent / temp_name(out.name)
    with _writing(tmp, out, output):
        os.mkdir(tmp, 0o777)  # the umask decides the mode, as for any new folder
        yield tmp
        if marker and not (tmp / PROVENANCE_FILE).exists():
            write_provenance(tmp, inputs=[str(i) for i in inputs])
        _commit(tmp, out)


@contextmanager
def atomic_file(output: PathLike, inputs: Sequence[PathLike] = (), force: bool = False, *, binary: bool = False,
                is_ours: Callable[[Path], bool] | None = None) -> Iterator[IO]:
    """Yield an open file (text, UTF-8, or binary); on success it replaces `output` (flushed and synced),
    on failure it is deleted. The policy is `check_output_file`'s."""
    out = check_output_file(output, inputs, force, is_ours=is_ours)
    tmp = out.parent / temp_name(out.name)
    with _writing(tmp, out, output):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, out)


def replace_file(path: PathLike, data: str | bytes) -> None:
    """Write a small state file atomically (temporary + rename), with no output policy and no lock:
    for files a command keeps beside its output (e.g. a search state)."""
    p = Path(path)
    tmp = p.parent / temp_name(p.name)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        _rename(tmp, p)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        err = write_error(e, p)
        if err is not None:
            raise err from None
        raise
