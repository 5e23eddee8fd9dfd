"""The output policy (what --force may replace), the lock per output, temporaries of dead runs, modes,
and file-system errors during atomic writes: each checked on real folders, real processes and real
errno values."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from compress.checkpoint import atomic, lock
from compress.checkpoint.atomic import (
    atomic_dir,
    atomic_file,
    check_checkpoint_dir,
    check_output,
    check_output_file,
    replace_file,
    written_by_compress,
)
from compress.errors import CompressError
from tests.fixtures import snapshot, user_folder

ROOT = Path(__file__).resolve().parents[2]


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _write(out: Path, force: bool = False, inputs=()) -> Path:
    with atomic_dir(out, inputs, force) as tmp:
        (tmp / "model.txt").write_text("new")
    return out


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- what --force may replace

def test_force_refuses_a_folder_compress_did_not_write(tmp_path):
    user = user_folder(tmp_path / "user")
    before = snapshot(user)
    with pytest.raises(CompressError, match="not written by compress"):
        _write(user, force=True)
    assert snapshot(user) == before and _hidden(tmp_path) == []


def test_force_replaces_a_compress_output_and_keeps_its_mode(tmp_path):
    out = _write(tmp_path / "out")
    assert written_by_compress(out)  # every atomic_dir output carries compress.json
    assert json.loads((out / "compress.json").read_text())["tool"] == "compress"
    os.chmod(out, 0o750)
    with pytest.raises(CompressError, match="pass --force"):
        _write(out)
    _write(out, force=True)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750 and (out / "model.txt").read_text() == "new"
    assert _hidden(tmp_path) == []


def test_new_output_gets_the_umask_mode_not_0700(tmp_path):
    old = os.umask(0o022)
    try:
        out = _write(tmp_path / "out")
        with atomic_file(tmp_path / "f.jsonl") as f:
            f.write("{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "f.jsonl").stat().st_mode) == 0o644


def test_empty_existing_folder_needs_no_force(tmp_path):
    (tmp_path / "out").mkdir()
    os.chmod(tmp_path / "out", 0o700)
    _write(tmp_path / "out")
    assert (tmp_path / "out" / "model.txt").read_text() == "new"
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o700


def test_legacy_outputs_are_recognised(tmp_path):
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "eval.json").write_text(json.dumps({"tool": "compress eval"}))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cache.json").write_text(json.dumps({"format": "compress-teacher-cache/1"}))
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "compress.json").write_text(json.dumps({"tool": "something else"}))
    assert written_by_compress(tmp_path / "ev") and written_by_compress(tmp_path / "cache")
    assert not written_by_compress(tmp_path / "fake")


def test_never_the_current_folder_or_above_it(tmp_path, monkeypatch):
    out = _write(tmp_path / "out")
    (out / "sub").mkdir()
    monkeypatch.chdir(out)
    for target in (".", str(out), ".."):
        with pytest.raises(CompressError, match="current folder"):
            check_output(target, force=True)
    monkeypatch.chdir(out / "sub")
    with pytest.raises(CompressError, match="above the current folder"):
        check_output(out, force=True)
    assert (out / "model.txt").read_text() == "new"


def test_never_an_input_inside_one_or_around_one(tmp_path):
    model = _write(tmp_path / "model")  # a compress output, so only the input rule can refuse it
    (model / "config.json").write_text("{}")
    for target, message in ((model, "would overwrite the input"), (model / "sub", "inside the input"),
                            (tmp_path, "contains the input")):
        with pytest.raises(CompressError, match=message):
            check_output(target, [model], force=True)
    with pytest.raises(CompressError, match="inside the input"):
        check_output_file(model / "config.json", [model], force=True)
    with pytest.raises(CompressError, match="would overwrite the input"):
        check_output_file(tmp_path / "data.jsonl", [tmp_path / "data.jsonl"], force=True)
    assert (model / "config.json").read_text() == "{}"


def test_checkpoint_dir_checks(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CompressError, match="checkpoint folder .* inside the input"):
        check_checkpoint_dir(model / "ck", [model])
    with pytest.raises(CompressError, match="checkpoint folder .* would overwrite the input"):
        check_checkpoint_dir(model, [model])
    with pytest.raises(CompressError, match="is a file"):
        check_checkpoint_dir(tmp_path / "file", [model])
    with pytest.raises(CompressError, match="overlap"):
        check_checkpoint_dir(tmp_path / "out" / "ck", [model], tmp_path / "out")
    assert check_checkpoint_dir(tmp_path / "out.checkpoints", [model], tmp_path / "out").name == "out.checkpoints"


def test_mount_point_is_refused_before_any_work():
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    mp = next((m for m in mounts if m != "/" and os.path.isdir(m) and os.path.ismount(m)), None)
    if mp is None:
        pytest.skip("no mount point to test with")
    with pytest.raises(CompressError, match="mount point"):
        check_output(mp, force=True)


def test_file_output_policy(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(CompressError, match="pass --force"):
        check_output_file(target)
    with pytest.raises(CompressError, match="not written by this command"):
        check_output_file(target, force=True, is_ours=lambda p: p.read_text().startswith("{"))
    with pytest.raises(CompressError, match="is a folder"):
        check_output_file(tmp_path, force=True)
    assert target.read_text() == "mine"
    os.chmod(target, 0o640)
    with atomic_file(target, force=True) as f:
        f.write("replaced")
    assert target.read_text() == "replaced" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _hidden(tmp_path) == []


# ---------------------------------------------------------------- file-system errors

@pytest.mark.parametrize("code,message", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system"),
                                          (errno.EACCES, "Permission denied")])
def test_file_system_errors_are_one_line_and_leave_nothing(tmp_path, code, message):
    out = _write(tmp_path / "out")
    for ctx in (lambda: atomic_dir(out, force=True), lambda: atomic_file(tmp_path / "f.bin", binary=True)):
        with pytest.raises(CompressError, match=message) as e:
            with ctx():
                raise OSError(code, os.strerror(code))
        assert "\n" not in str(e.value) and "nothing was written" in str(e.value)
    assert (out / "model.txt").read_text() == "new" and not (tmp_path / "f.bin").exists()
    assert _hidden(tmp_path) == []


def test_safetensors_disk_full_is_recognised(tmp_path):
    from safetensors import SafetensorError

    with pytest.raises(CompressError, match="disk full"):
        with atomic_dir(tmp_path / "out"):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert list(tmp_path.iterdir()) == []


def test_busy_rename_restores_the_old_output_and_leaves_no_temp(tmp_path, monkeypatch):
    out = _write(tmp_path / "out")
    real = atomic._rename

    def busy(src, dst):
        if Path(src).name.startswith(".out.tmp-"):
            raise OSError(errno.EBUSY, "Device or resource busy", str(dst))
        real(src, dst)

    monkeypatch.setattr(atomic, "_rename", busy)
    with pytest.raises(CompressError, match="busy or a mount point"):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "model.txt").write_text("newer")
    assert (out / "model.txt").read_text() == "new" and _hidden(tmp_path) == []


def test_replace_file_disk_full(tmp_path, monkeypatch):
    state = tmp_path / "out.prune-state.json"
    state.write_text("old")
    monkeypatch.setattr(atomic, "_rename", lambda s, d: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(CompressError, match="disk full"):
        replace_file(state, "new")
    assert state.read_text() == "old" and _hidden(tmp_path) == []


# ---------------------------------------------------------------- lock and stale temporaries

HOLDER = textwrap.dedent("""
    import sys, time
    from compress.checkpoint.atomic import atomic_dir
    with atomic_dir(sys.argv[1]) as tmp:
        (tmp / "part").write_text("half")
        print("ready", flush=True)
        time.sleep(120)
