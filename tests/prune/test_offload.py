"""`--offload`: the layer-streamed search on tiny real checkpoints of every family.

The streamed search must choose exactly what the naive loop (the whole model in memory, masked,
re-run per candidate) chooses, with the same scores, while at most one decoder layer's weights are
materialised at any time - checked with forward pre-hooks on every weight-holding module of the
skeleton, which look at where every parameter of the model lives when that module runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress.arch import family_for
from compress.checkpoint.reader import Checkpoint
from compress.model import load
from compress.prune.baselines import SLEB_BARRIERS, shortgpt_scores
from compress.prune.evaluators import NaiveEvaluator
from compress.prune.mask import decoder_layers
from compress.prune.offload import OffloadEvaluator, StreamedRunner, build_skeleton
from compress.prune.params import checkpoint_params
from compress.prune.score import BlockRunner, position
from compress.prune.search import GreedySearch, StopRule
from compress.prune.state import state_path
from compress.prune.units import block_units, layer_units
from tests.fixtures import FAMILIES
from tests.prune.test_prune_cli import CAL, calib_ppl, cli, interrupt_after_saves, prune_json

SEQ = 40  # longer than the tiny Gemmas' sliding window (32): local and global layers differ


pytestmark = pytest.mark.usefixtures("one_thread", "quiet")


def calib(n: int = 4, t: int = SEQ, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 512, (n, t), generator=torch.Generator().manual_seed(seed))


def naive(path: Path, units_fn, win, blocks: int, criterion: str = "ppl"):
    ck = Checkpoint(path)
    model, _ = load(path, "cpu", "fp32")
    fam = family_for(ck.config, ck.names())
    params = checkpoint_params(ck)
    runner = BlockRunner(model, fam)
    units = units_fn(runner.n_layers, params)
    ev = NaiveEvaluator(runner, win, 2)
    try:
        return GreedySearch(ev, units, stop=StopRule(blocks=blocks), total_params=params.total, search="naive",
                            criterion=criterion).run()
    finally:
        ev.close()


def streamed(path: Path, units_fn, win, blocks: int, criterion: str = "ppl", **kw):
    ck = Checkpoint(path)
    fam = family_for(ck.config, ck.names())
    params = checkpoint_params(ck)
    runner = StreamedRunner(build_skeleton(ck, torch.float32, torch.device("cpu")), fam, ck, torch.device("cpu"))
    units = units_fn(runner.n_layers, params)
    ev = OffloadEvaluator(runner, win, 2, removed=runner.removed_in_model())
    res = GreedySearch(ev, units, stop=StopRule(blocks=blocks), total_params=params.total, criterion=criterion,
                       **kw).run()
    return res, runner, ev


def mix(n, params):
    return block_units(n, "mix", {position(b) for b in params.blocks}, params.blocks)


def assert_same(a, b):
    assert b.sequence == a.sequence
    assert b.dense_loss == pytest.approx(a.dense_loss, rel=1e-6)
    for sa, sb in zip(a.steps, b.steps, strict=True):
        assert set(sb.scores) == set(sa.scores)
        for name, v in sa.scores.items():
            assert sb.scores[name]["complete"]
            assert sb.scores[name]["ppl"] == pytest.approx(v["ppl"], rel=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_offload_equals_naive(tiny_models, family):
    win = calib()
    ref = naive(tiny_models[family], mix, win, 3)
    got, runner, ev = streamed(tiny_models[family], mix, win, 3)
    assert_same(ref, got)
    # every layer read once per pass: one pass for the dense loss, one per step; nothing left on the device
    st = runner.streamer
    assert {st.loads[f"model.layers.{i}"] for i in range(4)} == {1 + 3} and ev.passes == 4
    assert st.resident == {} and st.loads["model.embed_tokens"] == 1


def test_offload_layer_units_and_ppl_per_param(tiny_models):
    win = calib()

    def sleb(n, params):
        return layer_units(n, set(range(2 * n)), params.blocks, SLEB_BARRIERS)

    assert_same(naive(tiny_models["gemma3"], sleb, win, 2), streamed(tiny_models["gemma3"], sleb, win, 2)[0])
    assert_same(naive(tiny_models["qwen2"], mix, win, 2, "ppl-per-param"),
                streamed(tiny_models["qwen2"], mix, win, 2, "ppl-per-param")[0])
    # lazy search with M covering every candidate re-scores everything: the exact sequence
    exact = naive(tiny_models["llama"], mix, win, 3)
    assert streamed(tiny_models["llama"], mix, win, 3, search="lazy", lazy_m=8)[0].sequence == exact.sequence


def test_streamed_block_influence_equals_hooked_model(tiny_models):
    """ShortGPT's BI from the streamed pass equals the hooks on the loaded model's own forward."""
    path = tiny_models["gemma2"]
    win = calib()
    model, _ = load(path, "cpu", "fp32")
    ck = Checkpoint(path)
    ref = shortgpt_scores(model, family_for(ck.config, ck.names()), win, 2)
    _, _, ev = streamed(path, mix, win, 0)
    assert ev.block_influence() == pytest.approx(ref, rel=1e-5, abs=1e-7)


def test_at_most_one_layer_materialised(tiny_models):
    """Forward pre-hooks on every module that owns weights: when it runs, its own weights are real,
    and no other decoder layer (nor the embedding or the head) holds a single real parameter."""
    path = tiny_models["gemma3"]  # tied embeddings: the head is read from the embedding tensor
    ck = Checkpoint(path)
    fam = family_for(ck.config, ck.names())
    dev = torch.device("cpu")
    model = build_skeleton(ck, torch.float32, dev)
    assert all(p.device.type == "meta" for p in model.parameters())
    layers = decoder_layers(model, fam)
    groups = {f"layer {i}": layer for i, layer in enumerate(layers)}
    groups["embed"] = model.get_submodule(fam.embed)
    groups["head"] = torch.nn.ModuleList([model.get_submodule(fam.final_norm), model.get_output_embeddings()])
    calls = []

    def real(mod) -> bool:
        return any(p.device.type != "meta" for p in mod.parameters())

    def hook(name):
        def pre(mod, args):
            live = [g for g, m in groups.items() if real(m)]
            calls.append(name)
            assert all(p.device.type != "meta" for p in mod.parameters(recurse=False)), name
            assert len(live) == 1, (name, live)
        return pre

    for gname, group in groups.items():
        for mod in group.modules():
            if any(True for _ in mod.parameters(recurse=False)):
                mod.register_forward_pre_hook(hook(gname))
    runner = StreamedRunner(model, fam, ck, dev)
    params = checkpoint_params(ck)
    ev = OffloadEvaluator(runner, calib(), 2)
    res = GreedySearch(ev, mix(4, params), stop=StopRule(blocks=2), total_params=params.total).run()
    assert len(res.steps) == 2
    assert set(calls) == set(groups), "every group of weights ran"
    assert not any(real(m) for m in groups.values())
    # peak bytes on the device: the largest single group, from the checkpoint's own tensor sizes
    sizes = {f"layer {i}": sum(ck.info(n).nbytes for n in ck.names() if n.startswith(f"model.layers.{i}."))
             for i in range(4)}
    sizes["embed"] = ck.info("model.embed_tokens.weight").nbytes
    sizes["head"] = ck.info("model.norm.weight").nbytes + ck.info("model.embed_tokens.weight").nbytes
    assert runner.streamer.peak_bytes == max(sizes.values())


def test_offload_cli_matches_in_memory_and_resumes(tmp_path, capsys, tiny_models, monkeypatch):
    src = tiny_models["llama"]
    full = prune_json(capsys, src, "-o", tmp_path / "full", "--blocks", 3, *CAL)
    out = tmp_path / "part"
    restore = interrupt_after_saves(monkeypatch, 2)
    code, _, err = cli(capsys, src, "-o", out, "--blocks", 3, "--offload", *CAL)
    assert code == 130 and not out.exists() and state_path(out).is_file()
    restore()
    rep = prune_json(capsys, src, "-o", out, "--blocks", 3, "--offload", "--resume", *CAL)
    assert rep["sequence"] == full["sequence"]
    assert [s["ppl"] for s in rep["steps"]] == pytest.approx([s["ppl"] for s in full["steps"]], rel=1e-6)
    assert rep["offload"]["passes"] == 1  # the dense loss came from the saved state: one pass, for step 3
    assert calib_ppl(Path(rep["output"])) == pytest.approx(rep["ppl"], rel=1e-4)
    assert json.loads((Path(rep["output"]) / "prune_report.json").read_text())["offload"]["streams"] == "cpu"


def test_offload_cli_shortgpt(tmp_path, capsys, tiny_models):
    args = ("--method", "shortgpt", "--blocks", 2, *CAL)
    ref = prune_json(capsys, tiny_models["gemma2"], "-o", tmp_path / "ref", *args)
    got = prune_json(capsys, tiny_models["gemma2"], "-o", tmp_path / "off", "--offload", *args)
    assert got["sequence"] == ref["sequence"]
    assert got["ppl"] == pytest.approx(ref["ppl"], rel=1e-6)
    assert [got["block_influence"][k] for k in sorted(got["block_influence"])] == pytest.approx(
        [ref["block_influence"][k] for k in sorted(ref["block_influence"])], rel=1e-5)


def test_offload_on_an_already_pruned_model(tmp_path, capsys, tiny_models):
    """An input that already lacks blocks (physical export, identity blocks in the skeleton)."""
    first = prune_json(capsys, tiny_models["phi3"], "-o", tmp_path / "a", "--blocks", 2, "--block-type", "attn", *CAL)
    path = Path(first["output"])
    win = calib()
    ref = naive(path, mix, win, 2)
    got, runner, _ = streamed(path, mix, win, 2)
    assert runner.removed_in_model() and not {b for s in got.steps for b in s.blocks} & {
        (i, "attn") for i in Checkpoint(path).config["compress_pruned_blocks"]["attn"]}
    assert_same(ref, got)


@pytest.mark.parametrize("args,message", [
    (["--search", "naive", *CAL], "drop --search naive"),
    (["--seq-len", "32", "--samples", "2"], "needs calibration text from --data"),
])
def test_offload_bad_options(tmp_path, capsys, tiny_models, args, message):
    code, _, err = cli(capsys, tiny_models["llama"], "-o", tmp_path / "out", "--blocks", 1, "--offload", *args)
    assert code == 1 and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_smollm2_offload_shortgpt(tmp_path, capsys, smollm2):
    """The real model (tied embeddings, bf16 on disk, fp32 compute), streamed: ShortGPT's block
    influence, the per-step perplexities and the written checkpoint equal the in-memory run's."""
    args = ("--method", "shortgpt", "--blocks", 2, "--data", Path(CAL[1]), "--seq-len", 32, "--samples", 2)
    ref = prune_json(capsys, smollm2, "-o", tmp_path / "ref", *args)
    got = prune_json(capsys, smollm2, "-o", tmp_path / "off", "--offload", *args)
    assert got["sequence"] == ref["sequence"]
    assert [s["ppl"] for s in got["steps"]] == pytest.approx([s["ppl"] for s in ref["steps"]], rel=1e-5)
    keys = sorted(ref["block_influence"])
    assert [got["block_influence"][k] for k in keys] == pytest.approx([ref["block_influence"][k] for k in keys],
                                                                      rel=1e-4)
    assert got["offload"]["peak_weight_bytes"] == 49152 * 576 * 4 + 576 * 4  # fp32 head (tied) + final norm
    assert calib_ppl(Path(got["output"]), 32, 2) == pytest.approx(got["ppl"], rel=1e-4)
