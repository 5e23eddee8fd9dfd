"""End to end on the real SmolLM2-135M-Instruct: prune -> cache teacher -> dckd -> generate -> adpa (CLI)."""

from __future__ import annotations

import json

import pytest
import torch

from compress.checkpoint.reader import Checkpoint
from compress.cli import main

pytestmark = pytest.mark.slow


def test_cli_distill_pipeline_on_smollm2(smollm2, shared_data, tmp_path, capsys):
    from compress.model import load
    from compress.prune.export import export_pruned

    hh = shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl"
    student = export_pruned(smollm2, tmp_path / "student", [(27, "attn"), (27, "mlp"), (28, "attn"), (28, "mlp"),
                                                            (20, "attn")])
    data = ["--data", str(hh), "--limit", "4", "--max-length", "96", "--max-prompt-length", "64",
            "--long-prompt", "truncate"]
    assert main(["distill", "cache-teacher", str(smollm2), *data, "--slots", "chosen,rejected",
                 "-o", str(tmp_path / "cache"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 4
    assert main(["distill", "train", str(student), *data, "--method", "dckd", "--teacher-cache", str(tmp_path / "cache"),
                 "--max-steps", "2", "--batch-size", "2", "--lr", "1e-5", "--eval-pairs", "2",
                 "-o", str(tmp_path / "dckd"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["steps"] == 2 and all(v == v for v in res["eval"].values()) and 0 <= res["eval"]["agree_teacher"] <= 1
    assert Checkpoint(tmp_path / "dckd").config["compress_pruned_blocks"] == Checkpoint(student).config["compress_pruned_blocks"]
    assert main(["distill", "generate", str(tmp_path / "dckd"), *data, "--max-new-tokens", "8", "--batch-size", "4",
                 "-o", str(tmp_path / "gen.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and any(r["student_response"] for r in rows)
    assert main(["distill", "train", str(tmp_path / "dckd"), "--data", str(tmp_path / "gen.jsonl"), *data[2:],
                 "--method", "adpa+", "--teacher", str(smollm2), "--ref-teacher", str(student), "--max-steps", "1",
                 "--batch-size", "2", "-o", str(tmp_path / "adpa")]) == 0
    model, tok = load(tmp_path / "adpa")
    assert torch.isfinite(model(tok("Hello", return_tensors="pt")["input_ids"]).logits).all()
    assert json.loads((tmp_path / "adpa" / "compress.json").read_text())["recipe"]["method"] == "adpa+"
