"""Planning the output vocabulary: `tokenizer_source` / `tokenizer` (union, base or a model's path).

The output tokenizer is built (or chosen) before any tensor is read, and every model's vocabulary
is laid out against it; execution then re-lays each vocabulary tensor's rows (`vocab.align`).
Without a tokenizer source the rows merge by id, so the tokenizers must agree on every id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.checkpoint import Checkpoint
from compress.errors import CompressError
from compress.merge.params import dotted, field_line, resolve_model
from compress.merge.recipe import Recipe
from compress.merge.vocab import (
    TOKENIZER_FILES,
    VocabMap,
    file_vocab,
    first_difference,
    load_tokenizer,
    save_tokenizer,
    union_tokenizer,
    usable_vocab,
    vocab_map,
)


@dataclass
class TokenizerPlan:
    """The output tokenizer and, per set of merged models, how their vocabulary rows are laid out."""

    vocab_out: dict[str, int]
    size: int
    vocabs: dict[int, dict[str, int]]
    side_files: list[Path]
    keep: Any
    info: dict[str, Any]
    _maps: dict[tuple, VocabMap] = field(default_factory=dict)

    def map_for(self, models: list[int], base: int | None) -> VocabMap:
        key = (tuple(models), base)
        if key not in self._maps:
            self._maps[key] = vocab_map(self.vocab_out, self.size, {m: self.vocabs[m] for m in models},
                                        base if base in models else None)
        return self._maps[key]


def embedding_name(pre: Sequence[str]) -> str | None:
    return next((n for n in pre if "embed" in n or ".wte." in n), None)


def with_padding_rows(vocab: dict[str, int], rows: int) -> dict[str, int]:
    """Rows no token uses (padding beyond the tokenizer) as pseudo-tokens, so they keep their place."""
    used = set(vocab.values())
    return {**vocab, **{f"\0row{i}": i for i in range(rows) if i not in used}}


def check_same_vocab(paths: list[Path], readers: list[Checkpoint], ref: int, pre: list[str]) -> None:
    """Without tokenizer_source the rows merge by id: the tokenizers must agree on every id (mergekit#47)."""
    embed = embedding_name(pre)
    ref_file = paths[ref] / "tokenizer.json"
    ref_vocab = None
    for m, p in enumerate(paths):
        f = p / "tokenizer.json"
        if m == ref or not f.is_file() or not ref_file.is_file() or f.read_bytes() == ref_file.read_bytes():
            continue
        ref_vocab = ref_vocab if ref_vocab is not None else file_vocab(paths[ref])
        other = file_vocab(p)
        if ref_vocab is None or other is None:
            continue
        rows = min(readers[ref].info(embed).shape[0], readers[m].info(embed).shape[0]) \
            if embed and embed in readers[m] else max(len(ref_vocab), len(other))
        diff = first_difference(ref_vocab, other, rows)
        if diff is not None:
            raise CompressError(f"the tokenizers of {paths[ref].name} and {p.name} differ ({diff}), so their embedding "
                                f"rows mean different tokens: set tokenizer_source: union, base or a model's path")


def check_padding(pad: int | None, tokens: int, lines: dict[tuple, int]) -> None:
    """`pad_to_multiple_of` may at most double the vocabulary: larger values are typos, and the rows
    they would add are allocated (1e9 asked for 256 GB)."""
    if pad is not None and pad > max(1, tokens):
        where = f"tokenizer.pad_to_multiple_of{field_line(lines, ('tokenizer', 'pad_to_multiple_of'))}"
        raise CompressError(f"{where}: {pad} would pad the vocabulary of {tokens} tokens to {pad} rows; use a value "
                            f"at most the vocabulary size (usually 8, 64 or 128)")


def plan_vocab(recipe: Recipe, paths: list[Path], readers: list[Checkpoint], ref: int, pre: list[str],
               lines: dict[tuple, int], recipe_dir: Path | None) -> TokenizerPlan:
    """Build the output tokenizer (`tokenizer_source`: union, base or a model) and every model's vocabulary."""
    cfg = recipe.tokenizer
    source = recipe.tokenizer_source if cfg is None else cfg.source
    field_ = ("tokenizer_source",) if cfg is None else ("tokenizer", "source")
    where = f"{dotted(field_)}{field_line(lines, field_)}"
    if cfg is not None and cfg.tokens:
        raise CompressError(f"tokenizer.tokens{field_line(lines, ('tokenizer', 'tokens'))}: per-token embedding "
                            f"overrides are not supported; remove them (missing tokens get mergekit's default rows)")
    pad = cfg.pad_to_multiple_of if cfg is not None else None
    embed = embedding_name(pre)
    if embed is None:
        raise CompressError(f"{where}: no token embedding tensor found, so the vocabularies cannot be aligned")
    rows = {}
    for m, r in enumerate(readers):
        if embed not in r:
            raise CompressError(f"tensor {embed!r} is missing from {paths[m]}: the models have different architectures")
        rows[m] = r.info(embed).shape[0]
    toks = {m: load_tokenizer(p) for m, p in enumerate(paths)}
    vocabs = {m: with_padding_rows(usable_vocab(toks[m], rows[m]), rows[m]) for m in toks}
    keep = None
    if source == "union":
        out_tok = union_tokenizer(toks[ref], [(toks[m], rows[m]) for m in toks if m != ref], rows[ref])
        keep, files = save_tokenizer(out_tok)
        own_rows = rows[ref]
        side = [f for f in readers[ref].side_files() if f.name not in TOKENIZER_FILES] + files
    else:
        folder = paths[ref] if source == "base" else resolve_model(source, recipe_dir, where)
        src = paths.index(folder) if folder in paths else None
        if src is not None:
            out_tok, own_rows = toks[src], rows[src]
            side = readers[src].side_files()
        else:
            out_tok, own_rows = load_tokenizer(folder), 0
            side = [f for f in readers[ref].side_files() if f.name not in TOKENIZER_FILES] + \
                [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
    vocab_out = with_padding_rows(out_tok.get_vocab(), own_rows)
    size = max(vocab_out.values(), default=-1) + 1
    n_real = size
    check_padding(pad, n_real, lines)
    if pad and size % pad:
        size += pad - size % pad
    info = {"source": source, "rows": size, "tokens": n_real, "pad_to_multiple_of": pad,
            "rows_per_model": {str(paths[m]): rows[m] for m in rows}}
    if source == "union":
        info["tokens_added_to_base"] = len(vocab_out) - len(vocabs[ref])
    return TokenizerPlan(vocab_out, size, vocabs, side, keep, info)
