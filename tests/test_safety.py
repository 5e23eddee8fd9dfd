"""A hostile run through the real command line: every case ends with exit 1 and exactly one `error:`
line on stderr (no traceback), the user's files intact, no temporary left behind, and no code from an
input ever run. In-process (`compress.cli.main`) for most cases; real processes where the behaviour is
a process's own: a signal, Ctrl-C during `import torch`, a lock held by another process, and (when
user namespaces allow it) a full, read-only or mounted file system."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from compress.arch import family_for
from compress.arch.remote_code import MODELING_FILE, remote_modeling_source
from compress.checkpoint import lock
from compress.cli import main
from compress.prune.export import export_pruned
from tests.fixtures import WIKI_VALID, make_tiny_model, snapshot, user_folder

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
PAYLOAD = "import pathlib; pathlib.Path({marker!r}).write_text('pwned')\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Two tiny llamas, a pruned pair, preference pairs and a text file."""
    root = tmp_path_factory.mktemp("safety")
    a = make_tiny_model(root / "a", "llama", layers=2, seed=0)
    b = make_tiny_model(root / "b", "llama", layers=2, seed=1)
    words = [w for w in WIKI_VALID.read_text(encoding="utf-8").split() if w.isalpha()][:400]
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": " ".join(words[i:i + 5]), "chosen": " ".join(words[i + 5:i + 12]),
                                         "rejected": " ".join(words[i + 12:i + 16])}) + "\n" for i in range(0, 96, 16)))
    text = root / "text.txt"
    text.write_text(" ".join(words) + "\n")
    return {"root": root, "a": a, "b": b, "pairs": pairs, "text": text}


def error_line(argv, capsys) -> str:
    """Run the CLI in-process; assert exit 1 and one `error:` line; return that line."""
    capsys.readouterr()
    code = main([str(x) for x in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".lock")]


def commands(w: dict[str, Path], out: Path) -> dict[str, list]:
    """Every command that writes, with valid inputs and output `out`."""
    gguf = w["root"] / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    return {
        "convert": ["convert", gguf, "-o", out],
        "merge": ["merge", "--method", "linear", w["a"], w["b"], "-o", out],
        "prune": ["prune", w["a"], "-o", out, "--blocks", "1", "--data", w["text"], "--seq-len", "16"],
        "eval": ["eval", w["a"], "--tasks", "ppl", "--data", w["text"], "--seq-len", "16", "-o", out],
        "distill train": ["distill", "train", w["a"], "--data", w["pairs"], "--method", "sft", "-o", out,
                          "--max-steps", "1", "--max-length", "32"],
        "cache-teacher": ["distill", "cache-teacher", w["a"], "--data", w["pairs"], "-o", out, "--max-length", "32"],
        "generate": ["distill", "generate", w["a"], "--data", w["pairs"], "-o", out, "--max-new-tokens", "2",
                     "--max-length", "32"],
    }


# ---------------------------------------------------------------- §2.3 --force never loses data

@pytest.mark.parametrize("cmd", ["convert", "merge", "prune", "eval", "distill train", "cache-teacher"])
def test_force_never_replaces_a_users_folder(world, tmp_path, capsys, cmd):
    user = user_folder(tmp_path / "user")
    before = snapshot(user)
    line = error_line(commands(world, user)[cmd] + ["--force"], capsys)
    assert "not written by compress" in line
    assert snapshot(user) == before and leftovers(tmp_path) == []


def test_force_never_replaces_the_current_folder(world, tmp_path, capsys, monkeypatch):
    user = user_folder(tmp_path / "user")
    (user / "compress.json").write_text(json.dumps({"tool": "compress"}))  # even one compress wrote
    before = snapshot(user)
    monkeypatch.chdir(user)
    for argv in (commands(world, Path("."))["merge"], commands(world, Path(".."))["merge"]):
        assert "current folder" in error_line(argv + ["--force"], capsys)
    assert snapshot(user) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("cmd", ["convert", "merge", "prune", "eval", "distill train", "cache-teacher", "generate"])
def test_no_output_inside_an_input(world, capsys, cmd):
    a = world["a"]
    before = snapshot(a)
    if cmd == "convert":  # its input is the .gguf file: the folder holding it is refused
        assert "contains the input" in error_line(commands(world, world["root"])[cmd] + ["--force"], capsys)
    else:
        target = a / "config.json" if cmd == "generate" else a / "sub"
        assert "inside the input" in error_line(commands(world, target)[cmd] + ["--force"], capsys)
        assert "would overwrite the input" in error_line(commands(world, a)[cmd] + ["--force"], capsys)
    assert snapshot(a) == before and leftovers(a.parent) == []


