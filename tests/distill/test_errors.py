"""Bad input and failing disks in every distill command: one `error:` line, exit 1, nothing left behind."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from compress.cli import main
from compress.distill import teacher as teacher_mod

TINY = ["--limit", "6", "--max-length", "64", "--batch-size", "2", "--lr", "1e-3", "--k", "8"]


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "meta"])
def test_train_refuses_a_device_it_cannot_use(distill_models, pairs, tmp_path, capsys, device):
    """`--device cuda` without a GPU used to train on the CPU and exit 0."""
    rc = main(["distill", "train", str(distill_models["student"]), "--data", str(pairs), "--method", "sft",
               "--device", device, "-o", str(tmp_path / "out"), "--max-steps", "1", *TINY])
    assert rc == 1 and "device" in _one_error(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["-1", "nan", "inf"])
def test_generate_refuses_a_bad_temperature(distill_models, pairs, tmp_path, capsys, bad):
    rc = main(["distill", "generate", str(distill_models["student"]), "--data", str(pairs), "--max-length", "64",
               "--temperature", bad, "-o", str(tmp_path / "gen.jsonl")])
    assert rc == 1 and "temperature" in _one_error(capsys)
    assert not (tmp_path / "gen.jsonl").exists()


def test_generate_output_checks_come_first(distill_models, pairs, tmp_path, capsys):
    student = distill_models["student"]
    config = (student / "config.json").read_text()
    base = ["distill", "generate", str(student), "--data", str(pairs), "--max-length", "64", "--max-new-tokens", "2"]
    assert main([*base, "-o", str(student / "config.json"), "--force"]) == 1
    assert "inside the input" in _one_error(capsys)
    assert (student / "config.json").read_text() == config
    (tmp_path / "dir").mkdir()
    assert main([*base, "-o", str(tmp_path / "dir"), "--force"]) == 1
    assert "is a folder" in _one_error(capsys)
    assert main([*base, "-o", str(pairs), "--force"]) == 1
    assert "input" in _one_error(capsys)


def test_generate_disk_full(distill_models, pairs, tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "gen" / "gen.jsonl"
    rc = main(["distill", "generate", str(distill_models["student"]), "--data", str(pairs), "--max-length", "64",
               "--max-new-tokens", "2", "--limit", "2", "-o", str(out)])
    assert rc == 1 and "disk full" in _one_error(capsys)
    assert not out.exists() and _leftovers(out.parent) == []


def test_cache_teacher_disk_full(distill_models, pairs, tmp_path, capsys, monkeypatch):
    """safetensors reports a full disk as SafetensorError("... (os error 28)"); a partial shard is left by it."""
    from safetensors import SafetensorError

    def full(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(teacher_mod, "save_file", full)
    rc = main(["distill", "cache-teacher", str(distill_models["teacher"]), "--data", str(pairs), "--max-length", "64",
               "--k", "4", "-o", str(tmp_path / "cache")])
    assert rc == 1 and "disk full" in _one_error(capsys)
    assert not (tmp_path / "cache").exists() and _leftovers(tmp_path) == []


def test_checkpoint_dir_that_is_a_file_or_inside_an_input(distill_models, pairs, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    base = ["distill", "train", str(distill_models["student"]), "--data", str(pairs), "--method", "sft",
            "--save-every", "1", "-o", str(tmp_path / "out"), "--max-steps", "1", *TINY]
    assert main([*base, "--checkpoint-dir", str(tmp_path / "file")]) == 1
    assert "is a file" in _one_error(capsys)
    assert main([*base, "--checkpoint-dir", str(distill_models["student"] / "ck")]) == 1
    assert "input" in _one_error(capsys)
    assert (tmp_path / "file").read_text() == "x" and not (distill_models["student"] / "ck").exists()


@pytest.mark.parametrize("args, needle", [
    (["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"), (["--jsd-beta", "2"], "--jsd-beta"),
    (["--method", "nope"], "--method"), (["--precision", "fp16"], "--precision"), (["--beta", "-1"], "--beta"),
])
def test_train_options_are_validated_first(distill_models, pairs, tmp_path, capsys, args, needle):
    rc = main(["distill", "train", str(distill_models["student"]), "--data", str(pairs), "--method", "sft",
               "-o", str(tmp_path / "out"), *args])
    assert rc == 1 and needle in _one_error(capsys)


def test_config_file_describes_a_whole_run(distill_models, pairs, tmp_path, capsys):
    """`--config run.yaml` gives every option (paths included); the command line wins over it."""
    run = tmp_path / "run.yaml"
    run.write_text(f"method: sft\ndata: {pairs}\nmax-steps: 1\nlimit: 4\nmax_length: 64\nlr: 0.001\n"
                   f"precision: bfloat16\nbatch_size: 2\n")
    assert main(["distill", "train", str(distill_models["student"]), "--config", str(run), "--max-steps", "2",
                 "-o", str(tmp_path / "out"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    recipe = json.loads((tmp_path / "out" / "compress.json").read_text())["recipe"]
    assert res["steps"] == 2 and recipe["lr"] == 0.001 and recipe["precision"] == "bf16" and recipe["limit"] == 4
    run.write_text("method: sft\nlearning_rate: 1\n")
    assert main(["distill", "train", str(distill_models["student"]), "--config", str(run), "-o", str(tmp_path / "o2")]) == 1
    assert "unknown option 'learning_rate'" in _one_error(capsys)


def test_python_api_validates_options(distill_models, pairs, tmp_path):
    from compress import distill
    from compress.errors import CompressError

    with pytest.raises(CompressError, match="'lr'"):
        distill(distill_models["student"], pairs, tmp_path / "o", "sft", lr=float("inf"))
    with pytest.raises(CompressError, match="'no_such'"):
        distill(distill_models["student"], pairs, tmp_path / "o", "sft", no_such=1)


def test_dpo_beta_defaults_follow_the_recipes():
    """dpo: 0.01 (the ADPA teacher's and WRPO's recipes on summed log-probs; it was TRL's 0.1 unannounced),
    ln-dpo: 10 (FuseChat-3.0), hinge/ipo: TRL's 0.1; --help says so."""
    from compress.cli.distill import train_cmd
    from compress.distill.config import DistillConfig

    assert DistillConfig(method="dpo").dpo_beta == 0.01
    assert DistillConfig(method="ln-dpo").dpo_beta == 10.0
    assert DistillConfig(method="dpo", dpo_loss_type="ipo").dpo_beta == 0.1
    assert DistillConfig(method="dpo", beta=0.3).dpo_beta == 0.3
    beta_help = next(p.help for p in train_cmd.params if p.name == "beta")
    assert "dpo 0.01" in beta_help and "ln-dpo 10" in beta_help
