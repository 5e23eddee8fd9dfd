"""Text for calibration and evaluation: files -> documents -> one token stream -> fixed windows.

Formats: `.txt` (and any other text file: one row per line, as the HF WikiText rows are), `.jsonl`
and `.json` lists of records (`--field`, default `text`; several fields joined by a blank line,
e.g. `instruction,output`), and chat records with a `messages` list, rendered with the model's chat
template. Rows are joined with "\\n\\n" and tokenized once (the WikiText-2 protocol).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import torch

from compress.errors import CompressError

JOINER = "\n\n"


def _records(path: Path) -> list[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CompressError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if not isinstance(data, list):
            raise CompressError(f"{path}: expected a JSON list of records")
        return [(i + 1, r) for i, r in enumerate(data)]
    return parse_jsonl(text, path)


def parse_jsonl(text: str, path: Path) -> list[tuple[int, Any]]:
    """(line number, object) for every non-blank line; a malformed line is an error naming it."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise CompressError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
    return out


def render_chat(tokenizer, messages: Any, where: str) -> str:
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise CompressError(f"{where}: 'messages' must be a list of {{role, content}} objects")
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise CompressError(f"{where}: chat messages need a tokenizer with a chat template")
    return tokenizer.apply_chat_template(messages, tokenize=False)


def read_documents(path: str | os.PathLike[str], field: str | None = None, tokenizer=None) -> list[str]:
    """The rows of a text, JSON-lines or JSON file, as strings."""
    p = Path(path)
    if not p.is_file():
        raise CompressError(f"data file not found: {p}")
    if p.suffix in (".jsonl", ".json"):
        fields = [f.strip() for f in (field or "").split(",") if f.strip()]
        docs = []
        for lineno, rec in _records(p):
            where = f"{p}: line {lineno}" if p.suffix == ".jsonl" else f"{p}: record {lineno}"
            if isinstance(rec, str) and not fields:
                docs.append(rec)
                continue
            if not isinstance(rec, dict):
                raise CompressError(f"{where}: expected a JSON object")
            if not fields and "messages" in rec:
                docs.append(render_chat(tokenizer, rec["messages"], where))
                continue
            use = fields or ["text"]
            missing = [f for f in use if f not in rec]
            if missing:
                raise CompressError(f"{where}: no field {missing[0]!r} (choose one with --field; it has {', '.join(rec)})")
            docs.append(JOINER.join(str(rec[f]) for f in use))
    else:
        try:
            docs = p.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError:
            raise CompressError(f"{p} is not UTF-8 text") from None
        if docs and docs[-1] == "":
            docs.pop()  # the final newline ends the last row; it is not a row of its own
    if not any(d.strip() for d in docs):
        raise CompressError(f"no text in {p}")
    return docs


def tokenize_stream(tokenizer, documents: list[str], joiner: str = JOINER) -> torch.Tensor:
    """Join rows and tokenize once, with the tokenizer's default special tokens (e.g. one BOS)."""
    ids = tokenizer(joiner.join(documents), return_tensors="pt", return_attention_mask=False)["input_ids"]
    return ids[0]


def pack_windows(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Non-overlapping windows of `seq_len` tokens; the remainder is dropped: [N, seq_len]."""
    if seq_len < 2:
        raise CompressError(f"--seq-len must be at least 2, got {seq_len}")
    n = stream.numel() // seq_len
    if n == 0:
        raise CompressError(f"the text has {stream.numel()} tokens, fewer than one window of --seq-len {seq_len}")
    return stream[: n * seq_len].view(n, seq_len).clone()


def sample_windows(windows: torch.Tensor, samples: int | None, seed: int) -> torch.Tensor:
    """`samples` windows drawn without replacement with a seeded RNG (all when None or too many)."""
    if samples is None or samples >= windows.shape[0]:
        return windows
    if samples <= 0:
        raise CompressError(f"--samples must be positive, got {samples}")
    idx = random.Random(seed).sample(range(windows.shape[0]), samples)
    return windows[sorted(idx)]


def load_windows(path: str | os.PathLike[str], tokenizer, seq_len: int, samples: int | None = None,
                 seed: int = 0, field: str | None = None) -> torch.Tensor:
    docs = read_documents(path, field, tokenizer)
    return sample_windows(pack_windows(tokenize_stream(tokenizer, docs), seq_len), samples, seed)
