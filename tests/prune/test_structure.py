"""The prune package as a house: no import cycles, small files and functions, options generated from
one config whose choices come from the registries, evaluators behind one protocol."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import pytest

import compress
from compress.cli.prune import command
from compress.prune.config import RESUME_IGNORES, PruneConfig
from compress.prune.registry import BLOCK_TYPES, CRITERIA, EXPORTS, METHODS, SEARCHES

PKG = Path(compress.__file__).parent
FILES = sorted((PKG / "prune").glob("*.py")) + [PKG / "cli" / "prune.py"]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PKG.parent).with_suffix("").parts)


def imports(path: Path) -> set[str]:
    """Every compress module a file imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("compress"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("compress"))
    return out


def test_no_import_cycle_in_the_prune_package():
    mods = {module_name(f): f for f in FILES}
    graph = {m: {i for i in imports(f) if i in mods and i != m} for m, f in mods.items()}
    seen: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for n in sorted(graph[m]):
            if seen.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(n):], n]))
            if n not in seen:
                visit(n, [*path, n])
        seen[m] = 2

    for m in sorted(mods):
        if m not in seen:
            visit(m, [m])


def test_files_and_functions_are_small_and_comments_state_facts():
    for f in FILES:
        text = f.read_text()
        assert len(text.splitlines()) < 450, f
        assert "shared/specs" not in text and "spec §" not in text and "prune.md" not in text, f
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 90, f"{f.name}: {node.name}"


def test_options_come_from_the_config_and_registries():
    params = {p.name: p for p in command.params if isinstance(p, click.Option)}
    for name in PruneConfig.model_fields:
        if name not in ("model", "output"):
            assert name in params, name
    for name, table in (("method", METHODS), ("block_type", BLOCK_TYPES), ("search", SEARCHES),
                        ("criterion", CRITERIA), ("export", EXPORTS)):
        assert tuple(params[name].type.choices) == tuple(table), name
    assert all(p.help for p in params.values()), [n for n, p in params.items() if not p.help]
    assert "config_file" in params and "resume" in params
    # every option except those that only select or write the result is part of the resume fingerprint
    cfg = PruneConfig(model="m", output="o", blocks=1)
    assert set(cfg.fingerprint()) == set(PruneConfig.model_fields) - RESUME_IGNORES
    assert RESUME_IGNORES <= set(PruneConfig.model_fields)


def test_a_whole_run_from_a_config_file(tmp_path, capsys, tiny_models):
    """`--config run.yaml` sets the run; an explicit option wins; bad keys and values are one line."""
    import json

    from compress.cli import main
    from tests.fixtures import WIKI_VALID

    run = tmp_path / "run.yaml"
    run.write_text(f"method: sleb\nblocks: 1\ndata: {WIKI_VALID}\nseq-len: 32\nsamples: 2\ndtype: float32\n")
    capsys.readouterr()
    assert main(["prune", str(tiny_models["llama"]), "-o", str(tmp_path / "out"), "--config", str(run),
                 "--blocks", "2", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["method"] == "sleb" and len(rep["steps"]) == 2 and rep["calibration"]["seq_len"] == 32
    assert rep["dtype"] == "float32" and rep["calibration"]["windows"] == 2
    run.write_text("blocks: 0\n")
    assert main(["prune", str(tiny_models["llama"]), "-o", str(tmp_path / "o2"), "--config", str(run)]) == 1
    assert capsys.readouterr().err.strip().startswith("error: invalid --blocks (in ")
    run.write_text("blocks: 1\nspeed: 11\n")
    assert main(["prune", str(tiny_models["llama"]), "-o", str(tmp_path / "o2"), "--config", str(run)]) == 1
    assert "unknown option 'speed'" in capsys.readouterr().err


def test_evaluators_share_the_protocol(tiny_models):
    import torch

    from compress.checkpoint.reader import Checkpoint
    from compress.model import load
    from compress.prune.evaluators import Evaluator, FastEvaluator, NaiveEvaluator
    from compress.prune.offload import OffloadEvaluator, StreamedRunner, build_skeleton
    from compress.prune.score import BlockRunner

    model, _ = load(tiny_models["llama"], "cpu", "fp32")
    ck = Checkpoint(tiny_models["llama"])
    from compress.arch import family_for

    fam = family_for(ck.config, ck.names())
    win = torch.randint(3, 512, (2, 8))
    runner = BlockRunner(model, fam)
    streamed = StreamedRunner(build_skeleton(ck, torch.float32, torch.device("cpu")), fam, ck, torch.device("cpu"))
    for ev in (NaiveEvaluator(runner, win, 1), FastEvaluator(runner, win, 1), OffloadEvaluator(streamed, win, 1)):
        assert isinstance(ev, Evaluator)
    search_src = (PKG / "prune" / "search.py").read_text() + (PKG / "prune" / "run.py").read_text()
    assert "getattr(" not in search_src
