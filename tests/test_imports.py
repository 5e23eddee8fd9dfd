"""The package's import graph: every module imports, no cycles, and the layers point one way.

    (package root) -> cli  ->  api  ->  methods: prune, merge, distill, fuse, eval
         ->  data, model  ->  arch  ->  checkpoint  ->  errors, progress, jsonsafe

An edge is every `from compress.X import ...` / `import compress.X`, at module level or inside a
function (a lazy import is still a dependency). An edge may go down the layers or stay inside one
top-level package; anything else is an exception listed below with its reason.
"""

from __future__ import annotations

import ast
import graphlib
import importlib
from pathlib import Path

import pytest

import compress

ROOT = Path(compress.__file__).resolve().parent

LAYERS = [
    {"errors", "progress", "jsonsafe"},
    {"checkpoint"},
    {"arch"},
    {"data", "model"},
    {"prune", "merge", "distill", "fuse", "eval"},
    {"api"},
    {"cli"},
    {"", "__main__"},  # the package root (compress/__init__.py re-exports the API) and `python -m compress`
]

# Edges against the layers, each with its reason. Keep this list short; a listed edge that no
# longer exists fails the test, so the list stays true.
LAYER_EXCEPTIONS = {
    ("compress.model.load", "compress.prune.modeling"):
        "a physically pruned checkpoint loads with the pruned architecture (function-level import)",
    ("compress.model.load", "compress.prune.maskfile"):
        "a `--export mask` folder loads as its base with the recorded removals (function-level import)",
    ("compress.model.load", "compress.prune.mask"):
        "the removals of a `--export mask` folder are applied in memory (function-level import)",
    ("compress.eval.inspect", "compress.prune.maskfile"):
        "inspecting a `--export mask` folder reports its base with the removed blocks taken out",
    ("compress.eval.run", "compress.fuse.lm_eval_model"):
        "`eval --ensemble` checks its options and tasks with the fused decoder's rules (function-level import)",
    ("compress.eval.ensemble", "compress.fuse.lm_eval_model"):
        "`eval --ensemble` scores the Cool-Fusion decoder as an lm-eval model (FusedLM)",
    ("compress.eval.ensemble", "compress.fuse.cool_fusion"):
        "`eval --ensemble` builds the Cool-Fusion decoder of its members",
    # explicit fusion is built from distillation's pieces rather than beside them (function-level imports)
    ("compress.fuse.represent", "compress.distill.forward"):
        "a representation is the teacher cache's forward: hidden states at response positions only",
    ("compress.fuse.represent", "compress.distill.losses"):
        "a representation stores the teacher cache's top-k + rest (topk_from_logits)",
    ("compress.fuse.represent", "compress.distill.teacher"): "the one vocabulary hash of the teacher cache",
    ("compress.fuse.aligned", "compress.distill.teacher"): "the one vocabulary hash of the teacher cache",
    ("compress.fuse.train", "compress.distill.teacher"): "fused targets are a teacher signal (Signals)",
    ("compress.fuse.train", "compress.distill.train"): "fuse train runs the distill training loop",
    ("compress.fuse.seft", "compress.distill.train"): "SEFT trains its reviser and policy with distill's SFT",
}
# Cycles still to be broken (none left); every other cycle fails.
CYCLE_EXCEPTIONS: dict[frozenset[str], str] = {}


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = ("compress", *p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the compress modules it imports (a name imported from a package counts as the
    package's submodule of that name when there is one, else as the package)."""
    mods = modules()

    def resolve(name: str) -> str:
        while name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "compress":
                deps.update(resolve(f"{node.module}.{a.name}") for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                pytest.fail(f"{name}: relative import (use `from compress...`)")
            elif isinstance(node, ast.Import):
                deps.update(resolve(a.name) for a in node.names if a.name.split(".")[0] == "compress")
        deps.discard(name)
        graph[name] = deps
    return graph


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, tops in enumerate(LAYERS):
        if top in tops:
            return i
    raise AssertionError(f"{module}: top-level package {top!r} has no layer in tests/test_imports.py")


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_every_module_imports():
    for name in modules():
        if name != "compress.__main__":  # runs the CLI
            importlib.import_module(name)


def test_no_import_cycles():
    graph = import_graph()
    allowed = {tuple(sorted(c)) for c in CYCLE_EXCEPTIONS}
    pruned = {a: {b for b in bs if tuple(sorted({a, b})) not in allowed} for a, bs in graph.items()}
    try:
        graphlib.TopologicalSorter(pruned).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")
    for pair in CYCLE_EXCEPTIONS:
        a, b = sorted(pair)
        assert b in graph[a] and a in graph[b], f"{a} <-> {b} is no longer a cycle: remove it from CYCLE_EXCEPTIONS"


def test_layers_point_one_way():
    graph = import_graph()
    bad = []
    for a, deps in sorted(graph.items()):
        for b in sorted(deps):
            if package_of(a) == package_of(b) or layer_of(b) < layer_of(a):
                continue
            if (a, b) not in LAYER_EXCEPTIONS:
                bad.append(f"{a} -> {b}")
    assert not bad, "imports against the layers (cli -> api -> methods -> data/model -> arch -> checkpoint):\n" + "\n".join(bad)
    stale = [f"{a} -> {b}" for a, b in LAYER_EXCEPTIONS if b not in graph.get(a, set())]
    assert not stale, f"listed exceptions that no longer exist (remove them): {stale}"


def test_the_graph_sees_function_level_imports():
    # the check itself: a lazy import inside a function is an edge (model.load imports prune lazily)
    assert "compress.prune.modeling" in import_graph()["compress.model.load"]
