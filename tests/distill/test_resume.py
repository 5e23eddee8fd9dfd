"""Step checkpoints and --resume: never unpickled, verified, fingerprinted, exact; failures leave nothing."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file

from compress.checkpoint import writer as writer_mod
from compress.cli import main
from tests.distill.conftest import make_pairs
from tests.fixtures import make_tiny_model

TINY = ["--limit", "6", "--max-length", "64", "--batch-size", "2", "--lr", "1e-3", "--k", "8"]


class _Payload:
    """Unpickling this creates the file `marker`: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _base(student, pairs, teacher):
    return ["distill", "train", str(student), "--data", str(pairs), "--method", "kd", "--teacher", str(teacher),
            "--max-steps", "4", "--save-every", "2", "--grad-accum", "2", *TINY]


@pytest.fixture(scope="module")
def run_a(distill_models, tmp_path_factory):
    """A finished 4-step run that left its step-2 checkpoint."""
    tmp = tmp_path_factory.mktemp("resume")
    pairs = make_pairs(tmp / "pairs.jsonl", generated=True)
    base = _base(distill_models["student"], pairs, distill_models["teacher"])
    assert main([*base, "-o", str(tmp / "a"), "--checkpoint-dir", str(tmp / "ck")]) == 0
    return tmp, pairs, base


def _ckpt(run_a, tmp_path):
    tmp, pairs, base = run_a
    ck = tmp_path / "ck"
    shutil.copytree(tmp / "ck", ck)
    return ck, pairs, base


