"""`compress.prune` & co. stay the API functions however often they are called and whatever was imported."""

from __future__ import annotations

import subprocess
import sys


def test_api_functions_survive_submodule_imports():
    code = (
        "import compress, inspect\n"
        "names = ['convert', 'distill', 'evaluate', 'inspect', 'load', 'merge', 'perplexity', 'prune']\n"
        "first = [inspect.isfunction(getattr(compress, n)) for n in names]\n"
        "import compress.prune.run, compress.merge.plan, compress.distill.losses\n"
        "from compress.prune import run\n"
        "second = [inspect.isfunction(getattr(compress, n)) for n in names]\n"
        "print(all(first), all(second), run.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "compress.prune.run"]


def test_import_compress_does_not_import_torch():
    code = "import sys, compress; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
