"""The GPU paths of every command, checked against the same command on CPU.

Skipped where no CUDA device is present (CI has none). `COMPRESS_TEST_DEVICE=cpu` runs the same
comparisons CPU against CPU, which checks the test itself on a machine without a GPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compress.cli import main
from tests.distill.conftest import make_pairs
from tests.fixtures import WIKI_TEST, WIKI_VALID, make_tiny_model
from tests.merge.conftest import make_variant

DEV = os.environ.get("COMPRESS_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEV.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device")
CAL = ["--data", str(WIKI_VALID), "--seq-len", "32", "--samples", "4"]


def state(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def cli_json(capsys, *args) -> dict:
    capsys.readouterr()
    code = main([str(a) for a in args] + ["--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("cuda") / "llama", "llama", layers=4, seed=3)


def test_prune_search_same_on_device(model, tmp_path, capsys):
    """naive, fast and offload on the device choose CPU's sequence, with CPU's perplexities."""
    cpu = cli_json(capsys, "prune", model, "-o", tmp_path / "cpu", "--blocks", 4, "--dtype", "fp32", *CAL)
    for search in ("naive", "fast"):
        dev = cli_json(capsys, "prune", model, "-o", tmp_path / search, "--blocks", 4, "--dtype", "fp32",
                       "--search", search, "--device", DEV, *CAL)
        assert dev["sequence"] == cpu["sequence"]
        for a, b in zip(dev["steps"], cpu["steps"], strict=True):
            assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-4)
    off = cli_json(capsys, "prune", model, "-o", tmp_path / "off", "--blocks", 4, "--dtype", "fp32", "--offload",
                   "--device", DEV, *CAL)
    assert off["sequence"] == cpu["sequence"]
    w_cpu, w_dev = state(tmp_path / "cpu"), state(tmp_path / "fast")
    assert w_cpu.keys() == w_dev.keys() and all(torch.equal(w_cpu[k], w_dev[k]) for k in w_cpu)


def test_prune_bf16_on_device(model, tmp_path, capsys):
    rep = cli_json(capsys, "prune", model, "-o", tmp_path / "bf", "--blocks", 2, "--dtype", "bf16", "--device", DEV,
                   *CAL)
    assert len(rep["sequence"]) == 2 and all(s["ppl"] > 1 for s in rep["steps"])
    # bf16 is the search's compute dtype; the checkpoint keeps the stored (fp32) weights, not bf16 copies
    assert all(t.dtype == torch.float32 for t in state(tmp_path / "bf").values())


@pytest.mark.parametrize("method,params", [("linear", []), ("ties", ["--set", "density=0.5"]),
                                           ("dare_ties", ["--set", "density=0.5"]), ("slerp", ["--set", "t=0.3"])])
def test_merge_same_on_device(model, tmp_path, capsys, method, params):
    """Same result on the device as on CPU; DARE's seeded masks too (drawn on CPU, whatever the device)."""
    a, b = make_variant(model, tmp_path / "a", 1), make_variant(model, tmp_path / "b", 2)
    models = [a] if method == "slerp" else [a, b]
    for name, dev in (("ref", "cpu"), ("dev", DEV)):
        cli_json(capsys, "merge", "--method", method, "--base", model, *models, *params, "-o", tmp_path / name,
                 "--device", dev, "--seed", 7)
    ref, got = state(tmp_path / "ref"), state(tmp_path / "dev")
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)


def test_eval_ppl_same_on_device(model, capsys):
    args = ["eval", "ppl", model, "--data", WIKI_TEST, "--seq-len", 64, "--max-windows", 4, "--dtype", "fp32"]
    cpu = cli_json(capsys, *args)
    dev = cli_json(capsys, *args, "--device", DEV)
    assert dev["ppl"] == pytest.approx(cpu["ppl"], rel=1e-5)


def test_distill_train_same_on_device(tmp_path, capsys):
    root = tmp_path / "m"
    teacher = make_tiny_model(root / "teacher", "llama", layers=4, seed=0)
    student = make_tiny_model(root / "student", "llama", layers=2, seed=1)
    pairs = make_pairs(tmp_path / "pairs.jsonl")
    lr, steps = 1e-3, 2
    assert main(["distill", "cache-teacher", str(teacher), "--data", str(pairs), "--max-length", "64", "--k", "8",
                 "--limit", "6", "-o", str(tmp_path / "cache"), "--device", DEV]) == 0
    for name, dev in (("ref", "cpu"), ("dev", DEV)):
        assert main(["distill", "train", str(student), "--data", str(pairs), "--method", "dckd", "--teacher-cache",
                     str(tmp_path / "cache"), "-o", str(tmp_path / name), "--max-steps",
                     str(steps), "--limit", "6", "--max-length", "64", "--batch-size", "2", "--lr", str(lr),
                     "--k", "8", "--device", dev, "--seed", "0"]) == 0
    start = state(student)
    ref, got = state(tmp_path / "ref"), state(tmp_path / "dev")
    moved = 0
    for k in ref:
        # Adam's first steps move each weight by about lr * sign(grad); only weights whose gradient is
        # ~0 may flip sign between devices, so the two results agree to 2 * lr * steps at most.
        diff = (got[k].float() - ref[k].float()).abs().max().item()
        assert diff <= 2 * lr * steps + 1e-6, (k, diff)
        moved += int(not torch.equal(ref[k], start[k]))
    assert moved > 0


def test_index_tie_break_selects_the_same_entries_on_device():
    """`tie_break: index` keeps the same entries on the device as on CPU, ties included."""
    from compress.merge.methods import sparsify

    g = torch.Generator().manual_seed(0)
    d = (torch.randn(1 << 20, generator=g) * 0.02).bfloat16().float()  # bf16 values: ties everywhere
    for plan in (lambda x: sparsify.magnitude_plan(x, 0.3, "l1", tie_break="index"),
                 lambda x: sparsify.breadcrumbs_plan(x, 0.5, 0.01, "none", tie_break="index")):
        ref, got = plan(d.clone()), plan(d.clone().to(DEV))
        assert torch.equal(got.keep.cpu(), ref.keep)
