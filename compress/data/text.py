"""Text for calibration and evaluation: files -> documents -> one token stream -> fixed windows.

How a file becomes text (`--format`, default `auto`):
- `text`: the file exactly as written (its bytes decoded as UTF-8, line breaks untouched), one
  document: the tokens are `tokenizer(file contents)`.
- `wikitext`: the rows of the Hugging Face `wikitext` datasets - every line of the file with its
  "\\n", a blank (whitespace-only) line as "" - joined with "\\n\\n", the perplexity protocol of the
  pruning papers on WikiText-2 (`wikitext-2-raw-v1` test = the 4358 lines of `wiki.test.raw`).
- records (`.jsonl`, `.json` lists): a field per record (`--field`, default `text`; several fields
  joined by a blank line, e.g. `instruction,output`), or chat records with a `messages` list
  rendered with the model's chat template; records joined with "\\n\\n".
`auto` picks records for `.jsonl`/`.json`, `wikitext` for WikiText's own file names (`wiki.*.raw`,
`wiki.*.tokens`) and `text` for every other file. The joined text is tokenized once, with the
tokenizer's default special tokens (e.g. one BOS).
"""

from __future__ import annotations

import fnmatch
import json
import os
import random
from pathlib import Path
from typing import Any

import torch

from compress.errors import CompressError

JOINER = "\n\n"
FORMATS = ("auto", "text", "wikitext")
WIKITEXT_NAMES = ("wiki.*.raw", "wiki.*.tokens")
# How the text was built, as the outputs name it ("text_format"; \n written as backslash-n).
FORMAT_DESCRIPTIONS = {
    "text": "the file as written",
    "wikitext": "wikitext-2 rows joined with \\n\\n",
    "records": "records joined with \\n\\n",
}


def parse_json_list(text: str, path: str | os.PathLike[str], what: str = "records") -> list[Any]:
    """The items of a `.json` file holding one JSON list; anything else is an error naming the file."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CompressError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(data, list):
        raise CompressError(f"{path}: expected a JSON list of {what}")
    return data


def _records(path: Path) -> list[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return [(i + 1, r) for i, r in enumerate(parse_json_list(text, path))]
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


def resolve_format(path: str | os.PathLike[str], format: str = "auto") -> str:
    """'text', 'wikitext' or 'records': how `path` is read under `--format` (see the module docstring)."""
    if format not in FORMATS:
        raise CompressError(f"unknown --format {format!r}: choose one of {', '.join(FORMATS)}")
    p = Path(path)
    if format != "auto":
        return format
    if p.suffix in (".jsonl", ".json"):
        return "records"
    return "wikitext" if any(fnmatch.fnmatchcase(p.name, pat) for pat in WIKITEXT_NAMES) else "text"


def describe_format(path: str | os.PathLike[str], format: str = "auto", field: str | None = None) -> str:
    """The `text_format` line of a JSON output, e.g. 'wikitext-2 rows joined with \\n\\n'."""
    kind = resolve_format(path, format)
    if kind == "records" and field:
        return f"records (fields {field}) joined with \\n\\n"
    return FORMAT_DESCRIPTIONS[kind]


def wikitext_rows(text: str) -> list[str]:
    """The rows of Hugging Face's `wikitext` datasets: each line with its "\\n", blank lines as ""."""
    lines = text.split("\n")
    rows = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    return [row if row.strip() else "" for row in rows]


def _read_text(p: Path, universal_newlines: bool) -> str:
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CompressError(f"{p} is not UTF-8 text") from None
    return text.replace("\r\n", "\n").replace("\r", "\n") if universal_newlines else text


def _record_documents(p: Path, field: str | None, tokenizer) -> list[str]:
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
    return docs


def read_documents(path: str | os.PathLike[str], field: str | None = None, tokenizer=None,
                   format: str = "auto") -> list[str]:
    """The documents of a data file under `format`; joined with JOINER they are the text to tokenize."""
    p = Path(path)
    kind = resolve_format(p, format)
    if not p.is_file():
        raise CompressError(f"data file not found: {p}")
    if field and kind != "records":
        raise CompressError(f"--field {field} names JSON fields, but {p} is read as {kind} (--format {format})")
    if kind == "records":
        docs = _record_documents(p, field, tokenizer)
    elif kind == "wikitext":  # as Python's text mode (and so the HF loader) reads the file: universal newlines
        docs = wikitext_rows(_read_text(p, universal_newlines=True))
    else:
        docs = [_read_text(p, universal_newlines=False)]
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
                 seed: int = 0, field: str | None = None, format: str = "auto") -> torch.Tensor:
    """Windows of `seq_len` tokens from a data file: read, join, tokenize once, pack, sample."""
    docs = read_documents(path, field, tokenizer, format)
    return sample_windows(pack_windows(tokenize_stream(tokenizer, docs), seq_len), samples, seed)
