"""`compress prune` end to end on tiny models (and once on the real SmolLM2): report, export,
resume, baselines, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from compress.checkpoint.reader import Checkpoint
from compress.cli import main
from compress.data import load_windows
from compress.model import load
from compress.prune import run as prune_run
from compress.prune.state import state_path
from tests.fixtures import WIKI_VALID

CAL = ["--data", str(WIKI_VALID), "--seq-len", "32", "--samples", "4"]


pytestmark = pytest.mark.usefixtures("one_thread")


def interrupt_after_saves(monkeypatch, n: int):
    """Make the n-th saved search state end the run like Ctrl-C; returns the undo."""
    real = prune_run.save_state
    calls = []

    def save_then_stop(path, fp, st):
        real(path, fp, st)
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(prune_run, "save_state", save_then_stop)
    return lambda: monkeypatch.setattr(prune_run, "save_state", real)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["prune", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def prune_json(capsys, *args: str) -> dict:
    code, out, err = cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def n_params(path: Path) -> int:
    ck = Checkpoint(path)
    total = sum(ck.info(n).numel for n in ck.names())
    if ck.config.get("tie_word_embeddings") and "lm_head.weight" in ck.names():
        total -= ck.info("lm_head.weight").numel
    return total


def calib_ppl(model_dir: Path, seq_len: int = 32, samples: int = 4) -> float:
    """Independent: transformers' own loss of the written checkpoint on the calibration windows."""
    model, tok = load(model_dir, "cpu", "fp32")
    win = load_windows(WIKI_VALID, tok, seq_len, samples, 42)
    with torch.no_grad():
        return math.exp(float(model(input_ids=win, labels=win).loss))


def test_blockpruner_end_to_end(tmp_path, capsys, tiny_models):
    src = tiny_models["llama"]
    rep = prune_json(capsys, src, "-o", tmp_path / "out", "--blocks", 3, *CAL)
    out = Path(rep["output"])
    assert (out / "prune_report.json").is_file() and (out / "prune_report.png").stat().st_size > 1000
    saved = json.loads((out / "prune_report.json").read_text())
    assert saved["sequence"] == rep["sequence"] and len(rep["steps"]) == 3
    assert [s["step"] for s in rep["steps"]] == [1, 2, 3]
    # the ratio counts what left the files; params left are what is in them
    assert rep["ratio"] == pytest.approx(1 - n_params(out) / n_params(src), abs=1e-12)
    assert rep["steps"][-1]["params_left"] == n_params(out)
    # the written model has the perplexity the search reported for its last step
    assert calib_ppl(out) == pytest.approx(rep["ppl"], rel=1e-4)
    assert rep["calibration"]["tokens"] == 4 * 31
    provenance = json.loads((out / "compress.json").read_text())
    assert "prune" in json.dumps(provenance)


def test_ratio_picks_smallest_prefix_and_zeroed_export(tmp_path, capsys, tiny_models):
    rep = prune_json(capsys, tiny_models["qwen3"], "-o", tmp_path / "out", "--ratio", 0.2, "--export", "zeroed", *CAL)
    assert rep["ratio"] >= 0.2 and (len(rep["steps"]) == 1 or rep["steps"][-2]["ratio"] < 0.2)
    assert n_params(Path(rep["output"])) == n_params(tiny_models["qwen3"])  # zeroed: same tensors
    assert calib_ppl(Path(rep["output"])) == pytest.approx(rep["ppl"], rel=1e-4)


@pytest.mark.parametrize("method", ["shortgpt", "sleb"])
def test_layer_baselines(tmp_path, capsys, tiny_models, method):
    rep = prune_json(capsys, tiny_models["gemma2"], "-o", tmp_path / "out", "--method", method, "--blocks", 2, *CAL)
    assert all(s["unit"].startswith("layer ") for s in rep["steps"]) and len(rep["steps"]) == 2
    layers = [int(s["unit"].split()[1]) for s in rep["steps"]]
    if method == "sleb":
        assert 0 not in layers and 3 not in layers
    if method == "shortgpt":
        bi = rep["block_influence"]
        assert layers == sorted(range(4), key=lambda i: (bi[f"layer {i}"], i))[:2]
    assert Checkpoint(Path(rep["output"])).config["num_hidden_layers"] == 2
    assert calib_ppl(Path(rep["output"])) == pytest.approx(rep["ppl"], rel=1e-4)