def _one_error(capsys) -> str:
    """The one `error:` line on stderr (progress bars aside), with no traceback."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_checkpoint_is_safetensors_and_json_with_a_manifest(run_a):
    tmp, _, _ = run_a
    step = tmp / "ck" / "step-0000002"
    files = sorted(p.relative_to(step).as_posix() for p in step.rglob("*") if p.is_file())
    assert all(f.endswith((".safetensors", ".json")) for f in files), files
    manifest = json.loads((step / "manifest.json").read_text())
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    trainer = json.loads((step / "trainer.json").read_text())
    assert trainer["step"] == 2 and trainer["fingerprint"]["options"]["lr"] == 1e-3
    opt = load_file(str(step / "optimizer" / "model.safetensors"))
    assert any(k.endswith("/exp_avg_sq") for k in opt) and all(torch.isfinite(v).all() for v in opt.values())


def test_resume_continues_bit_exactly(run_a, tmp_path):
    ck, _, base = _ckpt(run_a, tmp_path)
    assert main([*base, "-o", str(tmp_path / "b"), "--checkpoint-dir", str(ck), "--resume"]) == 0
    a = load_file(str(run_a[0] / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    hist = json.loads((tmp_path / "b" / "compress.json").read_text())["history"]
    assert [h["step"] for h in hist] == [3, 4]
    assert main([*base, "-o", str(tmp_path / "c"), "--checkpoint-dir", str(tmp_path / "none"), "--resume"]) == 1


def test_planted_pickle_is_never_loaded(run_a, tmp_path, capsys):
    ck, _, base = _ckpt(run_a, tmp_path)
    marker = tmp_path / "PWNED"
    step = ck / "step-0000002"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        (step / name).write_bytes(pickle.dumps(_Payload(marker)))
    assert main([*base, "-o", str(tmp_path / "b"), "--checkpoint-dir", str(ck), "--resume"]) == 1
    assert "not part of the checkpoint" in _one_error(capsys)
    # an accelerate-style checkpoint of an older compress: pickles only, no manifest
    for f in list(step.iterdir()):
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "pytorch_model.bin"):
        (step / name).write_bytes(pickle.dumps(_Payload(marker)))
    (step / "trainer.json").write_text(json.dumps({"step": 2, "epoch": 0, "batches_in_epoch": 4}))
    assert main([*base, "-o", str(tmp_path / "b"), "--checkpoint-dir", str(ck), "--resume"]) == 1
    assert "older compress" in _one_error(capsys)
    assert not marker.exists() and not (tmp_path / "b").exists()


def test_changed_or_garbage_files_are_refused(run_a, tmp_path, capsys):
    ck, _, base = _ckpt(run_a, tmp_path)
    step = ck / "step-0000002"
    (step / "trainer.json").write_text("garbage {")
    assert main([*base, "-o", str(tmp_path / "b"), "--checkpoint-dir", str(ck), "--resume"]) == 1
    assert "does not match its manifest" in _one_error(capsys)
    # a garbage trainer.json whose manifest was rewritten to match is still one error line
    manifest = json.loads((step / "manifest.json").read_text())
    from compress.checkpoint.provenance import file_sha256

    manifest["files"]["trainer.json"] = {"size": (step / "trainer.json").stat().st_size,
                                         "sha256": file_sha256(step / "trainer.json")}
    (step / "manifest.json").write_text(json.dumps(manifest))
    assert main([*base, "-o", str(tmp_path / "b"), "--checkpoint-dir", str(ck), "--resume"]) == 1
    assert "trainer.json is damaged" in _one_error(capsys)
    (step / "manifest.json").write_text("[1, 2")
    assert main([*base, "-o", str(tmp_path / "b"), "--checkpoint-dir", str(ck), "--resume"]) == 1
    assert "manifest.json is damaged" in _one_error(capsys)
    assert not (tmp_path / "b").exists()


def test_another_student_or_option_is_refused(distill_models, run_a, tmp_path, capsys):
    ck, pairs, base = _ckpt(run_a, tmp_path)
    # same architecture, other weights
    other = make_tiny_model(tmp_path / "other", "llama", layers=2, seed=9)
    args = [*base, "-o", str(tmp_path / "b"), "--checkpoint-dir", str(ck), "--resume"]
    assert main([a if a != str(distill_models["student"]) else str(other) for a in args]) == 1
    assert "the student's weights differ" in _one_error(capsys)
    # another architecture (3 layers)
    bigger = make_tiny_model(tmp_path / "bigger", "llama", layers=3, seed=1)
    assert main([a if a != str(distill_models["student"]) else str(bigger) for a in args]) == 1
    assert "was made by another run" in _one_error(capsys)
    # a changed learning rate
    assert main([*args, "--lr", "5e-4"]) == 1
    assert "--lr is 0.0005 now, 0.001 then" in _one_error(capsys)
    assert not (tmp_path / "b").exists()


def test_fresh_run_into_old_checkpoints_needs_force(run_a, tmp_path, capsys):
    ck, _, base = _ckpt(run_a, tmp_path)
    assert main([*base, "-o", str(tmp_path / "b"), "--checkpoint-dir", str(ck), "--max-steps", "1"]) == 1
    assert "--resume to continue it, or --force" in _one_error(capsys)
    assert (ck / "step-0000002").is_dir()


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


@pytest.mark.parametrize("failure", ["disk full", "interrupt"])
def test_failed_step_save_leaves_nothing(distill_models, pairs, tmp_path, monkeypatch, capsys, failure):
    """A full disk (or Ctrl-C / SIGTERM, which the CLI turns into KeyboardInterrupt) in the middle of
    writing a step checkpoint: one line, no temporary left, no output."""
    real = writer_mod._pwrite
    calls = {"n": 0}

    def fail(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 3:  # some bytes are written first, as on a real disk
            if failure == "disk full":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise KeyboardInterrupt
        return real(fd, data, offset)

    monkeypatch.setattr(writer_mod, "_pwrite", fail)
    ck = tmp_path / "ck"
    rc = main(["distill", "train", str(distill_models["student"]), "--data", str(pairs), "--method", "sft",
               "--max-steps", "3", "--save-every", "1", "-o", str(tmp_path / "out"), "--checkpoint-dir", str(ck), *TINY])
    if failure == "disk full":
        assert rc == 1 and "disk full while writing" in _one_error(capsys)
    else:
        assert rc == 130
    assert calls["n"] > 3 and not list(ck.glob("step-*")) and _leftovers(ck) == []
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


@pytest.mark.slow
def test_two_process_run_resumes_bit_exactly(distill_models, tmp_path, capsys):
    """DDP over two CPU processes (torchrun, gloo): the main process writes the checkpoint with every
    process's RNG state; a two-process resume ends with the same bits as the uninterrupted run, and a
    one-process resume is refused. About 30 s: three process launches, each importing torch."""
    import subprocess
    import sys

    pairs = make_pairs(tmp_path / "pairs.jsonl", n=8)
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "compress",
            "distill", "train", str(distill_models["student"]), "--data", str(pairs), "--method", "kd", "--teacher",
            str(distill_models["teacher"]), "--max-steps", "3", "--save-every", "2", "--checkpoint-dir",
            str(tmp_path / "ck"), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for out, extra in (("a", []), ("b", ["--resume"])):
        res = subprocess.run([*base, "-o", str(tmp_path / out), *extra], capture_output=True, text=True, env=env,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "ck" / "step-0000002" / "trainer.json").read_text())["world_size"] == 2
    rng = load_file(str(tmp_path / "ck" / "step-0000002" / "rng" / "model.safetensors"))
    assert rng["torch"].shape[0] == 2
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[n], b[n]) for n in a)
    one = [*base[base.index("compress") + 1:], "-o", str(tmp_path / "c"), "--resume"]
    assert main(one) == 1 and "number of processes differs (2 then, 1 now)" in _one_error(capsys)
