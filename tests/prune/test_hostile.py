"""Hostile input to `compress prune`: every case is one `error:` line and exit 1, nothing written,
and the errors an option or the model can cause come before any weight is loaded."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from compress import api  # `compress.prune` is the subpackage once it was imported
from compress.cli import main
from compress.errors import CompressError
from compress.prune.export import export_pruned
from compress.prune.state import state_path
from tests.fixtures import WIKI_VALID, make_tiny_model
from tests.prune.test_prune_cli import CAL, cli, interrupt_after_saves, prune_json

pytestmark = pytest.mark.usefixtures("one_thread")


def one_error(code: int, err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 1, err
    assert lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


def fails(capsys, *args) -> str:
    """`compress prune ARGS` must fail with one error line; returns it."""
    code, _, err = cli(capsys, *args)
    return one_error(code, err)


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if the model's weights are loaded (the error must come before)."""
    import importlib

    load_mod = importlib.import_module("compress.model.load")
    monkeypatch.setattr(load_mod, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))


def edited_copy(src: Path, dst: Path, **config) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# -- resume


def test_resume_refuses_other_weights_and_other_result_options(tmp_path, capsys, tiny_models, monkeypatch):
    src = tiny_models["llama"]
    other = make_tiny_model(tmp_path / "other", "llama", seed=1)  # same config, shapes, dtypes, tokenizer
    out = tmp_path / "out"
    restore = interrupt_after_saves(monkeypatch, 1)
    code, _, _ = cli(capsys, src, "-o", out, "--blocks", 2, *CAL)
    assert code == 130 and state_path(out).is_file()
    restore()
    saved = state_path(out).read_text()
    line = fails(capsys, other, "-o", out, "--blocks", 2, "--resume", *CAL)
    assert "another model" in line
    # --offload scores the same blocks with other float arithmetic: its own state
    line = fails(capsys, src, "-o", out, "--blocks", 2, "--resume", "--offload", *CAL)
    assert "other settings (offload differ)" in line
    line = fails(capsys, src, "-o", out, "--blocks", 2, "--resume", "--search", "naive", *CAL)
    assert "search differ" in line
    assert state_path(out).read_text() == saved and not out.exists()
    # how many removals are kept does not change the search: a larger --blocks continues it
    rep = prune_json(capsys, src, "-o", out, "--blocks", 3, "--resume", *CAL)
    assert len(rep["steps"]) == 3 and not state_path(out).exists()


