"""Models in memory: loading, device/dtype options, logits helpers."""

from compress.model.device import parse_device, parse_dtype
from compress.model.load import load, load_model, load_tokenizer

__all__ = ["load", "load_model", "load_tokenizer", "parse_device", "parse_dtype"]
