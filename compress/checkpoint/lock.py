"""Who is writing where: one lock per output, and temporaries whose names say which run owns them.

Lock: `.NAME.lock` beside the output `NAME`, holding `compress PID HOST`, with an exclusive `flock`
on it for as long as the run writes there. A second run into the same output finds the lock taken
and stops with one error line. The kernel drops the `flock` when its process dies (even by SIGKILL),
so a lock file left by a killed run is stale: the next run takes it over. On file systems without
`flock` the PID decides: a lock whose PID is dead on this host is stale.

Temporaries: `.NAME.tmp-HOST-PID-RANDOM` (the folder or file being written) and `.NAME.old-HOST-PID`
(an existing output moved aside for the instant of the final rename). HOST is a short hash of the
host name. A run that starts writing into a folder removes the temporaries there whose PID is dead
on this host (and puts back an output that a killed run had moved aside); nothing else is touched.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

from compress.errors import CompressError

try:
    import fcntl
except ImportError:  # not POSIX: the PID in the lock file decides alone
    fcntl = None  # type: ignore[assignment]

HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)(?:-[0-9a-f]+)?$")
_LOCK_TAG = "compress"
_held: dict[Path, int] = {}  # lock file -> open descriptor holding its flock


def temp_name(name: str) -> str:
    """Name of a temporary for output `name`, owned by this process."""
    return f".{name}.tmp-{HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def old_name(name: str) -> str:
    """Name under which an existing output waits while its replacement is renamed into place."""
    return f".{name}.old-{HOST}-{os.getpid()}"


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this host (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_owner(path: Path) -> tuple[int, str] | None:
    """(pid, host) written in a compress lock file; None when the file is not one."""
    try:
        words = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return None
    if len(words) == 3 and words[0] == _LOCK_TAG and words[1].isdigit():
        return int(words[1]), words[2]
    return None


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this file system has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


def acquire(out: Path) -> None:
    """Take the lock of output `out` (re-entrant within a process); CompressError when another run holds it."""
    if os.environ.get("RANK", "0") != "0":  # a worker of a distributed run: its rank 0 holds the run's lock
        return
    path = lock_path(out)
    if path in _held:
        return
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CompressError(f"cannot write in {out.parent}: {e.strerror}") from None
        got = _try_flock(fd)
        if got is None:  # no flock here: a live PID on this host (or any PID elsewhere) holds it
            owner = _lock_owner(path)
            got = owner is None or owner[0] == os.getpid() or (owner[1] == HOST and not pid_alive(owner[0]))
        if not got:
            os.close(fd)
            owner = _lock_owner(path)
            who = f" (pid {owner[0]})" if owner else ""
            raise CompressError(f"another compress run{who} is writing {out}: wait for it to end, or choose "
                                f"another output (remove {path} if no such run exists)")
        try:  # the previous holder may have removed the file between our open and our lock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{_LOCK_TAG} {os.getpid()} {HOST}\n".encode(), 0)
        except OSError as e:
            _drop(path, fd)
            what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
            raise CompressError(f"cannot write in {out.parent}: {what}") from None
        _held[path] = fd
        return


def release(out: Path) -> None:
    """Drop the lock of `out` if this process holds it, and remove its file."""
    fd = _held.pop(lock_path(out), None)
    if fd is not None:
        _drop(lock_path(out), fd)


def release_all() -> None:
    for path, fd in list(_held.items()):
        _held.pop(path, None)
        _drop(path, fd)


def _drop(path: Path, fd: int) -> None:
    try:
        path.unlink()  # while still locked: a waiting run then locks a fresh file
    except OSError:
        pass
    os.close(fd)


atexit.register(release_all)


def clean_stale(folder: Path) -> list[str]:
    """Remove the temporaries and lock files in `folder` left by runs whose PID is dead on this host.

    An output that a killed run had moved aside (`.NAME.old-...`) is renamed back when `NAME` is
    missing. Returns the names removed or restored."""
    done = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return done
    for entry in entries:
        m = _TEMP.match(entry.name)
        try:
            if m is not None:
                if m["host"] != HOST or pid_alive(int(m["pid"])):
                    continue
                target = folder / m["name"]
                if m["kind"] == "old" and not os.path.lexists(target):
                    os.replace(entry.path, target)
                elif entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                done.append(entry.name)
            elif entry.name.startswith(".") and entry.name.endswith(".lock") and _stale_lock(Path(entry.path)):
                done.append(entry.name)
        except OSError:
            continue
    return done


def _stale_lock(path: Path) -> bool:
    """Remove a compress lock file whose run is gone; True when removed."""
    if path in _held:
        return False
    owner = _lock_owner(path)
    if owner is None:
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        got = _try_flock(fd)
        if got is None:
            got = owner[1] == HOST and not pid_alive(owner[0])
        if got:
            path.unlink()
        return bool(got)
    finally:
        os.close(fd)
