"""Vocabulary alignment for merges of models whose tokenizers differ (`tokenizer_source`).

Follows mergekit 0.1.5 (`mergekit/tokenizer/build.py`, `embed.py`), re-implemented:

- Output tokenizer: `base` = the base model's tokenizer; a model reference = that model's
  tokenizer; `union` = the base's tokenizer plus, in model order, every ordinary token of the other
  models it lacks (added as plain added tokens), then every added (special) token of any model
  (first definition wins). Tokens at ids beyond a model's embedding rows are ignored. mergekit walks
  the models in set order and each vocabulary in hash order, so its new ids vary from run to run;
  here the order is the recipe's model order, then each model's own ids (decision).
- Per model, a permutation maps each output token id to the model's own row of that token (or
  −1 where the model lacks the token).
- Rows for a token some model lacks come from a default embedding (mergekit's
  `assign_embedding_sources`): present in exactly one model → that model's row; in none → zeros;
  otherwise the base's row if the base is among the merged models and has it, else the mean of the
  rows of the models that have it. A model's own row is used wherever it has the token.
- `pad_to_multiple_of` (mergekit's `tokenizer:` object) rounds the row count up; padding rows are
  each model's mean embedding over the real tokens.

The embedding and LM-head rows are then merged like any other tensor. Tied embeddings stay tied
(only `embed_tokens` is stored and aligned).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress.errors import CompressError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json")


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except Exception as e:  # noqa: BLE001 - any loader failure is a user-facing problem with that folder
        raise CompressError(f"cannot load the tokenizer of {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                            f" (tokenizer_source needs every model's tokenizer files)") from None


def usable_vocab(tok: Any, rows: int) -> dict[str, int]:
    """token -> id for the ids that have an embedding row (mergekit ignores the others)."""
    return {t: i for t, i in tok.get_vocab().items() if i < rows}


def union_tokenizer(base_tok: Any, others: list[tuple[Any, int]], base_rows: int) -> Any:
    """The base's tokenizer extended by every token of the other tokenizers (mergekit's union).

    `others` are (tokenizer, embedding rows) in model order; the base tokenizer is not modified.
    """
    import copy

    added: dict[str, Any] = {}  # content -> AddedToken, first definition wins
    plain: dict[str, None] = {}  # ordered set of tokens, in model order
    for tok, rows in [(base_tok, base_rows), *others]:
        for t, i in sorted(tok.get_vocab().items(), key=lambda x: x[1]):  # by id: deterministic
            if i < rows and t not in plain:
                plain[t] = None
        for i, a in sorted(tok.added_tokens_decoder.items()):
            if i < rows and a.content not in added:
                added[a.content] = a
    out = copy.deepcopy(base_tok)
    base_vocab = base_tok.get_vocab()
    new_plain = [t for t in plain if t not in added and t not in base_vocab]
    if new_plain:
        out.add_tokens(new_plain)
    new_added = [a for c, a in added.items() if c not in base_vocab]
    if new_added:
        out.add_tokens(new_added)
    return out


def permutation(vocab_out: dict[str, int], model_vocab: dict[str, int], size: int) -> torch.Tensor:
    """perm[i] = the model's row of output token i, or −1 where it lacks the token; [size] int64.

    Ids at or beyond len(vocab_out) (padding) stay −1.
    """
    perm = torch.full((size,), -1, dtype=torch.int64)
    for t, i in vocab_out.items():
        j = model_vocab.get(t)
        if j is not None:
            perm[i] = j
    return perm


@dataclass
class VocabMap:
    """How every row of the output vocabulary is obtained, for one set of merged models.

    `perms[m]`: model m's row per output row (−1: lacks the token). For rows some model lacks,
    `fill_rows` lists them, `copy_from[k]` the model whose row is used (−1: mean of the models that
    have it, or zeros when none has).
    """

    size: int  # output rows
    n_tokens: int  # rows that are real tokens; the rest (pad_to_multiple_of) get each model's mean row
    perms: dict[int, torch.Tensor]
    fill_rows: torch.Tensor  # [F] int64 output rows some model lacks
    copy_from: torch.Tensor  # [F] int64 model index, or −1 (mean / zeros)
    identity: bool = False  # every model already has exactly the output layout

    def needed(self) -> list[int]:
        """Models whose rows the default embeddings read."""
        out = set(int(m) for m in self.copy_from[self.copy_from >= 0].tolist())
        mean_rows = self.fill_rows[self.copy_from < 0]
        for m, p in self.perms.items():
            if mean_rows.numel() and bool((p[mean_rows] >= 0).any()):
                out.add(m)
        return sorted(out)


def vocab_map(vocab_out: dict[str, int], size: int, model_vocabs: dict[int, dict[str, int]],
              base: int | None) -> VocabMap:
    """Permutations and the default-embedding rule per row (mergekit's assign_embedding_sources)."""
    order = list(model_vocabs)
    perms = {m: permutation(vocab_out, v, size) for m, v in model_vocabs.items()}
    n_tokens = max(vocab_out.values(), default=-1) + 1
    have = torch.stack([perms[m][:n_tokens] >= 0 for m in order])  # [M, n_tokens]
    count = have.sum(dim=0)
    fill = torch.nonzero(count < len(order)).flatten()
    copy_from = torch.full((fill.numel(),), -1, dtype=torch.int64)
    if fill.numel():
        cnt = count[fill]
        first = have[:, fill].to(torch.int8).argmax(dim=0)  # the single donor where count == 1
        model_ids = torch.tensor(order, dtype=torch.int64)
        copy_from = torch.where(cnt == 1, model_ids[first], copy_from)
        if base is not None and base in perms:
            base_has = perms[base][fill] >= 0
            copy_from = torch.where((cnt > 1) & base_has, torch.full_like(copy_from, base), copy_from)
    identity = size == n_tokens and all(
        bool((p == torch.arange(size)).all()) for p in perms.values())
    return VocabMap(size, n_tokens, perms, fill, copy_from, identity)


def default_rows(vm: VocabMap, get: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """[F, ...] default embeddings of the rows some model lacks (fp32).

    `get(m)` returns model m's own vocabulary tensor; only the models of `vm.needed()` are read,
    one at a time and in model order, so a mean is summed in the order mergekit sums it.
    """
    out: torch.Tensor | None = None
    count = torch.zeros(vm.fill_rows.numel(), dtype=torch.float32)
    mean = vm.copy_from < 0
    for m in vm.needed():
        t = get(m)
        if out is None:
            out = torch.zeros((vm.fill_rows.numel(), *t.shape[1:]), dtype=torch.float32)
        src = vm.perms[m][vm.fill_rows]
        donor = (vm.copy_from == m) & (src >= 0)
        if bool(donor.any()):
            out[donor] = t[src[donor]].to(torch.float32)
        avg = mean & (src >= 0)
        if bool(avg.any()):
            out[avg] += t[src[avg]].to(torch.float32)
            count[avg] += 1
        del t
    if out is None:  # only rows no model has: zeros (shape filled in by align)
        return torch.zeros((vm.fill_rows.numel(),), dtype=torch.float32)
    nz = mean & (count > 0)
    if bool(nz.any()):
        out[nz] /= count[nz].reshape(-1, *([1] * (out.dim() - 1)))
    return out


def align(tensor: torch.Tensor, model: int, vm: VocabMap, defaults: torch.Tensor) -> torch.Tensor:
    """Model `model`'s vocabulary tensor (rows = its tokens) laid out in the output vocabulary (fp32)."""
    perm = vm.perms[model]
    out = torch.empty((vm.size, *tensor.shape[1:]), dtype=torch.float32)
    have = perm >= 0
    out[have] = tensor[perm[have]].to(torch.float32)
    if vm.fill_rows.numel():
        lacks = perm[vm.fill_rows] < 0
        if defaults.dim() == 1:  # no model has any of these rows: zeros
            out[vm.fill_rows[lacks]] = 0
        else:
            out[vm.fill_rows[lacks]] = defaults[lacks]
    if vm.size > vm.n_tokens:
        out[vm.n_tokens:] = out[:vm.n_tokens].mean(dim=0)
    return out


def save_tokenizer(tok: Any) -> tuple[tempfile.TemporaryDirectory, list[Path]]:
    """Serialise a tokenizer; returns the temporary folder (keep it alive) and its tokenizer files."""
    try:
        tmp = tempfile.TemporaryDirectory(prefix="compress-merge-tok-")
        tok.save_pretrained(tmp.name)
    except OSError as e:
        raise CompressError(f"cannot write the merged tokenizer to a temporary folder ({tempfile.gettempdir()}): "
                            f"{e.strerror or e}; set TMPDIR to a writable folder") from None
    files = [Path(tmp.name) / n for n in TOKENIZER_FILES if (Path(tmp.name) / n).is_file()]
    return tmp, files


def file_vocab(folder: Path) -> dict[str, int] | None:
    """token -> id read straight from tokenizer.json (cheap; None when the folder has none)."""
    import json

    f = Path(folder) / "tokenizer.json"
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        model = data.get("model") or {}
        vocab = model.get("vocab")
        out: dict[str, int] = {}
        if isinstance(vocab, dict):
            out.update({str(k): int(v) for k, v in vocab.items()})
        elif isinstance(vocab, list):  # Unigram: [[piece, score], ...] in id order
            out.update({str(p[0]): i for i, p in enumerate(vocab)})
        for a in data.get("added_tokens") or []:
            out[str(a["content"])] = int(a["id"])
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise CompressError(f"cannot read {f}: {e}: fix or replace the tokenizer files") from None


def first_difference(a: dict[str, int], b: dict[str, int], rows: int) -> str | None:
    """A description of the first token whose id differs between two vocabularies (ids < rows), or None."""
    ia = {i: t for t, i in a.items() if i < rows}
    ib = {i: t for t, i in b.items() if i < rows}
    for i in sorted(set(ia) | set(ib)):
        if ia.get(i) != ib.get(i):
            return f"id {i} is {ia.get(i)!r} in one and {ib.get(i)!r} in the other"
    return None