def test_generate_output_policy(world, tmp_path, capsys):
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"mine": 1}\n')
    argv = commands(world, notes)["generate"]
    for force in ([], ["--force"]):
        assert "not written by this command" in error_line(argv + force, capsys)
    assert "is a folder" in error_line(commands(world, tmp_path)["generate"] + ["--force"], capsys)
    for t in ("-1", "nan"):
        assert "--temperature" in error_line(argv + ["--temperature", t], capsys)
    assert notes.read_text() == '{"mine": 1}\n' and leftovers(tmp_path) == []
    # its own earlier output is replaced with --force, atomically, keeping the file's mode
    out = tmp_path / "gen.jsonl"
    assert main([str(x) for x in commands(world, out)["generate"]]) == 0
    assert "pass --force" in error_line(commands(world, out)["generate"], capsys)
    os.chmod(out, 0o640)
    assert main([str(x) for x in commands(world, out)["generate"]] + ["--force"]) == 0
    rows = [json.loads(r) for r in out.read_text().splitlines()]
    assert len(rows) >= 4 and all("student_response" in r for r in rows)  # pairs too long for --max-length are skipped
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and leftovers(tmp_path) == []


def test_checkpoint_dir_checks(world, tmp_path, capsys):
    argv = commands(world, tmp_path / "out")["distill train"]
    a = world["a"]
    assert "checkpoint folder" in error_line(argv + ["--checkpoint-dir", a], capsys)
    assert "inside the input" in error_line(argv + ["--checkpoint-dir", a / "ck"], capsys)
    (tmp_path / "file").write_text("x")
    assert "is a file" in error_line(argv + ["--checkpoint-dir", tmp_path / "file"], capsys)
    assert not (tmp_path / "out").exists() and not (a / "ck").exists()


# ---------------------------------------------------------------- §2.5 lock, JSON

LOCK_HOLDER = textwrap.dedent("""
    # Holds an output's lock as the documented protocol says: an flock on .NAME.lock holding "compress PID HOST".
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"compress {os.getpid()} {sys.argv[2]}\\n".encode())
    print("ready", flush=True)
    time.sleep(60)
""")


def test_second_run_into_the_same_output_is_refused(world, tmp_path, capsys):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path / ".out.lock"), lock.HOST],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        line = error_line(commands(world, out)["merge"], capsys)
        assert f"another compress run (pid {proc.pid}) is writing" in line
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()
    assert main([str(x) for x in commands(world, out)["merge"]]) == 0  # the dead holder's lock is stale
    assert leftovers(tmp_path) == []


def _reject_constant(name):
    raise ValueError(f"not JSON: {name}")


