"""SEFT: reviser pairs and rates on hand-built samples; the command end to end on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.cli import main
from compress.errors import CompressError
from compress.fuse.seft import REVISER_FORMAT, rates, reviser_records


def _samples(rows):
    return [{"index": i, "prompt": p, "samples": s} for i, (p, s) in enumerate(rows)]


def test_reviser_records_weak_to_strong_and_keep():
    fmt = "{prompt} | {draft}"
    rows = _samples([
        ("q0", {"a": [{"text": "A", "score": {"verifier": 1.0}}, {"text": "B", "score": {"verifier": 0.0}}],
                "t": [{"text": "C", "score": {"verifier": 0.0}}]}),
        ("q1", {"a": [{"text": "D", "score": {"verifier": 0.0}}], "t": [{"text": "B", "score": {"verifier": 0.0}}]}),
        ("q2", {"a": [{"text": "E", "score": {"verifier": 1.0}}], "t": [{"text": "E!", "score": {"verifier": 1.0}}]}),
    ])
    recs, counts = reviser_records(rows, fmt, keep_pairs=True, seed=1)
    assert counts == {"revise": 1, "keep": 2, "no_strong": 1, "no_weak": 1}
    revise = [r for r in recs if r["kind"] == "revise"]
    assert len(revise) == 1 and revise[0]["chosen"] == "A" and revise[0]["prompt"] in ("q0 | B", "q0 | C")
    keep = [r for r in recs if r["kind"] == "keep"]
    assert all(r["prompt"].endswith("| " + r["chosen"]) for r in keep)  # strong -> itself
    recs, counts = reviser_records(rows, fmt, keep_pairs=False)
    assert [r["kind"] for r in recs] == ["revise"] and counts["keep"] == 0
    rewards = _samples([("q", {"a": [{"text": "lo", "score": {"reward": -1.0}}, {"text": "hi", "score": {"reward": 2.0}}]})])
    (rev, keep) = reviser_records(rewards, fmt)[0]
    assert (rev["prompt"], rev["chosen"], keep["chosen"]) == ("q | lo", "hi", "hi")
    with pytest.raises(CompressError, match="no reviser pairs"):
        reviser_records(rows[1:2], fmt)
    assert "{prompt}" in REVISER_FORMAT and "{draft}" in REVISER_FORMAT


def test_rates():
    r = rates([1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0, 0.0])
    assert r["keep_rate"] == 0.5 and r["fix_rate"] == pytest.approx(1 / 3)
    assert r["sample_acc"] == 0.4 and r["revision_acc"] == 0.4
    assert rates([1.0], [1.0])["fix_rate"] is None


def test_seft_command(distill_models, tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    rows = _samples([(f"Question {i}: pick one", {"a": [{"text": "A", "score": {"verifier": 1.0}},
                                                       {"text": "C", "score": {"verifier": 0.0}}]}) for i in range(4)])
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: pick one", "reference": "A"}) + "\n" for i in range(3)))
    out = tmp_path / "policy"
    args = ["distill", "seft", str(distill_models["student"]), "--samples", str(samples), "--prompts", str(prompts),
            "-o", str(out), "--rounds", "2", "--max-steps", "1", "--batch-size", "2", "--max-new-tokens", "4",
            "--max-length", "96", "--verifier", "choice", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reviser_pairs"] == {"revise": 4, "keep": 4, "no_strong": 0, "no_weak": 0}
    assert [e["round"] for e in report["rounds"]] == [1, 2]
    for e in report["rounds"]:
        assert e["samples"] == 3 and e["samples_right"] + e["samples_wrong"] == 3
        assert set(e) >= {"fix_rate", "keep_rate", "unchanged"}
    prov = json.loads((out / "compress.json").read_text())
    assert prov["recipe"]["method"] == "seft" and prov["seft"]["rounds"] == report["rounds"]
    assert (out / "model.safetensors").is_file() and "fix rate" in (out / "README.md").read_text()
    assert not Path(str(out) + ".seft").exists()
    capsys.readouterr()
    assert main(args[:-1] + ["--temperature", "0.5"]) == 1  # the output exists: --force needed
    assert "pass --force" in capsys.readouterr().err


def test_seft_resume_refuses_other_options(distill_models, tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"index": 0, "prompt": "q", "samples": {"a": [{"text": "A", "score": {"verifier": 1.0}}]}}) + "\n")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "q", "reference": "A"}) + "\n")
    work = tmp_path / "w"
    work.mkdir()
    (work / "seft.json").write_text(json.dumps({"config": {}, "policy": "x"}))
    assert main(["distill", "seft", str(distill_models["student"]), "--samples", str(samples), "--prompts", str(prompts),
                 "-o", str(tmp_path / "o"), "--work", str(work)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other options" in err[0]
    assert main(["distill", "seft", str(distill_models["student"]), "--samples", str(tmp_path / "none.jsonl"),
                 "--prompts", str(prompts), "-o", str(tmp_path / "o2"), "--verifier", "gsm8k"]) == 1
    assert "cannot score free text" in capsys.readouterr().err
