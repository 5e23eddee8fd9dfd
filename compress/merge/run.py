"""Streaming merge executor: recipe -> per-tensor plan -> read, merge, write, one tensor at a time.

Plan: every output tensor gets its sources (model, input name), its resolved parameters (filters and
gradients evaluated at the tensor's relative depth t, as mergekit does) and its output dtype. Before
any data is read the plan checks what can be checked from headers alone: architectures, tied
embeddings, names and shapes (naming the first mismatching tensor), vocabulary sizes, parameters.

Execution: a small thread pool runs "read the inputs of one tensor (pread, no mmap, so the inputs
never accumulate in this process's memory) -> merge in fp32 on the device -> cast -> write at the
planned offset" for a bounded window of tensors, so I/O overlaps compute and peak memory is about
(window) x (number of models) x (one tensor). VaRM runs a statistics pass first.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.arch import family_for, split_layer_name
from compress.arch.remote_code import pruned_modeling_files
from compress.checkpoint import Checkpoint, TensorSpec, check_output, save_checkpoint
from compress.checkpoint.reader import read_safetensors_header
from compress.checkpoint.writer import DEFAULT_MAX_SHARD
from compress.errors import CompressError
from compress.merge.methods import Job, Method, get_method
from compress.merge.methods.stream import tune_malloc
from compress.merge.methods.varm import squared_change, varm_weights
from compress.merge.recipe import Recipe, evaluate_setting, setting_leaves
from compress.merge.vocab import (
    TOKENIZER_FILES,
    VocabMap,
    align,
    default_rows,
    file_vocab,
    first_difference,
    load_tokenizer,
    save_tokenizer,
    union_tokenizer,
    usable_vocab,
    vocab_map,
)
from compress.model.device import DTYPES, dtype_name, parse_device
from compress.progress import info, progress_bar, warn

METHOD_VERSION = 2  # 2: DARE/DELLA masks drawn as [U < p] (other bits than version 1 for a seed)
_GENERIC_LAYER = re.compile(r"^(.*?\blayers)\.(\d+)\.(.+)$")


# ---- reading ------------------------------------------------------------------------------
class TensorReader:
    """Reads single tensors of one checkpoint with pread (safetensors) or through Checkpoint (.bin)."""

    def __init__(self, path: Path):
        self.ckpt = Checkpoint(path)
        self.path = Path(path)
        self._where: dict[str, tuple[Path, int, int]] = {}
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()
        if self.ckpt.format == "safetensors":
            for f in self.ckpt.files():
                header = read_safetensors_header(f)
                with open(f, "rb") as fh:
                    start = 8 + int.from_bytes(fh.read(8), "little")
                for name, meta in header.items():
                    if name != "__metadata__":
                        b, e = meta["data_offsets"]
                        self._where[name] = (f, start + b, e - b)

    @property
    def config(self) -> dict[str, Any]:
        return self.ckpt.config

    def names(self) -> list[str]:
        return self.ckpt.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.ckpt.info(name).shape)

    def dtype(self, name: str) -> torch.dtype:
        return self.ckpt.info(name).dtype

    def read(self, name: str) -> torch.Tensor:
        where = self._where.get(name)
        if where is None:
            return self.ckpt.get(name)
        f, offset, n = where
        with self._lock:
            fd = self._fds.get(f)
            if fd is None:
                fd = self._fds[f] = os.open(f, os.O_RDONLY)
        buf = torch.empty(n, dtype=torch.uint8)  # not zero-filled, unlike bytearray(n)
        view = memoryview(buf.numpy()).cast("B")
        got = 0
        while got < n:
            k = os.preadv(fd, [view[got:]], offset + got)
            if k <= 0:
                raise CompressError(f"short read of {name!r} from {f}")
            got += k
        info_ = self.ckpt.info(name)
        if n == 0:
            return torch.empty(info_.shape, dtype=info_.dtype)
        return buf.view(info_.dtype).reshape(info_.shape)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.ckpt.close()


# ---- plan ---------------------------------------------------------------------------------
@dataclass
class Source:
    model: int  # index into MergePlan.models
    name: str


@dataclass
class TensorTask:
    out: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    base: Source | None
    others: list[Source]
    params: dict[str, Any]
    model_params: list[dict[str, Any]]
    t: float
    vocab: VocabMap | None = None  # rows re-laid out in the output vocabulary (tokenizer_source)
    layer: int | None = None


@dataclass
class MergePlan:
    method: Method
    models: list[Path]
    tasks: list[TensorTask]
    config: dict[str, Any]
    side_files: list[Path]
    recipe: Recipe
    recipe_text: str
    base: int | None
    warnings: list[str] = field(default_factory=list)
    keep: list[Any] = field(default_factory=list)  # temporary folders alive until the merge is written
    tokenizer_info: dict[str, Any] | None = None


def _field_line(lines: dict[tuple, int], path: tuple) -> str:
    for i in range(len(path), -1, -1):
        if path[:i] in lines:
            return f" (line {lines[path[:i]]})"
    return ""


def _dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _resolve_model(ref: str, recipe_dir: Path | None, where: str) -> Path:
    if "+" in ref and not Path(ref).exists():
        raise CompressError(f"{where}: LoRA references (model+lora) are not supported: merge the LoRA first")
    for cand in [Path(ref), *([recipe_dir / ref] if recipe_dir is not None else [])]:
        if cand.is_dir():
            return cand.resolve()
    raise CompressError(f"{where}: model folder {ref!r} not found (compress works offline: give a local folder)")


def _coerce(method: Method, key: str, value: Any, where: str) -> Any:
    spec = method.per_model.get(key) or method.shared.get(key)
    assert spec is not None
    kind = spec.kind
    try:
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif kind is bool:
            if not isinstance(value, bool):
                raise ValueError
        elif kind is str:
            value = str(value)
    except (TypeError, ValueError):
        raise CompressError(f"{where}: {key} must be a {kind.__name__}, got {value!r}") from None
    if spec.check is not None:
        problem = spec.check(value)
        if problem is not None:
            raise CompressError(f"{where}: {key}: {problem}")
    return value


def _check_parameter_blocks(recipe: Recipe, method: Method, lines: dict[tuple, int]) -> None:
    """Unknown parameters and out-of-range values, reported with their line before any work."""
    blocks: list[tuple[tuple, dict[str, Any] | None, bool]] = [(("parameters",), recipe.parameters, True)]
    for i, m in enumerate(recipe.models or []):
        blocks.append((("models", i, "parameters"), m.parameters, False))
    for i, s in enumerate(recipe.slices or []):
        blocks.append((("slices", i, "parameters"), s.parameters, True))
        for j, src in enumerate(s.sources):
            blocks.append((("slices", i, "sources", j, "parameters"), src.parameters, False))
    known = set(method.per_model) | set(method.shared)
    for path, params, shared_ok in blocks:
        for key, setting in (params or {}).items():
            where = f"{_dotted(path + (key,))}{_field_line(lines, path + (key,))}"
            if key not in known:
                raise CompressError(f"{where}: unknown parameter {key!r} for merge_method {method.name} "
                                    f"(known: {', '.join(sorted(known)) or 'none'})")
            if not shared_ok and key in method.shared and key not in method.per_model:
                raise CompressError(f"{where}: {key} is a global parameter of {method.name}: set it under the top-level parameters")
            for leaf in setting_leaves(setting):
                _coerce(method, key, leaf, where)


def _family_split(config: dict[str, Any], names: list[str]) -> Callable[[str], tuple[str, int, str] | None]:
    try:
        fam = family_for(config, names)
        prefix = fam.layers

        def split(name: str) -> tuple[str, int, str] | None:
            s = split_layer_name(fam, name)
            return (prefix, s[0], s[1]) if s else None
        return split
    except CompressError:
        def split_generic(name: str) -> tuple[str, int, str] | None:
            m = _GENERIC_LAYER.match(name)
            return (m.group(1), int(m.group(2)), m.group(3)) if m else None
        return split_generic


def _is_vocab_tensor(name: str) -> bool:
    return "embed_tokens" in name or name.startswith("lm_head") or ".wte." in name or "embed_in" in name


def _parse_dtype(name: str | None, field_: str, lines: dict[tuple, int]) -> torch.dtype | None:
    if name is None or name == "auto":
        return None
    d = DTYPES.get(str(name).lower())
    if d is None:
        raise CompressError(f"{field_}{_field_line(lines, (field_,))}: unknown dtype {name!r}: use bfloat16, float16 or float32")
    return d


def build_plan(recipe: Recipe, lines: dict[tuple, int] | None = None, recipe_text: str = "",
               recipe_dir: Path | None = None, dtype: str | None = None) -> MergePlan:
    """Check everything that can be checked from headers and resolve every tensor's parameters."""
    lines = lines or {}
    method = get_method(recipe.merge_method)
    _check_parameter_blocks(recipe, method, lines)
    _chat_template(recipe)
    out_dtype = _parse_dtype(recipe.out_dtype, "out_dtype", lines) or _parse_dtype(recipe.dtype, "dtype", lines) \
        or (DTYPES.get(dtype) if dtype not in (None, "auto") else None)

    paths: list[Path] = []
    index: dict[Path, int] = {}

    def model_index(ref: str, where: tuple) -> int:
        p = _resolve_model(ref, recipe_dir, f"{_dotted(where)}{_field_line(lines, where)}")
        if p not in index:
            index[p] = len(paths)
            paths.append(p)
        return index[p]

    base = model_index(recipe.base_model, ("base_model",)) if recipe.base_model else None
    if method.needs_base and base is None and not any(s.base_model for s in recipe.slices or []):
        raise CompressError(f"merge_method {method.name} needs a base_model (the model the task vectors are measured "
                            f"from): add base_model to the recipe or pass --base")

    # Normalise `models:` to one slice over all layers, as mergekit does.
    readers: list[TensorReader] = []
    raw_slices: list[dict[str, Any]] = []
    if recipe.models is not None:
        srcs = [(model_index(m.model, ("models", i, "model")), None, m.parameters, ("models", i))
                for i, m in enumerate(recipe.models)]
        if method.needs_base and base is not None and base not in [s[0] for s in srcs]:
            srcs.append((base, None, None, ("base_model",)))
        raw_slices.append({"sources": srcs, "base": base, "parameters": None})
    else:
        for i, sl in enumerate(recipe.slices or []):
            srcs = [(model_index(s.model, ("slices", i, "sources", j, "model")), tuple(s.layer_range), s.parameters,
                     ("slices", i, "sources", j)) for j, s in enumerate(sl.sources)]
            b = model_index(sl.base_model, ("slices", i, "base_model")) if sl.base_model else base
            if method.needs_base and b not in [s[0] for s in srcs]:
                raise CompressError(f"slices[{i}]{_field_line(lines, ('slices', i))}: the base_model must be one of "
                                    f"the slice's sources for {method.name}")
            raw_slices.append({"sources": srcs, "base": b, "parameters": sl.parameters})

    readers = [TensorReader(p) for p in paths]
    try:
        return _plan_tensors(recipe, method, paths, readers, raw_slices, base, out_dtype, lines, recipe_text,
                             recipe_dir)
    finally:
        for r in readers:
            r.close()