def test_eval_ppl_json_is_json_when_the_loss_is_nan(world, tmp_path, capsys):
    bad = shutil.copytree(world["a"], tmp_path / "nan")
    sd = load_file(str(bad / "model.safetensors"))
    sd["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["eval", "ppl", str(bad), "--data", str(world["text"]), "--seq-len", "16", "--json"]) == 0
    res = json.loads(capsys.readouterr().out, parse_constant=_reject_constant)
    assert res["ppl"] is None and "ppl" in res["non_finite"] and "NaN" in res["non_finite"]["ppl"]


# ---------------------------------------------------------------- §2.6 one line, not a traceback

def _header_edit(folder: Path, edit) -> None:
    f = folder / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = edit(json.loads(raw[8:8 + n]))
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    f.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def _entry(key, value):
    def edit(h):
        h["model.norm.weight"][key] = value
        return h
    return edit


def _bin_list(d: Path) -> None:
    (d / "model.safetensors").unlink()
    torch.save([torch.zeros(2)], d / "pytorch_model.bin")


HOSTILE = {
    "dtype list": lambda d: _header_edit(d, _entry("dtype", ["F32"])),
    "string offsets": lambda d: _header_edit(d, _entry("data_offsets", ["0", "256"])),
    "shape null": lambda d: _header_edit(d, _entry("shape", None)),
    "config is a list": lambda d: (d / "config.json").write_text("[]"),
    "weight_map is a list": lambda d: (d / "model.safetensors.index.json").write_text('{"weight_map": []}'),
    ".bin holds a list": _bin_list,
    "pruned map is a string": lambda d: (d / "config.json").write_text(
        json.dumps({**json.loads((d / "config.json").read_text()), "compress_pruned_blocks": "all"})),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_malformed_inputs(world, tmp_path, capsys, case):
    bad = shutil.copytree(world["a"], tmp_path / "bad")
    HOSTILE[case](bad)
    before = snapshot(bad)
    for argv in (["inspect", bad], ["eval", "ppl", bad, "--data", world["text"], "--seq-len", "16"],
                 ["merge", "--method", "linear", bad, world["b"], "-o", tmp_path / "out"]):
        error_line(argv, capsys)
    assert snapshot(bad) == before and not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("device", ["mps", "meta", "xpu", "cuda:99"])
def test_unsupported_devices_refused_by_every_command(world, tmp_path, capsys, device):
    for name, argv in commands(world, tmp_path / "out").items():
        if name == "convert":
            continue  # no --device: conversion runs on the CPU
        line = error_line(argv + ["--device", device], capsys)
        assert "--device" in line, name
    assert list(p.name for p in tmp_path.iterdir()) == []


INTERRUPT_IMPORT = textwrap.dedent("""
    # A real SIGINT (Ctrl-C) delivered while `import torch` runs, then the CLI exactly as installed.
    import builtins, os, runpy, signal, sys
    # A shell's background job starts with SIGINT ignored, which Python then keeps: restore Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    real = builtins.__import__
    def hooked(name, *args, **kwargs):
        if name == "torch" and "torch" not in sys.modules:
            os.kill(os.getpid(), signal.SIGINT)
        return real(name, *args, **kwargs)
    builtins.__import__ = hooked
    sys.argv = ["compress", *sys.argv[1:]]
    runpy.run_module("compress", run_name="__main__")
""")


def test_ctrl_c_during_import_torch(world, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_IMPORT, *map(str, commands(world, out)["merge"])],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines() == ["interrupted: nothing was written"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


SIGTERM_MID_SAVE = textwrap.dedent("""
    # SIGTERM arrives while the merged weights are being written (after the first tensor).
    import os, signal, sys
    from compress.checkpoint import writer
    real = writer._pwrite
    def write(fd, data, offset):
        n = real(fd, data, offset)
        os.kill(os.getpid(), signal.SIGTERM)
        return n
    writer._pwrite = write
    from compress.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigterm_during_a_save_leaves_nothing(world, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", SIGTERM_MID_SAVE, *map(str, commands(world, out)["merge"])],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "interrupted: nothing was written" and "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


NAMESPACE = textwrap.dedent("""
    # Inside a private mount namespace: a 256 KB tmpfs (full disk), the same read-only, and a mount point.
    import json, os, subprocess, sys
    from compress.cli import main
    a, b, pairs, root = sys.argv[1:5]
    def run(argv):  # main() with its stderr captured in a file
        sys.stderr.flush()
        with open(os.path.join(root, "stderr.txt"), "w+") as f:
            saved = os.dup(2)
            os.dup2(f.fileno(), 2)
            try:
                code = main(argv)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
            f.seek(0)
            return {"code": code, "err": f.read()}
    mnt = os.path.join(root, "mnt")
    os.makedirs(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "none", mnt], check=True)
    res = {}
    merge = ["merge", "--method", "linear", a, b]
    res["full"] = run(merge + ["-o", os.path.join(mnt, "out")])
    res["full_listing"] = sorted(os.listdir(mnt))
    long_pairs = os.path.join(root, "long.jsonl")  # rows of 3 KB: the output needs more than the 8 KB left
    with open(long_pairs, "w") as f:
        for i in range(6):
            f.write(json.dumps({"prompt": f"question {i}", "chosen": "yes " * 750, "rejected": "no"}) + "\\n")
    gen = ["distill", "generate", a, "--data", long_pairs, "--max-new-tokens", "2", "--max-length", "32"]
    pad = os.open(os.path.join(mnt, "pad"), os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk, then free two pages (one for the lock file, one short of the output)
        while True:
            os.write(pad, b"x" * 4096)
    except OSError:
        os.ftruncate(pad, os.fstat(pad).st_size - 8192)
    os.close(pad)
    res["full_generate"] = run(gen + ["-o", os.path.join(mnt, "gen.jsonl")])
    res["full_generate_listing"] = sorted(os.listdir(mnt))
    os.remove(os.path.join(mnt, "pad"))
    res["mountpoint"] = run(merge + ["-o", mnt, "--force"])
    subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
    res["readonly"] = run(merge + ["-o", os.path.join(mnt, "out")])
    res["readonly_generate"] = run(gen + ["-o", os.path.join(mnt, "gen.jsonl")])
    res["ro_listing"] = sorted(os.listdir(mnt))
    print(json.dumps(res))
""")


def _namespaces() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _namespaces(), reason="no unprivileged user/mount namespaces here")
def test_full_readonly_and_mounted_file_systems(world, tmp_path):
    proc = subprocess.run(["unshare", "-rm", sys.executable, "-c", NAMESPACE, str(world["a"]), str(world["b"]),
                           str(world["pairs"]), str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for case, words in (("full", "disk full"), ("full_generate", "disk full"), ("mountpoint", "mount point"),
                        ("readonly", "Read-only file system"), ("readonly_generate", "Read-only file system")):
        err = res[case]["err"]
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        # a progress bar drawn before the disk filled may stand above the one error line, never below it
        assert res[case]["code"] == 1 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], (case, err)
        assert words.lower() in errors[0].lower() and "Traceback" not in err, (case, err)
    assert res["full_listing"] == [] and res["full_generate_listing"] == ["pad"] and res["ro_listing"] == []


# ---------------------------------------------------------------- §2.2 no code from an input

@pytest.fixture(scope="module")
def pruned_pair(world) -> tuple[Path, Path, str]:
    """Two pruned models (layer 0 without attention); the first one's modelling file holds a payload."""
    pa = export_pruned(world["a"], world["root"] / "pa", [(0, "attn")])
    pb = export_pruned(world["b"], world["root"] / "pb", [(0, "attn")])
    marker = str(world["root"] / "pwned")
    with open(pa / MODELING_FILE, "a") as f:
        f.write(PAYLOAD.format(marker=marker))
    return pa, pb, marker


def _package_modeling(folder: Path) -> str:
    cfg = json.loads((folder / "config.json").read_text())
    from compress.checkpoint import Checkpoint

    return remote_modeling_source(family_for(cfg, Checkpoint(folder).names()), cfg["model_type"])[0]


def test_merge_and_distill_write_the_package_modelling_code(world, pruned_pair, tmp_path, capsys):
    pa, pb, marker = pruned_pair
    runs = {"merge": ["merge", "--method", "linear", pa, pb, "-o", tmp_path / "merged"],
            "distill": ["distill", "train", pa, "--data", world["pairs"], "--method", "sft", "--max-steps", "1",
                        "--max-length", "32", "-o", tmp_path / "distilled"]}
    for name, argv in runs.items():
        assert main([str(x) for x in argv]) == 0, capsys.readouterr().err
        out = Path(argv[argv.index("-o") + 1])
        text = (out / MODELING_FILE).read_text()
        assert "pwned" not in text and text == _package_modeling(out), name
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["auto_map"]["AutoModelForCausalLM"].startswith("modeling_compress_pruned.CompressPruned")
    assert not Path(marker).exists()


# ---------------------------------------------------------------- already clean: keep it so

def test_auto_map_code_is_never_run(world, tmp_path, capsys):
    evil = shutil.copytree(world["a"], tmp_path / "evil")
    marker = tmp_path / "pwned"
    (evil / "modeling_evil.py").write_text(PAYLOAD.format(marker=str(marker)))
    (evil / "configuration_evil.py").write_text(PAYLOAD.format(marker=str(marker)))
    cfg = json.loads((evil / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"}
    (evil / "config.json").write_text(json.dumps(cfg))
    assert main(["eval", "ppl", str(evil), "--data", str(world["text"]), "--seq-len", "16"]) == 0
    assert main(["merge", "--method", "linear", str(evil), str(world["b"]), "-o", str(tmp_path / "out")]) == 0
    assert not marker.exists() and not list((tmp_path / "out").glob("*.py"))


def test_yaml_python_tags_are_never_run(world, tmp_path, capsys):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: linear\nmodels: !!python/object/apply:os.system ['touch {marker}']\n")
    error_line(["merge", recipe, "-o", tmp_path / "out"], capsys)
    assert not marker.exists() and not (tmp_path / "out").exists()


class _Pickled:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_bin_pickle_is_never_run(world, tmp_path, capsys):
    evil = shutil.copytree(world["a"], tmp_path / "evil")
    (evil / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"model.norm.weight": torch.ones(64), "x": _Pickled(str(marker))}, evil / "pytorch_model.bin")
    for argv in (["inspect", evil], ["merge", "--method", "linear", evil, world["b"], "-o", tmp_path / "out"]):
        assert "weights_only" in error_line(argv, capsys)
    assert not marker.exists()


def test_truncated_checkpoint(world, tmp_path, capsys):
    bad = shutil.copytree(world["a"], tmp_path / "bad")
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    assert "truncated safetensors file" in error_line(["merge", "--method", "linear", bad, world["b"],
                                                       "-o", tmp_path / "out"], capsys)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
