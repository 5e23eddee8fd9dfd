"""The training loop on tiny real models: every method end to end, resume, NaN stop, pruned student."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from compress.checkpoint.reader import Checkpoint
from compress.cli import main
from compress.distill.config import DistillConfig
from compress.distill.registry import METHODS
from compress.distill.train import train
from compress.errors import CompressError

TINY = ["--limit", "6", "--max-length", "64", "--batch-size", "2", "--lr", "1e-3", "--k", "8"]


def _weights(folder):
    ck = Checkpoint(folder)
    return {n: ck.get(n).float().clone() for n in ck.names()}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_saves(distill_models, pairs, tmp_path, method):
    out = tmp_path / "out"
    args = ["distill", "train", str(distill_models["student"]), "--data", str(pairs), "--method", method,
            "-o", str(out), "--max-steps", "2", "--eval-pairs", "2", "--json"] + TINY
    if method in ("kd", "dckd", "adpa", "adpa+"):
        args += ["--teacher", str(distill_models["teacher"])]
    if method in ("adpa", "adpa+"):
        args += ["--ref-teacher", str(distill_models["ref"])]
    if method in ("kd", "adpa"):
        args += ["--precision", "bf16"]  # switches precision between runs in one process
    assert main(args) == 0
    before, after = _weights(distill_models["student"]), _weights(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[n], after[n]) for n in before)
    prov = json.loads((out / "compress.json").read_text())
    assert prov["recipe"]["method"] == method
    assert (out / "tokenizer.json").is_file() and Checkpoint(out).config == Checkpoint(distill_models["student"]).config


def test_sft_loss_decreases(distill_models, pairs, tmp_path):
    cfg = DistillConfig(method="sft", lr=3e-3, max_steps=12, batch_size=4, max_length=64, warmup_ratio=0.0,
                        scheduler="constant_with_warmup", limit=4)
    res = train(distill_models["student"], pairs, tmp_path / "o", cfg)
    hist = json.loads((tmp_path / "o" / "compress.json").read_text())["history"]
    assert res["steps"] == 12 and hist[-1]["loss"] < 0.7 * hist[0]["loss"]


def test_resume_continues_exactly(distill_models, pairs, tmp_path):
    base = ["distill", "train", str(distill_models["student"]), "--data", str(pairs), "--method", "kd",
            "--teacher", str(distill_models["teacher"]), "--max-steps", "4", "--save-every", "2",
            "--grad-accum", "2"] + TINY
    ck = tmp_path / "ck"
    assert main(base + ["-o", str(tmp_path / "a"), "--checkpoint-dir", str(ck)]) == 0
    assert [p.name for p in ck.glob("step-*")] == ["step-0000002"]
    assert main(base + ["-o", str(tmp_path / "b"), "--checkpoint-dir", str(ck), "--resume"]) == 0
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.allclose(a[n].float(), b[n].float(), atol=1e-6) for n in a)
    assert main(base + ["-o", str(tmp_path / "c"), "--checkpoint-dir", str(tmp_path / "none"), "--resume"]) == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(distill_models, pairs, tmp_path):
    cfg = DistillConfig(method="sft", lr=1e30, max_steps=6, save_every=1, warmup_ratio=0.0, max_grad_norm=0.0,
                        scheduler="constant_with_warmup", max_length=64)
    with pytest.raises(CompressError, match=r"loss became .* last good checkpoint is .*step-000000\d"):
        train(distill_models["student"], pairs, tmp_path / "out", cfg, checkpoint_dir=str(tmp_path / "ck"))
    assert not (tmp_path / "out").exists()
    assert list((tmp_path / "ck").glob("step-*"))


def test_existing_output_needs_force(distill_models, pairs, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    args = ["distill", "train", str(distill_models["student"]), "--data", str(pairs), "--method", "sft",
            "-o", str(tmp_path / "out"), "--max-steps", "1"] + TINY
    assert main(args) == 1 and "--force" in capsys.readouterr().err
    assert (tmp_path / "out" / "x").read_text() == "keep"


def test_physically_pruned_student(distill_models, pairs, tmp_path):
    """A `compress prune` output (a layer without attention, one without MLP) trains and saves as pruned."""
    from compress.model import load
    from compress.prune.export import export_pruned

    pruned = export_pruned(distill_models["teacher"], tmp_path / "pruned", [(1, "attn"), (2, "mlp"), (3, "attn"),
                                                                             (3, "mlp")])
    cfg_in = Checkpoint(pruned).config
    assert cfg_in.get("compress_pruned_blocks") and cfg_in["num_hidden_layers"] == 3
    assert main(["distill", "cache-teacher", str(distill_models["teacher"]), "--data", str(pairs), "--max-length", "64",
                 "--slots", "chosen,rejected", "--k", "8", "--limit", "6", "-o", str(tmp_path / "cache")]) == 0
    assert main(["distill", "train", str(pruned), "--data", str(pairs), "--method", "dckd", "--teacher-cache",
                 str(tmp_path / "cache"), "-o", str(tmp_path / "out"), "--max-steps", "2"] + TINY) == 0
    assert Checkpoint(tmp_path / "out").config["compress_pruned_blocks"] == cfg_in["compress_pruned_blocks"]
    model, tok = load(tmp_path / "out")
    ids = tok("hello world", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()
    assert main(["distill", "generate", str(tmp_path / "out"), "--data", str(pairs), "--max-length", "64",
                 "--max-new-tokens", "4", "-o", str(tmp_path / "gen.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(isinstance(r["student_response"], str) for r in rows)


def test_activation_checkpointing_gives_the_same_weights(distill_models, pairs, tmp_path):
    """Recomputing activations in the backward pass changes memory, not the result."""
    base = ["distill", "train", str(distill_models["student"]), "--data", str(pairs), "--method", "dpo",
            "--max-steps", "2"] + TINY
    assert main([*base, "-o", str(tmp_path / "a")]) == 0
    assert main([*base, "--activation-checkpointing", "-o", str(tmp_path / "b")]) == 0
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    assert any(not torch.equal(a[n], _weights(distill_models["student"])[n]) for n in a)
