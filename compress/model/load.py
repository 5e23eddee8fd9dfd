"""Load a model folder into transformers: `compress.load(path)` -> (model, tokenizer).

Missing weights are fatal (plain `from_pretrained` only warns and initialises them randomly), and
checkpoints written by `compress prune` load with identity blocks without remote code.

Loading is the one place below the methods that knows prune's output formats: a physically pruned
checkpoint needs the pruned architecture (`compress.prune.modeling`) and a `--export mask` folder
its removals (`compress.prune.maskfile`, `compress.prune.mask`). Those are function-level imports,
and none of those modules imports this one (tests/test_imports.py checks both).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from compress.arch import PRUNED_KEY, family_for
from compress.checkpoint.hashing import is_mask_folder
from compress.checkpoint.reader import Checkpoint
from compress.errors import CompressError
from compress.model.device import parse_device, parse_dtype


def load_tokenizer(path: str | os.PathLike[str]):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise CompressError(f"cannot load the tokenizer of {path}: {str(e).splitlines()[0]}") from None


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "auto",
    ckpt: Checkpoint | None = None,
) -> torch.nn.Module:
    """Load weights with transformers, refusing missing or unexpected tensors."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()

    if ckpt is None and is_mask_folder(path):
        return load_masked(path, device, dtype)
    ckpt = ckpt or Checkpoint(path)
    family_for(ckpt.config, ckpt.names())  # refuses unsupported architectures with a clear message
    dev = parse_device(device)
    torch_dtype = parse_dtype(dtype)
    if torch_dtype is None and dev.type == "cpu":
        # "auto" on CPU computes in fp32: bf16/fp16 matmuls are 2-3x slower on most CPUs.
        torch_dtype = torch.float32
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": torch_dtype or "auto"}
    if PRUNED_KEY in ckpt.config:
        from compress.prune.modeling import load_pruned

        model = load_pruned(ckpt, torch_dtype)
        return model.to(dev).eval()
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = AutoModelForCausalLM.from_pretrained(
                str(path), config=config, output_loading_info=True, **kwargs
            )
    except CompressError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CompressError(f"cannot load the model in {path}: {str(e).splitlines()[0]}") from None
    missing = [k for k in info.get("missing_keys", []) if k]
    if missing:
        raise CompressError(
            f"{path} lacks {len(missing)} weight tensors (e.g. {sorted(missing)[0]}): refusing to initialise them randomly"
        )
    # tensors the config has no place for (e.g. a config edited to fewer layers) would be dropped silently
    unexpected = sorted(k for k in info.get("unexpected_keys", []) if k and not k.endswith("rotary_emb.inv_freq"))
    if unexpected:
        raise CompressError(
            f"{path} holds {len(unexpected)} weight tensors its config has no place for (e.g. {unexpected[0]}): "
            "the config does not describe these weights"
        )
    mism = info.get("mismatched_keys") or []
    if mism:
        raise CompressError(f"{path}: tensor shapes do not match the config, e.g. {list(mism)[0]}")
    return model.to(dev).eval()


def load_masked(path: str | os.PathLike[str], device=None, dtype=None) -> torch.nn.Module:
    """A `compress prune --export mask` folder: its base model (checked to be where it was and
    unchanged) with the recorded removals applied in memory."""
    from compress.prune.mask import apply_removals
    from compress.prune.maskfile import read_mask

    data = read_mask(path)
    base = data["base"]["path"]
    ckpt = Checkpoint(base)
    model = load_model(base, device, dtype, ckpt=ckpt)
    apply_removals(model, family_for(ckpt.config, ckpt.names()), [(int(i), str(k)) for i, k in data["removed"]])
    return model


def check_model(path: str | os.PathLike[str]) -> None:
    """Refuse a missing folder, a folder that is no model, or a mask folder whose base moved or
    changed - before any work starts."""
    if is_mask_folder(path):
        from compress.prune.maskfile import read_mask

        read_mask(path)
    else:
        Checkpoint(path)


def load(path: str | os.PathLike[str], device: str | torch.device | None = "cpu",
         dtype: str | torch.dtype | None = "auto"):
    """Model and tokenizer of a folder. The API behind every command that runs a model."""
    model = load_model(path, device, dtype)
    tok = load_tokenizer(path)
    return model, tok