def test_pruning_an_already_pruned_model(tmp_path, capsys, tiny_models):
    first = prune_json(capsys, tiny_models["llama"], "-o", tmp_path / "a", "--blocks", 2, "--block-type", "attn", *CAL)
    second = prune_json(capsys, first["output"], "-o", tmp_path / "b", "--blocks", 2, *CAL)
    assert second["already_removed"], "the search must see the blocks the input lacks"
    assert not set(map(tuple, second["removed"])) & set(map(tuple, second["already_removed"]))
    assert calib_ppl(Path(second["output"])) == pytest.approx(second["ppl"], rel=1e-4)


def test_resume_continues_identically(tmp_path, capsys, tiny_models, monkeypatch):
    src = tiny_models["llama"]
    full = prune_json(capsys, src, "-o", tmp_path / "full", "--blocks", 4, *CAL)
    out = tmp_path / "part"
    restore = interrupt_after_saves(monkeypatch, 2)
    code, _, err = cli(capsys, src, "-o", out, "--blocks", 4, *CAL)
    assert code == 130 and not out.exists() and state_path(out).is_file()
    restore()
    # other settings or another model: refused, nothing written
    code, _, err = cli(capsys, src, "-o", out, "--blocks", 4, "--criterion", "ppl-per-param", "--resume", *CAL)
    assert code == 1 and "other settings" in err and "criterion" in err
    code, _, err = cli(capsys, tiny_models["mistral"], "-o", out, "--blocks", 4, "--resume", *CAL)
    assert code == 1 and "another model" in err
    resumed = prune_json(capsys, src, "-o", out, "--blocks", 4, "--resume", *CAL)
    assert resumed["sequence"] == full["sequence"]
    assert [s["ppl"] for s in resumed["steps"]] == [s["ppl"] for s in full["steps"]]
    assert not state_path(out).exists()


@pytest.mark.parametrize("args,message", [
    (["--blocks", "9"], "only 8 blocks"),
    (["--blocks", "5", "--block-type", "mlp"], "only 4 mlp blocks"),
    (["--ratio", "0"], "0<x<1"),
    (["--ratio", "1"], "0<x<1"),
    (["--ratio", "1.5"], "0<x<1"),
    (["--ratio", "0.99"], "can surely remove only"),
    (["--blocks", "0"], "x>=1"),
    (["--blocks", "-3"], "x>=1"),
    (["--blocks", "8"], "one must stay"),
    (["--blocks", "10000000000000000000000"], "at most --blocks 7"),
    ([], "--blocks N, --ratio R or --max-ppl X"),
    (["--blocks", "1", "--max-ppl", "1.0"], "exceeds --max-ppl"),
])
def test_bad_options(tmp_path, capsys, tiny_models, args, message):
    code, _, err = cli(capsys, tiny_models["llama"], "-o", tmp_path / "out", *args, *CAL)
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("error: ") and message in last
    assert not (tmp_path / "out").exists()


def test_bad_data_and_existing_output(tmp_path, capsys, tiny_models):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = cli(capsys, tiny_models["llama"], "-o", tmp_path / "o", "--blocks", 1, "--data", empty, "--seq-len", 32)
    assert code == 1 and "no text" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    code, _, err = cli(capsys, tiny_models["llama"], "-o", tmp_path / "full", "--blocks", 1, *CAL)
    assert code == 1 and "--force" in err and (tmp_path / "full" / "x").read_text() == "keep"


@pytest.mark.slow
def test_smollm2_end_to_end(tmp_path, capsys, smollm2):
    """The real model: 2 attention blocks on 2 short windows of Alpaca-style text (kept tiny: one
    candidate costs a 135M-parameter forward), fast search, physical export, CLI end to end."""
    data = Path(WIKI_VALID).parents[1] / "alpaca_eval" / "model_outputs.json"
    rep = prune_json(capsys, smollm2, "-o", tmp_path / "out", "--blocks", 2, "--block-type", "attn", "--data", data,
                     "--field", "instruction,output", "--seq-len", "48", "--samples", "2")
    out = Path(rep["output"])
    assert rep["ratio"] == pytest.approx(1 - n_params(out) / n_params(smollm2), abs=1e-12)
    assert Checkpoint(out).config["compress_pruned_blocks"]["attn"], "partially pruned layers are recorded"
    model, tok = load(out, "cpu", "fp32")
    win = load_windows(data, tok, 48, 2, 42, "instruction,output")
    with torch.no_grad():
        ppl = math.exp(float(model(input_ids=win, labels=win).loss))
    assert ppl == pytest.approx(rep["ppl"], rel=1e-4)
    assert rep["ppl"] > rep["calibration"]["dense_ppl"] * 0.5