def _plan_tensors(recipe: Recipe, method: Method, paths: list[Path], readers: list[TensorReader],
                  raw_slices: list[dict[str, Any]], base: int | None, out_dtype: torch.dtype | None,
                  lines: dict[tuple, int], recipe_text: str, recipe_dir: Path | None) -> MergePlan:
    ref = base if base is not None else raw_slices[0]["sources"][0][0]
    ref_reader = readers[ref]
    # Architecture and tied-embedding compatibility, from config.json alone.
    def arch(r: TensorReader) -> tuple:
        return (r.config.get("model_type"), tuple(r.config.get("architectures") or ()))
    for i, r in enumerate(readers):
        if arch(r) != arch(ref_reader):
            raise CompressError(f"models have different architectures: {paths[ref].name} is {arch(ref_reader)[0]}, "
                                f"{paths[i].name} is {arch(r)[0]}; merging needs the same architecture")
        tie_a = bool(ref_reader.config.get("tie_word_embeddings", False))
        tie_b = bool(r.config.get("tie_word_embeddings", False))
        if tie_a != tie_b:
            raise CompressError(f"{paths[i].name} has tie_word_embeddings={tie_b} but {paths[ref].name} has {tie_a}: "
                                f"tied and untied embeddings cannot be merged")

    split = _family_split(ref_reader.config, ref_reader.names())
    ref_names = ref_reader.names()
    nonlayer = [n for n in ref_names if split(n) is None]
    pre = [n for n in nonlayer if _is_vocab_tensor(n) and not n.startswith("lm_head")]
    post = [n for n in nonlayer if n not in pre]
    tok = _plan_vocab(recipe, paths, readers, ref, pre, lines, recipe_dir) if (recipe.tokenizer_source or recipe.tokenizer) \
        else None
    side_files = ref_reader.ckpt.side_files() if tok is None else tok.side_files
    if tok is None:
        _check_same_vocab(paths, readers, ref, pre)

    tasks: list[TensorTask] = []
    layer_offset = 0
    layer_types: list[Any] = []
    total_layers = 0
    def add(out: str, sl: dict[str, Any], in_names: list[str], t: float, layer: int | None) -> None:
        srcs = sl["sources"]
        b = sl["base"]
        shapes = []
        for (m, _, _, _), name in zip(srcs, in_names, strict=True):
            r = readers[m]
            if name not in r.names():
                raise CompressError(f"tensor {name!r} is missing from {paths[m]} (present in {paths[ref].name}): "
                                    f"the models have different architectures")
            shapes.append(r.shape(name))
        vm = None
        lead = next((k for k, src in enumerate(srcs) if src[0] == b), 0)
        ref_shape = shapes[lead]
        ref_name = paths[srcs[lead][0]].name
        vocab = _is_vocab_tensor(in_names[lead]) and len(ref_shape) >= 1
        if vocab and tok is not None:
            for (m, _, _, _), name, shp in zip(srcs, in_names, shapes, strict=True):
                if len(shp) != len(ref_shape) or shp[1:] != ref_shape[1:]:
                    raise CompressError(f"shape mismatch at tensor {name!r}: {tuple(shp)} in {paths[m].name} but "
                                        f"{tuple(ref_shape)} in {ref_name}; the models have different architectures")
            vm = tok.map_for(sorted({m for m, _, _, _ in srcs}), b)
            ref_shape = (vm.size, *ref_shape[1:])
            if vm.identity and all(shp[0] == vm.size for shp in shapes):
                vm = None  # every model already has the output layout: merge the rows directly
        for (m, _, _, _), name, shp in zip(srcs, in_names, shapes, strict=True):
            if vm is not None or shp == ref_shape:
                continue
            if vocab and len(shp) == len(ref_shape) and shp[1:] == ref_shape[1:]:
                raise CompressError(f"vocabulary sizes differ: {name} has {shp[0]} rows in {paths[m].name} but "
                                    f"{ref_shape[0]} in {ref_name}: set tokenizer_source: union (all tokens), base "
                                    f"(the base's vocabulary) or a model's path")
            raise CompressError(f"shape mismatch at tensor {name!r}: {tuple(shp)} in {paths[m].name} but "
                                f"{tuple(ref_shape)} in {ref_name}; the models have different architectures")
        base_src: Source | None = None
        others: list[Source] = []
        other_scopes: list[tuple] = []
        for (m, _, params, where), name in zip(srcs, in_names, strict=True):
            if method.needs_base and m == b and base_src is None:
                base_src = Source(m, name)
            else:
                others.append(Source(m, name))
                other_scopes.append((params, where))
        n = len(others)
        if n < method.min_models or (method.max_models is not None and n > method.max_models):
            need = (f"exactly {method.max_models + 1}" if method.max_models == method.min_models
                    else f"at least {method.min_models + 1}") if method.needs_base else f"at least {method.min_models}"
            raise CompressError(f"merge_method {method.name} needs {need} models"
                                f"{' including the base' if method.needs_base else ''}, got {n + (1 if base_src else 0)}")
        shared_scopes = [sl["parameters"], recipe.parameters]
        params = {}
        for key, spec in method.shared.items():
            params[key] = _resolve(method, key, spec, shared_scopes, out, t)
        model_params = []
        for (p, where), s in zip(other_scopes, others, strict=True):
            scopes = [p, sl["parameters"], recipe.parameters]
            mp = {key: _resolve(method, key, spec, scopes, s.name, t, _dotted(where)) for key, spec in method.per_model.items()}
            _check_pair(method, mp, s.name, paths[s.model].name)
            model_params.append(mp)
        dt = out_dtype or readers[srcs[lead][0]].dtype(in_names[lead])
        tasks.append(TensorTask(out, tuple(ref_shape), dt, base_src, others, params, model_params, t, vm, layer))

    first, last = raw_slices[0], raw_slices[-1]
    for name in pre:
        add(name, first, [name] * len(first["sources"]), 0.0, None)
    ref_types = ref_reader.config.get("layer_types")
    for sl in raw_slices:
        srcs = sl["sources"]
        ranges = []
        for m, rng, _, _ in srcs:
            if rng is None:
                layers = {s[1] for s in (split(n) for n in readers[m].names()) if s is not None}
                rng = (0, max(layers) + 1 if layers else 0)
            ranges.append(rng)
        lengths = {e - s for s, e in ranges}
        if len(lengths) != 1:
            raise CompressError(f"models have different numbers of layers ({', '.join(str(e - s) for s, e in ranges)}): "
                                f"merging needs the same architecture")
        n_layers = lengths.pop()
        lead_m, lead_start = srcs[0][0], ranges[0][0]
        by_layer: dict[int, list[tuple[str, str]]] = {}
        for nm in readers[lead_m].names():
            s = split(nm)
            if s is not None:
                by_layer.setdefault(s[1], []).append((s[0], s[2]))
        for idx in range(n_layers):
            t = idx / (n_layers - 1) if n_layers > 1 else 1.0
            rels = by_layer.get(lead_start + idx)
            if rels is None:
                raise CompressError(f"layer {lead_start + idx} does not exist in {paths[lead_m].name}")
            for prefix, rel in rels:
                out = f"{prefix}.{layer_offset + idx}.{rel}"
                in_names = [f"{prefix}.{s + idx}.{rel}" for s, _ in ranges]
                add(out, sl, in_names, t, layer_offset + idx)
            if isinstance(ref_types, list) and lead_start + idx < len(ref_types):
                layer_types.append(ref_types[lead_start + idx])
        layer_offset += n_layers
        total_layers += n_layers
    for name in post:
        add(name, last, [name] * len(last["sources"]), 0.0, None)

    config = json.loads(json.dumps(ref_reader.config))
    if recipe.slices is not None:
        config["num_hidden_layers"] = total_layers
        if isinstance(ref_types, list):
            config["layer_types"] = layer_types
    vocab_rows = next((t.shape[0] for t in tasks if "embed_tokens" in t.out), None)
    if vocab_rows is not None and "vocab_size" in config:
        config["vocab_size"] = vocab_rows
    if out_dtype is not None:
        config["torch_dtype" if "dtype" not in config else "dtype"] = dtype_name(out_dtype)
    return MergePlan(method, paths, tasks, config, side_files, recipe, recipe_text, base,
                     keep=[tok.keep] if tok is not None and tok.keep is not None else [],
                     tokenizer_info=tok.info if tok is not None else None)