class FillsUp:
    """A file that takes half of what is written to it, then reports a full disk."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_saving_the_state(tmp_path, capsys, tiny_models, monkeypatch):
    import compress.checkpoint.atomic as atomic

    out = tmp_path / "out"
    saves = []

    def open_(path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)
        if ".prune-state.json" in str(path) and "w" in mode:
            saves.append(path)
            if len(saves) == 2:  # the second step's state: the disk fills up while it is written
                return FillsUp(f)
        return f

    monkeypatch.setattr(atomic, "open", open_, raising=False)
    line = fails(capsys, tiny_models["llama"], "-o", out, "--blocks", 3, *CAL)
    assert "disk full" in line and str(state_path(out)) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [state_path(out).name]  # no temp file, no output
    kept = json.loads(state_path(out).read_text())  # the previous state, whole
    assert [s["step"] for s in kept["search"]["steps"]] == [1]


# -- the model


@pytest.mark.parametrize("layers", [1, 3, 6, -2, 0, True, "4", None])
def test_config_and_tensors_must_agree(tmp_path, capsys, tiny_models, no_load, layers):
    src = edited_copy(tiny_models["llama"], tmp_path / "m", num_hidden_layers=layers)
    line = fails(capsys, src, "-o", tmp_path / "out", "--blocks", 1, *CAL)
    assert f"num_hidden_layers = {layers!r}" in line and "the tensors hold 4 layers" in line
    with pytest.raises(CompressError, match="disagree"):  # the exporter plans with the same check
        export_pruned(src, tmp_path / "out", [(0, "attn")])
    assert not (tmp_path / "out").exists() and not state_path(tmp_path / "out").exists()


def test_a_model_type_transformers_does_not_know(tmp_path, capsys, tiny_models, no_load):
    src = edited_copy(tiny_models["llama"], tmp_path / "m", model_type="mystery", architectures=["MysteryForCausalLM"])
    line = fails(capsys, src, "-o", tmp_path / "out", "--blocks", 1, *CAL)
    assert "does not know model_type 'mystery'" in line


# -- options, all refused before the model is loaded


@pytest.mark.parametrize("args,message", [
    (["--blocks", "2", "--max-shard-size", "0"], "must be positive"),
    (["--blocks", "2", "--max-shard-size", "lots"], "invalid size"),
    (["--blocks", "8"], "one must stay"),  # every block of the model
    (["--blocks", "8", "--export", "mask"], "one must stay"),
    (["--method", "layer", "--blocks", "4"], "one must stay"),
    (["--max-ppl", "1e9", "--blocks", "8", "--export", "zeroed"], "one must stay"),
    (["--ratio", "0.7"], "can surely remove only"),
    (["--method", "sleb", "--blocks", "3"], "only 2 candidate layers"),
    (["--blocks", "1", "--seq-len", "513"], "longer than the model's context (max_position_embeddings = 512)"),
    (["--blocks", "1", "--device", "meta"], "'--device': device meta is not supported"),
    (["--blocks", "1", "--device", "cuda:99"], "'--device': device cuda:99 requested but no CUDA GPU"),
    (["--blocks", "1", "--dtype", "int8"], "invalid --dtype"),
    (["--blocks", "1", "--seed", str(2**70)], "too large"),
    (["--blocks", "1", "--max-ppl", "nan"], "finite"),
    (["--blocks", "1", "--samples", "2", "--calib-tokens", "64"], "alternatives"),
    (["--blocks", "1", "--calib-tokens", "8"], "less than one window"),
    (["--blocks", "1", "--block-type", "attn", "--method", "sleb"], "applies to --method blockpruner only"),
    (["--blocks", "1", "--data", "/no/such/file.txt"], "data file not found"),
])
def test_bad_options_before_any_work(tmp_path, capsys, tiny_models, no_load, args, message):
    line = fails(capsys, tiny_models["llama"], "-o", tmp_path / "out", *CAL[:4], *args)  # CAL without --samples
    assert message in line
    assert list(tmp_path.iterdir()) == []


def test_absurd_calibration_size_is_refused_before_generating(tmp_path, capsys, tiny_models, monkeypatch):
    import compress.data as data_mod

    monkeypatch.setattr(data_mod, "generate_windows", lambda *a, **k: pytest.fail("generated"))
    line = fails(capsys, tiny_models["llama"], "-o", tmp_path / "out", "--blocks", 1,
                          "--seq-len", 512, "--samples", 10**9)
    # 9 block boundaries (8 blocks + the embedding) x 10^9 x 512 tokens x 64 hidden x 4 bytes
    assert f"{9 * 10**9 * 512 * 64 * 4 / 2**30:.1f} GiB" in line and "--search naive" in line


def test_empty_calibration_data(tmp_path, capsys, tiny_models):
    for name, text in (("e.txt", " \n\n"), ("e.jsonl", ""), ("e.json", "[]")):
        (tmp_path / name).write_text(text)
        line = fails(capsys, tiny_models["llama"], "-o", tmp_path / "out", "--blocks", 1,
                              "--data", tmp_path / name, "--seq-len", 32)
        assert "no text" in line


def test_python_api_validates_like_the_cli(tmp_path, tiny_models):
    with pytest.raises(CompressError, match="invalid --blocks"):
        api.prune(tiny_models["llama"], tmp_path / "out", blocks=0)
    with pytest.raises(CompressError, match="invalid --ratio"):
        api.prune(tiny_models["llama"], tmp_path / "out", ratio=1.0)
    with pytest.raises(CompressError, match="unknown option 'no_such'"):
        api.prune(tiny_models["llama"], tmp_path / "out", blocks=1, no_such=3)
    with pytest.raises(CompressError, match="invalid --method"):
        api.prune(tiny_models["llama"], tmp_path / "out", blocks=1, method="magic")
    with pytest.raises(CompressError, match="one must stay"):  # after the output's lock was taken
        api.prune(tiny_models["llama"], tmp_path / "out", blocks=8, data=WIKI_VALID, seq_len=32)
    assert list(tmp_path.iterdir()) == []  # nothing written, the lock released


# -- an edited pruning.json (--export mask)


@pytest.fixture(scope="module")
def mask_folder(tmp_path_factory, tiny_models):
    out = tmp_path_factory.mktemp("mask") / "m"
    assert main(["prune", str(tiny_models["llama"]), "-o", str(out), "--blocks", "1", "--export", "mask",
                 *map(str, CAL)]) == 0
    return out


ALL = [[i, k] for i in range(4) for k in ("attn", "mlp")]


@pytest.mark.parametrize("removed,message", [
    ([[99, "attn"]], "layer 99: the model has layers 0..3"),
    ([[-1, "mlp"]], "layers 0..3"),
    ([[0, "ffn"]], "unknown block kind 'ffn'"),
    ([[1, "attn"], [1, "attn"]], "listed twice"),
    ([["1", "attn"]], "layers 0..3"),
    (ALL, "every block of the model"),
])
def test_edited_mask_is_refused_at_load_eval_and_inspect(tmp_path, capsys, mask_folder, removed, message):
    folder = tmp_path / "m"
    shutil.copytree(mask_folder, folder)
    pj = json.loads((folder / "pruning.json").read_text())
    pj["removed"] = removed
    (folder / "pruning.json").write_text(json.dumps(pj))
    with pytest.raises(CompressError, match=message):
        api.load(folder)
    for args in (["inspect", str(folder)],
                 ["eval", "ppl", str(folder), "--data", str(WIKI_VALID), "--seq-len", "32", "--max-windows", "1"]):
        capsys.readouterr()
        line = one_error(main(args), capsys.readouterr().err)
        assert message in line and "pruning.json" in line