""")


def test_lock_refuses_a_second_run_and_a_killed_runs_leftovers_are_removed(tmp_path):
    """A real second process holds the output; once it is killed (SIGKILL: no cleanup of its own),
    its lock is stale and the next run removes its temporary folder."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        temps = [n for n in _hidden(tmp_path) if ".tmp-" in n]
        assert len(temps) == 1 and f"-{proc.pid}-" in temps[0]
        with pytest.raises(CompressError, match=f"another compress run \\(pid {proc.pid}\\) is writing"):
            check_output(out)
        with pytest.raises(CompressError, match="another compress run"):
            _write(out)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert temps[0] in _hidden(tmp_path)  # SIGKILL: the dead run could not clean up
    _write(out)
    assert (out / "model.txt").read_text() == "new" and _hidden(tmp_path) == []


def test_stale_temporaries_only_ours_and_only_dead(tmp_path):
    dead = _dead_pid()
    ours_dead = tmp_path / f".merged.tmp-{lock.HOST}-{dead}-0a1b2c3d"
    ours_dead.mkdir()
    (ours_dead / "model.safetensors").write_bytes(b"x" * 100)
    dead_file = tmp_path / f".gen.jsonl.tmp-{lock.HOST}-{dead}-00ff00ff"
    dead_file.write_text("{}")
    keep = [tmp_path / f".merged.tmp-{lock.HOST}-{os.getpid()}-deadbeef",  # alive (this process)
            tmp_path / f".merged.tmp-0000beef-{dead}-deadbeef",  # another host
            tmp_path / ".merged.tmp-k2j3h4g5",  # a name compress never writes now
            tmp_path / ".config"]  # the user's own
    for k in keep:
        k.mkdir()
    # an output moved aside by a run killed during its final rename comes back
    moved = tmp_path / f".model.old-{lock.HOST}-{dead}"
    moved.mkdir()
    (moved / "weights").write_text("w")
    _write(tmp_path / "new")
    assert not ours_dead.exists() and not dead_file.exists() and all(k.exists() for k in keep)
    assert (tmp_path / "model" / "weights").read_text() == "w" and not moved.exists()


def test_stale_lock_file_is_taken_over(tmp_path):
    dead = _dead_pid()
    (tmp_path / ".out.lock").write_text(f"compress {dead} {lock.HOST}\n")
    (tmp_path / ".other.lock").write_text(f"compress {dead} {lock.HOST}\n")
    (tmp_path / ".user.lock").write_text("not ours\n")
    _write(tmp_path / "out")
    assert _hidden(tmp_path) == [".user.lock"]


def test_interrupt_leaves_nothing_and_releases_the_lock(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "x").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