@dataclass
class _TokenizerPlan:
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


def _with_padding_rows(vocab: dict[str, int], rows: int) -> dict[str, int]:
    """Rows no token uses (padding beyond the tokenizer) as pseudo-tokens, so they keep their place."""
    used = set(vocab.values())
    return {**vocab, **{f"\0row{i}": i for i in range(rows) if i not in used}}


def _check_same_vocab(paths: list[Path], readers: list[TensorReader], ref: int, pre: list[str]) -> None:
    """Without tokenizer_source the rows merge by id: the tokenizers must agree on every id (mergekit#47)."""
    embed = next((n for n in pre if "embed" in n or ".wte." in n), None)
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
        rows = min(readers[ref].shape(embed)[0], readers[m].shape(embed)[0]) if embed and embed in readers[m].names() \
            else max(len(ref_vocab), len(other))
        diff = first_difference(ref_vocab, other, rows)
        if diff is not None:
            raise CompressError(f"the tokenizers of {paths[ref].name} and {p.name} differ ({diff}), so their embedding "
                                f"rows mean different tokens: set tokenizer_source: union, base or a model's path")


def _plan_vocab(recipe: Recipe, paths: list[Path], readers: list[TensorReader], ref: int, pre: list[str],
                lines: dict[tuple, int], recipe_dir: Path | None) -> _TokenizerPlan:
    """Build the output tokenizer (`tokenizer_source`: union, base or a model) and every model's vocabulary."""
    cfg = recipe.tokenizer
    source = recipe.tokenizer_source if cfg is None else cfg.source
    field_ = ("tokenizer_source",) if cfg is None else ("tokenizer", "source")
    where = f"{_dotted(field_)}{_field_line(lines, field_)}"
    if cfg is not None and cfg.tokens:
        raise CompressError(f"tokenizer.tokens{_field_line(lines, ('tokenizer', 'tokens'))}: per-token embedding "
                            f"overrides are not supported; remove them (missing tokens get mergekit's default rows)")
    pad = cfg.pad_to_multiple_of if cfg is not None else None
    embed = next((n for n in pre if "embed" in n or ".wte." in n), None)
    if embed is None:
        raise CompressError(f"{where}: no token embedding tensor found, so the vocabularies cannot be aligned")
    rows = {}
    for m, r in enumerate(readers):
        if embed not in r.names():
            raise CompressError(f"tensor {embed!r} is missing from {paths[m]}: the models have different architectures")
        rows[m] = r.shape(embed)[0]
    toks = {m: load_tokenizer(p) for m, p in enumerate(paths)}
    vocabs = {m: _with_padding_rows(usable_vocab(toks[m], rows[m]), rows[m]) for m in toks}
    if source == "union":
        out_tok = union_tokenizer(toks[ref], [(toks[m], rows[m]) for m in toks if m != ref], rows[ref])
        keep, files = save_tokenizer(out_tok)
        own_rows = rows[ref]
        side = [f for f in readers[ref].ckpt.side_files() if f.name not in TOKENIZER_FILES] + files
    else:
        if source == "base":
            src = ref
        else:
            p = _resolve_model(source, recipe_dir, where)
            src = paths.index(p) if p in paths else None
            if src is None:
                src_tok = load_tokenizer(p)
        keep = None
        if src is not None:
            out_tok, own_rows = toks[src], rows[src]
            side = readers[src].ckpt.side_files()
        else:
            out_tok, own_rows = src_tok, 0
            folder = _resolve_model(source, recipe_dir, where)
            side = [f for f in readers[ref].ckpt.side_files() if f.name not in TOKENIZER_FILES] + \
                [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
    vocab_out = _with_padding_rows(out_tok.get_vocab(), own_rows)
    size = max(vocab_out.values(), default=-1) + 1
    n_real = size
    if pad and size % pad:
        size += pad - size % pad
    added = len(vocab_out) - len(vocabs[ref])
    info = {"source": source, "rows": size, "tokens": n_real, "pad_to_multiple_of": pad,
            "rows_per_model": {str(paths[m]): rows[m] for m in rows}}
    if source == "union":
        info["tokens_added_to_base"] = added
    return _TokenizerPlan(vocab_out, size, vocabs, side, keep, info)


def _resolve(method: Method, key: str, spec: Any, scopes: list[Any], tensor: str, t: float, where: str = "parameters") -> Any:
    for scope in scopes:
        if scope and key in scope:
            v = evaluate_setting(scope[key], tensor, t)
            if v is not None:
                return _coerce(method, key, v, where)
    if spec.required:
        raise CompressError(f"merge_method {method.name} needs the parameter {key!r} (missing for tensor {tensor})")
    return spec.default


def _check_pair(method: Method, mp: dict[str, Any], tensor: str, model: str) -> None:
    if "epsilon" in mp and mp["density"] < 1:
        rho, eps = mp["density"], mp["epsilon"]
        if not (rho - eps > 0 and rho + eps < 1):
            raise CompressError(f"{method.name}: density {rho} and epsilon {eps} must satisfy 0 < density - epsilon "
                                f"and density + epsilon < 1 (tensor {tensor}, model {model})")


# ---- execution ----------------------------------------------------------------------------
def _bounded_map(fn: Callable[[Any], Any], items: list[Any], threads: int) -> Iterator[Any]:
    """Run fn over items on a pool with at most `threads + 1` in flight; yield results as they finish."""
    if threads <= 1:
        for it in items:
            yield fn(it)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: set[Future] = set()
        it = iter(items)
        try:
            for x in it:
                pending.add(pool.submit(fn, x))
                if len(pending) > threads:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for d in done:
                        yield d.result()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for d in done:
                    yield d.result()
        except BaseException:
            for p in pending:
                p.cancel()
            raise


class _Loader:
    def __init__(self, plan: MergePlan, device: torch.device):
        self.readers = [TensorReader(p) for p in plan.models]
        self.paths = plan.models
        self.device = device
        self._defaults: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._checked: set[tuple[int, str]] = set()

    def _check(self, t: torch.Tensor, src: Source) -> None:
        # One reduction instead of an elementwise isfinite pass: a NaN/Inf anywhere makes the sum
        # non-finite (an overflowing sum of finite values is re-checked exactly). Once per input
        # tensor (methods that read an input twice do not pay twice).
        key = (src.model, src.name)
        if key in self._checked:
            return
        if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
            raise CompressError(f"tensor {src.name!r} in {self.paths[src.model]} contains NaN or Inf: "
                                f"fix or re-export that model before merging")
        self._checked.add(key)

    def defaults(self, task: TensorTask) -> torch.Tensor:
        """The default rows of a vocabulary tensor (tokens some model lacks), computed once per tensor."""
        assert task.vocab is not None
        with self._lock:
            got = self._defaults.get(task.out)
            if got is None:
                names = {s.model: s.name for s in ([task.base] if task.base else []) + task.others}
                got = default_rows(task.vocab, lambda m: self.readers[m].read(names[m]))
                self._defaults[task.out] = got
            return got

    def load(self, src: Source, task: TensorTask) -> torch.Tensor:
        reader = self.readers[src.model]
        t = reader.read(src.name)
        if task.vocab is not None:
            self._check(t, src)
            return align(t, src.model, task.vocab, self.defaults(task)).to(self.device)
        # Stored dtype: the methods convert chunk by chunk to fp32 and never modify their inputs.
        self._check(t, src)
        return t.to(self.device)

    def close(self) -> None:
        for r in self.readers:
            r.close()


def varm_statistics(plan: MergePlan, loader: _Loader, threads: int) -> dict[str, torch.Tensor]:
    """Pass 1 of VaRM: Σ Δθ² and numel per target per tensor, aggregated per granularity -> weights."""
    def stat(task: TensorTask) -> tuple[str, list[tuple[float, int]]]:
        assert task.base is not None
        b = loader.load(task.base, task)
        return task.out, [squared_change(b, loader.load(s, task)) for s in task.others]

    sums: dict[str, list[tuple[float, int]]] = {}
    with progress_bar("varm statistics", len(plan.tasks)) as advance:
        for name, s in _bounded_map(stat, plan.tasks, threads):
            sums[name] = s
            advance(1)
    weights: dict[str, torch.Tensor] = {}
    for task in plan.tasks:
        p = task.params
        g = p["granularity"]
        if g == "matrix" or (g == "layer" and task.layer is None):
            group = [task]
        elif g == "layer":
            group = [x for x in plan.tasks if x.layer == task.layer]
        else:
            group = plan.tasks
        k = len(task.others)
        stats = [sum(sums[x.out][j][0] for x in group) / max(1, sum(sums[x.out][j][1] for x in group)) for j in range(k)]
        weights[task.out] = varm_weights(stats, p["norm"], p["temperature"], p["zero_fallback"])
    return weights


def merge_one(plan: MergePlan, task: TensorTask, loader: _Loader, seed: int,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    base = loader.load(task.base, task) if task.base is not None else None
    lazy = plan.method.lazy
    tensors = [] if lazy else [loader.load(s, task) for s in task.others]
    job = Job(task.out, base, tensors, task.model_params, task.params, seed, [s.model for s in task.others],
              weights.to(torch.float32) if weights is not None else None,
              (lambda i: loader.load(task.others[i], task)) if lazy else None, out_dtype=task.dtype,
              device=loader.device)
    out = plan.method.merge(job)
    return out.to(task.dtype)


def execute(plan: MergePlan, output: str | os.PathLike[str], *, device: str = "cpu", seed: int = 42,
            force: bool = False, max_shard_size: int | str = DEFAULT_MAX_SHARD, threads: int | None = None,
            command: str | None = None) -> dict[str, Any]:
    """Run the plan and write the merged checkpoint atomically; return a small report."""
    import time

    dev = parse_device(device)
    check_output(output, plan.models, force)
    tune_malloc()
    threads = threads or min(4, max(2, os.cpu_count() or 2))
    loader = _Loader(plan, dev)
    start = time.perf_counter()
    # The workers already keep the cores busy: each op gets its share of the cores instead of all
    # of them (2 workers x 2 intra-op threads on 2 cores made TIES ~10 % slower).
    intra = torch.get_num_threads()
    if dev.type == "cpu" and threads > 1:
        torch.set_num_threads(max(1, intra // threads))
    try:
        weights = varm_statistics(plan, loader, threads) if plan.method.two_pass else {}
        specs = [TensorSpec(t.out, t.shape, t.dtype) for t in plan.tasks]

        def work(task: TensorTask) -> tuple[str, torch.Tensor]:
            return task.out, merge_one(plan, task, loader, seed, weights.get(task.out))

        def produce(writer: Any) -> None:
            with progress_bar(f"merge ({plan.method.name})", len(plan.tasks)) as advance:
                for _ in _bounded_map(lambda tk: writer.write(*work(tk)), plan.tasks, threads):
                    advance(1)

        resolved = _resolved_recipe(plan, seed)
        per_tensor = {t.out: {"t": t.t, **t.params, "models": [{"model": str(plan.models[s.model]), **mp}
                                                                for s, mp in zip(t.others, t.model_params, strict=True)],
                              **({"varm_weights": weights[t.out].tolist()} if t.out in weights else {})}
                      for t in plan.tasks}
        files = {"mergekit_config.yml": plan.recipe_text or _yaml(resolved), **_chat_template(plan.recipe),
                 "compress_merge.json": json.dumps({"method": plan.method.name, "method_version": METHOD_VERSION,
                                                    "seed": seed, "resolved": resolved,
                                                    **({"tokenizer": plan.tokenizer_info} if plan.tokenizer_info else {}),
                                                    "tensors": per_tensor},
                                                   indent=1, default=str) + "\n"}
        config, code = pruned_modeling_files(plan.config, [t.out for t in plan.tasks])  # code from the package only
        save_checkpoint(output, specs, produce, config=config, inputs=[str(p) for p in plan.models],
                        side_files=plan.side_files, force=force, max_shard_size=max_shard_size, command=command,
                        recipe=resolved, extra={"merge_method": plan.method.name, "seed": seed,
                                                "device": str(dev), "threads": threads}, files={**files, **code},
                        method=plan.method.name, tags=("merge",))
    finally:
        loader.close()
        torch.set_num_threads(intra)
    wall = time.perf_counter() - start
    for w in plan.warnings:
        warn(w)
    info(f"merged {len(plan.models)} models with {plan.method.name} into {output} ({len(plan.tasks)} tensors, {wall:.1f}s)")
    return {"output": str(output), "method": plan.method.name, "models": [str(p) for p in plan.models],
            "tensors": len(plan.tasks), "seconds": round(wall, 3), "seed": seed}


def _chat_template(recipe: Recipe) -> dict[str, str]:
    """`chat_template: auto` (or absent) keeps the tokenizer source's template; Jinja text replaces it."""
    ct = recipe.chat_template
    if ct is None or ct == "auto":
        return {}
    if "{%" in ct or "{{" in ct:
        return {"chat_template.jinja": ct}
    raise CompressError(f"chat_template {ct!r}: named templates are not built in; give the Jinja text or 'auto'")


def _resolved_recipe(plan: MergePlan, seed: int) -> dict[str, Any]:
    r = plan.recipe.model_dump(mode="json", exclude_none=True)
    defaults = {k: v.default for k, v in plan.method.shared.items() if not v.required}
    r["parameters"] = {**defaults, **(r.get("parameters") or {})}
    r["resolved_models"] = [str(p) for p in plan.models]
    r["seed"] = seed
    return r


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)
