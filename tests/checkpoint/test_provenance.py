"""compress.json: the versions it records, without importing what it only names."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import safetensors
import torch
import transformers

from compress.checkpoint.provenance import versions, write_provenance


def test_versions_match_the_installed_packages(tmp_path):
    v = versions()
    assert v["torch"] == torch.__version__ and v["transformers"] == transformers.__version__
    assert v["safetensors"] == safetensors.__version__ and v["compress"] == metadata.version("compress")
    rec = json.loads(write_provenance(tmp_path, inputs=[], command="compress test").read_text())
    assert rec["versions"] == v and rec["command"] == "compress test"


def test_versions_do_not_import_transformers():
    # A merge never needs transformers; importing it only to read its version cost ~2 s a run.
    code = ("import sys; from compress.checkpoint.provenance import versions; v = versions(); "
            "print(v['transformers'], 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [transformers.__version__, "False"]
