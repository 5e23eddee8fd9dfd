"""compress: make LLMs smaller and better offline, working on their checkpoints.

The functions here are the ones the CLI calls:

    import compress
    compress.convert("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")
    model, tok = compress.load("smollm2")
    compress.perplexity("smollm2", data="wiki.test.raw", seq_len=512, max_windows=8)
    compress.inspect("smollm2")
"""

from __future__ import annotations

__version__ = "0.1.0"

import os as _os
import sys as _sys
import types as _types

# Code must never need a download at run time: every hub client stays offline.
for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    _os.environ.setdefault(_k, "1")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# PyTorch's CPU allocator: advise transparent huge pages for buffers of 2 MB and more (read by torch
# at its first allocation, so it must be set before torch allocates). Merging and pruning allocate
# and free large temporaries per tensor; with 4 KB pages the kernel's page faults were up to half
# of a merge's CPU time (bench/merge_vs_mergekit.py). Export THP_MEM_ALLOC_ENABLE=0 to opt out.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from compress.errors import CompressError  # noqa: E402

_API = ("convert", "distill", "evaluate", "inspect", "load", "merge", "perplexity", "prune")
__all__ = ["CompressError", "__version__", *_API]


class _Package(_types.ModuleType):
    """`compress.prune`, `compress.merge`, `compress.distill` ... are the API functions, always.

    The API (and torch under it) is imported on first use, not by `import compress`: the command line
    imports it inside its own error handling, so a Ctrl-C during `import torch` is handled too. The
    subpackages of the same names (compress/prune/ ...) stay importable (`from compress.prune import
    run`); only the attribute of the package is the function, whatever the import system set it to."""

    def __getattribute__(self, name: str):
        if name in _API:
            from compress import api

            return getattr(api, name)
        return super().__getattribute__(name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_API))


_sys.modules[__name__].__class__ = _Package
