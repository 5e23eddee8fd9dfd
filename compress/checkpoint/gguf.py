"""GGUF -> Hugging Face safetensors folder, through transformers' GGUF loader (package `gguf`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from compress.checkpoint.atomic import check_output
from compress.checkpoint.save import save_checkpoint
from compress.checkpoint.writer import DEFAULT_MAX_SHARD, TensorSpec
from compress.errors import CompressError

GGUF_MAGIC = b"GGUF"


def check_gguf(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise CompressError(f"file not found: {p}")
    if p.is_dir():
        raise CompressError(f"{p} is a folder: `compress convert` takes a .gguf file")
    with open(p, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise CompressError(f"{p} is not a GGUF file (its first bytes are not 'GGUF')")
    return p


def unique_state(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """State dict without tied duplicates (HF drops `lm_head.weight` when it is the embedding)."""
    seen: set[int] = set()
    out = []
    for name, t in model.state_dict().items():
        key = t.untyped_storage().data_ptr()
        if key in seen and t.numel():
            continue
        seen.add(key)
        out.append((name, t))
    return out


def convert_gguf(
    gguf_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    dtype: torch.dtype = torch.bfloat16,
    force: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD,
) -> Path:
    """Dequantise a GGUF model and write it as an HF folder with tokenizer and chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = check_gguf(gguf_path)
    check_output(output, [src], force)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
            model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - the gguf/transformers stack raises many types
        raise CompressError(f"cannot convert {src}: {str(e).splitlines()[0]}") from None
    state = [(n, t.to(dtype)) for n, t in unique_state(model)]
    config = model.config.to_diff_dict()
    config.pop("quantization_config", None)
    config["dtype"] = str(dtype).replace("torch.", "")
    config.pop("torch_dtype", None)
    config.pop("_name_or_path", None)
    config["architectures"] = [type(model).__name__]

    def produce(writer):
        for n, t in state:
            writer.write(n, t)

    def extra_files(tmp: Path) -> None:
        tok.save_pretrained(str(tmp))
        model.generation_config.save_pretrained(str(tmp))

    return save_checkpoint(
        output,
        [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in state],
        produce,
        config=config,
        inputs=[str(src)],
        force=force,
        max_shard_size=max_shard_size,
        before_commit=extra_files,
        extra={"gguf_file": src.name, "dtype": config["dtype"]},
        method="gguf-import",
        tags=("convert",),
    )
