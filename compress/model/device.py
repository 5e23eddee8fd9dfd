"""Device and dtype options, shared by every command."""

from __future__ import annotations

import torch

from compress.errors import CompressError

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
# Every spelling a user meets: compress's short names, torch / transformers / mergekit's long ones.
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float": "fp32"}


def canonical_dtype_name(name: str) -> str | None:
    """'bfloat16' / 'BF16' / 'torch.bfloat16' -> 'bf16'; 'auto' -> 'auto'; unknown -> None."""
    key = str(name).strip().lower().removeprefix("torch.")
    key = DTYPE_ALIASES.get(key, key)
    return key if key in DTYPE_CHOICES else None


def parse_dtype(name: str | torch.dtype | None, default: torch.dtype | None = None) -> torch.dtype | None:
    """'bf16' -> torch.bfloat16; 'auto'/None -> `default` (None means: as stored)."""
    if isinstance(name, torch.dtype):
        return name
    if name is None:
        return default
    key = canonical_dtype_name(name)
    if key is None:
        raise CompressError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPE_CHOICES)} "
                            f"(or float32, bfloat16, float16)")
    return default if key == "auto" else DTYPES[key]


def parse_device(name: str | torch.device | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (a GPU when there is one) -> torch.device.

    Other device types (mps, meta, xpu, ...) are refused: the commands are written and tested for
    CPU and CUDA, and `meta` holds no data at all."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = name if isinstance(name, torch.device) else torch.device(str(name).strip())
    except (RuntimeError, ValueError, TypeError):
        raise CompressError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise CompressError(f"device {name} is not supported: use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CompressError(f"device {name} requested but no CUDA GPU is available: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CompressError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                                f"numbered from 0")
    return dev


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
