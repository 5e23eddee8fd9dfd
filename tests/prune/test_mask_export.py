"""`compress prune --export mask`: pruning.json + a reference to the base, re-applied at load.

References: the dense base loaded with plain transformers and masked in memory (test_export.masked),
and the physical export of the same removals.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import compress
from compress.cli import main
from compress.errors import CompressError
from compress.model.load import load, load_model
from compress.prune.export import export_pruned
from tests.fixtures import WIKI_VALID
from tests.prune.test_export import IDS, logits, masked
from tests.prune.test_prune_cli import CAL, n_params, prune_json

pytestmark = pytest.mark.usefixtures("one_thread")


def run_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(list(map(str, args))) == 0
    return json.loads(capsys.readouterr().out)


def test_mask_export_loads_like_masked_and_physical(tmp_path, capsys, tiny_models):
    src = tiny_models["gemma2"]  # sandwich norms, tied embeddings, sliding windows (IDS: 48 > 32)
    rep = prune_json(capsys, src, "-o", tmp_path / "mask", "--blocks", 3, "--export", "mask", *CAL)
    out = Path(rep["output"])
    names = {f.name for f in out.iterdir()}
    assert "pruning.json" in names and "prune_report.json" in names and "compress.json" in names
    assert not any(n.endswith(".safetensors") for n in names) and "config.json" not in names
    pj = json.loads((out / "pruning.json").read_text())
    assert pj["k"] == 3 and [s["unit"] for s in pj["steps"]] == rep["sequence"]
    assert [s["ppl"] for s in pj["steps"]] == [s["ppl"] for s in rep["steps"]]
    assert pj["base"]["path"] == str(Path(src).resolve()) and len(pj["base"]["weights_sha256"]) == 64
    assert pj["calibration"]["seed"] == 42 and pj["calibration"]["seq_len"] == 32 and pj["method"] == "blockpruner"
    removed = [tuple(b) for b in pj["removed"]]
    assert len(removed) == 3

    model, tok = load(out, "cpu", "fp32")
    assert tok("hello").input_ids
    got = logits(model, IDS)
    assert torch.equal(got, logits(masked(src, removed), IDS))
    phys = export_pruned(src, tmp_path / "phys", removed)
    assert torch.allclose(logits(load_model(phys, dtype="fp32"), IDS), got, atol=1e-5, rtol=1e-5)

    info = run_json(capsys, "inspect", out, "--json")
    assert info["pruned"] and info["format"] == "mask" and info["parameters"] == n_params(phys)
    assert info["blocks"]["total"] == 8 - 3 and sum(info["parameters_by_kind"].values()) == info["parameters"]
    ppl_mask = run_json(capsys, "eval", "ppl", out, "--data", WIKI_VALID, "--seq-len", 32, "--max-windows", 3,
                        "--dtype", "fp32", "--json")
    ppl_phys = run_json(capsys, "eval", "ppl", phys, "--data", WIKI_VALID, "--seq-len", 32, "--max-windows", 3,
                        "--dtype", "fp32", "--json")
    assert ppl_mask["ppl"] == pytest.approx(ppl_phys["ppl"], rel=1e-5)
    res = compress.evaluate([out, src], ["ppl"], data=WIKI_VALID, seq_len=32, max_windows=2, dtype="fp32")
    h_mask, h_base = (m["hash"] for m in res["models"])  # model hashes: a mask folder has no weight file
    assert h_mask["files"] == {"pruning.json": hashlib.sha256((out / "pruning.json").read_bytes()).hexdigest()}
    assert h_mask["sha256"] != h_base["sha256"] and h_base["sha256"] == pj["base"]["weights_sha256"]


def test_mask_refuses_a_changed_or_moved_base(tmp_path, capsys, tiny_models):
    from safetensors.torch import load_file, save_file

    base = tmp_path / "base"
    shutil.copytree(tiny_models["llama"], base)
    prune_json(capsys, base, "-o", tmp_path / "m", "--blocks", 1, "--export", "mask", *CAL)
    load(tmp_path / "m")  # unchanged: loads
    weights = base / "model.safetensors"
    sd = load_file(weights)
    name = "model.layers.0.mlp.up_proj.weight"
    sd[name] = sd[name] + 1e-3  # same names, shapes and dtypes: only the values differ
    save_file(sd, weights, metadata={"format": "pt"})
    with pytest.raises(CompressError, match="changed since"):
        load(tmp_path / "m")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "m")]) == 1
    assert "changed since" in capsys.readouterr().err
    base.rename(tmp_path / "elsewhere")
    with pytest.raises(CompressError, match="moved or deleted"):
        load(tmp_path / "m")


def test_mask_finds_a_base_moved_with_it_and_skips_rehashing_an_unchanged_base(tmp_path, capsys, tiny_models,
                                                                                  monkeypatch):
    import os

    from compress.prune import maskfile as mf

    root = tmp_path / "a"
    shutil.copytree(tiny_models["llama"], root / "base")
    prune_json(capsys, root / "base", "-o", root / "masks" / "m", "--blocks", 1, "--export", "mask", *CAL)
    pj = json.loads((root / "masks" / "m" / "pruning.json").read_text())
    assert pj["base"]["relative_path"] == os.path.join("..", "..", "base")
    assert set(pj["base"]["files"]) == {"model.safetensors", "config.json"}
    want = logits(load(root / "masks" / "m", "cpu", "fp32")[0], IDS)

    calls = []
    real = mf.weights_hash
    monkeypatch.setattr(mf, "weights_hash", lambda d: calls.append(d) or real(d))
    load(root / "masks" / "m")
    assert calls == []  # sizes and mtimes as recorded: the base is not read again

    moved = tmp_path / "b"
    root.rename(moved)  # base and mask folder moved together: found through the relative path
    got = logits(load(moved / "masks" / "m", "cpu", "fp32")[0], IDS)
    assert torch.equal(got, want)
    info = run_json(capsys, "inspect", moved / "masks" / "m", "--json")
    assert info["base"] == str((moved / "base").resolve())

    weights = moved / "base" / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes: hashed, accepted
    load(moved / "masks" / "m")
    assert len(calls) == 1
    with open(weights, "r+b") as f:  # same size, one weight byte flipped (new mtime): hashed, refused
        f.seek(st.st_size - 1)
        b = f.read(1)
        f.seek(st.st_size - 1)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(CompressError, match="changed since"):
        load(moved / "masks" / "m")
