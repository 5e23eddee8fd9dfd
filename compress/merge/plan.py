"""Planning a merge: recipe -> one task per output tensor, checked from headers before any data is read.

Every output tensor gets its sources (model, input name), its resolved parameters (filters and
gradients evaluated at the tensor's relative depth t, as mergekit does) and its output dtype. The
plan checks what headers alone can show: architectures, tied embeddings, names, shapes and dtypes
(naming the first mismatching tensor), vocabulary sizes and tokenizers, parameters.

Steps (`build_plan`): resolve the models -> normalise `models:` / `slices:` to slices -> check the
models are compatible -> plan the vocabulary -> one task per tensor (before the layers, each layer
of each slice, after the layers) -> the output config.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.arch import family_for, split_layer_name
from compress.checkpoint import Checkpoint
from compress.errors import CompressError
from compress.merge.methods import Method, get_method
from compress.merge.params import (
    check_model_params,
    check_parameter_blocks,
    check_weights,
    dotted,
    field_line,
    parse_dtype,
    resolve,
    resolve_model,
)
from compress.merge.plan_vocab import TokenizerPlan, check_same_vocab, plan_vocab
from compress.merge.recipe import Recipe
from compress.merge.vocab import VocabMap
from compress.model.device import DTYPES, dtype_name

_GENERIC_LAYER = re.compile(r"^(.*?\blayers)\.(\d+)\.(.+)$")


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


@dataclass
class SliceSpec:
    """One output slice: its sources (model, layer range or None = all, parameters, recipe path)."""

    sources: list[tuple[int, tuple[int, int] | None, dict[str, Any] | None, tuple]]
    base: int | None
    parameters: dict[str, Any] | None


@dataclass
class _Context:
    """What every tensor task of one plan needs."""

    recipe: Recipe
    method: Method
    paths: list[Path]
    readers: list[Checkpoint]
    ref: int
    out_dtype: torch.dtype | None
    tok: TokenizerPlan | None


def chat_template_files(recipe: Recipe) -> dict[str, str]:
    """`chat_template: auto` (or absent) keeps the tokenizer source's template; Jinja text replaces it."""
    ct = recipe.chat_template
    if ct is None or ct == "auto":
        return {}
    if "{%" in ct or "{{" in ct:
        return {"chat_template.jinja": ct}
    raise CompressError(f"chat_template {ct!r}: named templates are not built in; give the Jinja text or 'auto'")


def build_plan(recipe: Recipe, lines: dict[tuple, int] | None = None, recipe_text: str = "",
               recipe_dir: Path | None = None, dtype: str | None = None) -> MergePlan:
    """Check everything that can be checked from headers and resolve every tensor's parameters."""
    lines = lines or {}
    method = get_method(recipe.merge_method)
    check_parameter_blocks(recipe, method, lines)
    chat_template_files(recipe)
    out_dtype = parse_dtype(recipe.out_dtype, "out_dtype", lines) or parse_dtype(recipe.dtype, "dtype", lines) \
        or (DTYPES.get(dtype) if dtype not in (None, "auto") else None)
    paths, base, slices = _slices(recipe, method, lines, recipe_dir)
    readers: list[Checkpoint] = []
    try:
        for p in paths:
            readers.append(Checkpoint(p))
        return _plan_tensors(recipe, method, paths, readers, slices, base, out_dtype, lines, recipe_text, recipe_dir)
    finally:
        for r in readers:
            r.close()


def _slices(recipe: Recipe, method: Method, lines: dict[tuple, int],
            recipe_dir: Path | None) -> tuple[list[Path], int | None, list[SliceSpec]]:
    """The distinct model folders, the base's index, and `models:` normalised to one slice (as mergekit)."""
    paths: list[Path] = []
    index: dict[Path, int] = {}

    def model_index(ref: str, where: tuple) -> int:
        p = resolve_model(ref, recipe_dir, f"{dotted(where)}{field_line(lines, where)}")
        if p not in index:
            index[p] = len(paths)
            paths.append(p)
        return index[p]

    base = model_index(recipe.base_model, ("base_model",)) if recipe.base_model else None
    if method.needs_base and base is None and not any(s.base_model for s in recipe.slices or []):
        raise CompressError(f"merge_method {method.name} needs a base_model (the model the task vectors are measured "
                            f"from): add base_model to the recipe or pass --base")
    if recipe.models is not None:
        srcs = [(model_index(m.model, ("models", i, "model")), None, m.parameters, ("models", i))
                for i, m in enumerate(recipe.models)]
        if method.needs_base and base is not None and base not in [s[0] for s in srcs]:
            srcs.append((base, None, None, ("base_model",)))
        return paths, base, [SliceSpec(srcs, base, None)]
    slices = []
    for i, sl in enumerate(recipe.slices or []):
        srcs = [(model_index(s.model, ("slices", i, "sources", j, "model")), tuple(s.layer_range), s.parameters,
                 ("slices", i, "sources", j)) for j, s in enumerate(sl.sources)]
        b = model_index(sl.base_model, ("slices", i, "base_model")) if sl.base_model else base
        if method.needs_base and b not in [s[0] for s in srcs]:
            raise CompressError(f"slices[{i}]{field_line(lines, ('slices', i))}: the base_model must be one of "
                                f"the slice's sources for {method.name}")
        slices.append(SliceSpec(srcs, b, sl.parameters))
    return paths, base, slices


def _check_compatible(paths: list[Path], readers: list[Checkpoint], ref: int) -> None:
    """Architecture and tied-embedding compatibility, from config.json alone."""
    def arch(r: Checkpoint) -> tuple:
        return (r.config.get("model_type"), tuple(r.architectures))
    cfg_ref = readers[ref].config
    for i, r in enumerate(readers):
        if arch(r) != arch(readers[ref]):
            raise CompressError(f"models have different architectures: {paths[ref].name} is {arch(readers[ref])[0]}, "
                                f"{paths[i].name} is {arch(r)[0]}; merging needs the same architecture")
        tie_a = bool(cfg_ref.get("tie_word_embeddings", False))
        tie_b = bool(r.config.get("tie_word_embeddings", False))
        if tie_a != tie_b:
            raise CompressError(f"{paths[i].name} has tie_word_embeddings={tie_b} but {paths[ref].name} has {tie_a}: "
                                f"tied and untied embeddings cannot be merged")


def _family_split(config: dict[str, Any], names: list[str]) -> Callable[[str], tuple[str, int, str] | None]:
    """name -> (layers prefix, layer index, name within the layer), or None outside the layers."""
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


def _plan_tensors(recipe: Recipe, method: Method, paths: list[Path], readers: list[Checkpoint],
                  slices: list[SliceSpec], base: int | None, out_dtype: torch.dtype | None,
                  lines: dict[tuple, int], recipe_text: str, recipe_dir: Path | None) -> MergePlan:
    ref = base if base is not None else slices[0].sources[0][0]
    _check_compatible(paths, readers, ref)
    split = _family_split(readers[ref].config, readers[ref].names())
    nonlayer = [n for n in readers[ref].names() if split(n) is None]
    pre = [n for n in nonlayer if _is_vocab_tensor(n) and not n.startswith("lm_head")]
    post = [n for n in nonlayer if n not in pre]
    tok = None
    if recipe.tokenizer_source or recipe.tokenizer:
        tok = plan_vocab(recipe, paths, readers, ref, pre, lines, recipe_dir)
    else:
        check_same_vocab(paths, readers, ref, pre)
    ctx = _Context(recipe, method, paths, readers, ref, out_dtype, tok)
    tasks = [_task(ctx, name, slices[0], [name] * len(slices[0].sources), 0.0, None) for name in pre]
    layer_types: list[Any] = []
    offset = 0
    for sl in slices:
        offset = _layer_tasks(ctx, sl, split, offset, tasks, layer_types)
    tasks += [_task(ctx, name, slices[-1], [name] * len(slices[-1].sources), 0.0, None) for name in post]
    config = _output_config(readers[ref].config, recipe, tasks, offset, layer_types, out_dtype)
    return MergePlan(method, paths, tasks, config, readers[ref].side_files() if tok is None else tok.side_files,
                     recipe, recipe_text, base, keep=[tok.keep] if tok is not None and tok.keep is not None else [],
                     tokenizer_info=tok.info if tok is not None else None)


def _layer_tasks(ctx: _Context, sl: SliceSpec, split: Callable[[str], tuple[str, int, str] | None], offset: int,
                 tasks: list[TensorTask], layer_types: list[Any]) -> int:
    """Append the tasks of one slice's layers (output layers offset, offset + 1, ...); return the next offset."""
    ranges = []
    for m, rng, _, _ in sl.sources:
        if rng is None:
            layers = {s[1] for s in (split(n) for n in ctx.readers[m].names()) if s is not None}
            rng = (0, max(layers) + 1 if layers else 0)
        ranges.append(rng)
    lengths = {e - s for s, e in ranges}
    if len(lengths) != 1:
        raise CompressError(f"models have different numbers of layers ({', '.join(str(e - s) for s, e in ranges)}): "
                            f"merging needs the same architecture")
    n_layers = lengths.pop()
    lead_m, lead_start = sl.sources[0][0], ranges[0][0]
    by_layer: dict[int, list[tuple[str, str]]] = {}
    for nm in ctx.readers[lead_m].names():
        s = split(nm)
        if s is not None:
            by_layer.setdefault(s[1], []).append((s[0], s[2]))
    ref_types = ctx.readers[ctx.ref].config.get("layer_types")
    for idx in range(n_layers):
        t = idx / (n_layers - 1) if n_layers > 1 else 1.0
        rels = by_layer.get(lead_start + idx)
        if rels is None:
            raise CompressError(f"layer {lead_start + idx} does not exist in {ctx.paths[lead_m].name}")
        for prefix, rel in rels:
            in_names = [f"{prefix}.{s + idx}.{rel}" for s, _ in ranges]
            tasks.append(_task(ctx, f"{prefix}.{offset + idx}.{rel}", sl, in_names, t, offset + idx))
        if isinstance(ref_types, list) and lead_start + idx < len(ref_types):
            layer_types.append(ref_types[lead_start + idx])
    return offset + n_layers


def _task(ctx: _Context, out: str, sl: SliceSpec, in_names: list[str], t: float, layer: int | None) -> TensorTask:
    """One output tensor: its checked shape, vocabulary layout, sources and resolved parameters."""
    shapes = _input_shapes(ctx, sl, in_names)
    lead = next((k for k, src in enumerate(sl.sources) if src[0] == sl.base), 0)
    shape, vm = _output_shape(ctx, sl, in_names, shapes, lead)
    base_src, others, scopes = _split_base(ctx.method, sl, in_names)
    _check_model_count(ctx.method, len(others), base_src is not None)
    shared = [sl.parameters, ctx.recipe.parameters]
    params = {key: resolve(ctx.method, key, spec, shared, out, t) for key, spec in ctx.method.shared.items()}
    model_params = []
    for (p, where), s in zip(scopes, others, strict=True):
        scope = [p, sl.parameters, ctx.recipe.parameters]
        mp = {key: resolve(ctx.method, key, spec, scope, s.name, t, dotted(where))
              for key, spec in ctx.method.per_model.items()}
        check_model_params(ctx.method, mp, s.name, ctx.paths[s.model].name)
        model_params.append(mp)
    check_weights(ctx.method, model_params, out)
    dt = ctx.out_dtype or ctx.readers[sl.sources[lead][0]].info(in_names[lead]).dtype
    return TensorTask(out, shape, dt, base_src, others, params, model_params, t, vm, layer)


def _input_shapes(ctx: _Context, sl: SliceSpec, in_names: list[str]) -> list[tuple[int, ...]]:
    """Each source's shape; every source must have the tensor, in a floating-point dtype."""
    shapes = []
    for (m, _, _, _), name in zip(sl.sources, in_names, strict=True):
        r = ctx.readers[m]
        if name not in r:
            raise CompressError(f"tensor {name!r} is missing from {ctx.paths[m]} (present in "
                                f"{ctx.paths[ctx.ref].name}): the models have different architectures")
        info = r.info(name)
        if not info.dtype.is_floating_point:
            raise CompressError(f"tensor {name!r} is stored as {str(info.dtype).removeprefix('torch.')} in "
                                f"{ctx.paths[m]}: merging needs floating-point weights (is the file damaged?)")
        shapes.append(tuple(info.shape))
    return shapes


def _output_shape(ctx: _Context, sl: SliceSpec, in_names: list[str], shapes: list[tuple[int, ...]],
                  lead: int) -> tuple[tuple[int, ...], VocabMap | None]:
    """The output shape, and the vocabulary layout of a vocabulary tensor under a tokenizer source."""
    ref_shape = shapes[lead]
    ref_name = ctx.paths[sl.sources[lead][0]].name
    vocab = _is_vocab_tensor(in_names[lead]) and len(ref_shape) >= 1
    vm = None
    if vocab and ctx.tok is not None:
        for (m, _, _, _), name, shp in zip(sl.sources, in_names, shapes, strict=True):
            if len(shp) != len(ref_shape) or shp[1:] != ref_shape[1:]:
                raise CompressError(f"shape mismatch at tensor {name!r}: {shp} in {ctx.paths[m].name} but "
                                    f"{ref_shape} in {ref_name}; the models have different architectures")
        vm = ctx.tok.map_for(sorted({m for m, _, _, _ in sl.sources}), sl.base)
        ref_shape = (vm.size, *ref_shape[1:])
        if vm.identity and all(shp[0] == vm.size for shp in shapes):
            vm = None  # every model already has the output layout: merge the rows directly
    for (m, _, _, _), name, shp in zip(sl.sources, in_names, shapes, strict=True):
        if vm is not None or shp == ref_shape:
            continue
        if vocab and len(shp) == len(ref_shape) and shp[1:] == ref_shape[1:]:
            raise CompressError(f"vocabulary sizes differ: {name} has {shp[0]} rows in {ctx.paths[m].name} but "
                                f"{ref_shape[0]} in {ref_name}: set tokenizer_source: union (all tokens), base "
                                f"(the base's vocabulary) or a model's path")
        raise CompressError(f"shape mismatch at tensor {name!r}: {shp} in {ctx.paths[m].name} but "
                            f"{ref_shape} in {ref_name}; the models have different architectures")
    return tuple(ref_shape), vm


def _split_base(method: Method, sl: SliceSpec, in_names: list[str]) -> tuple[Source | None, list[Source], list[tuple]]:
    """The base source (methods with a base) and the others, with each other's (parameters, recipe path)."""
    base_src: Source | None = None
    others: list[Source] = []
    scopes: list[tuple] = []
    for (m, _, params, where), name in zip(sl.sources, in_names, strict=True):
        if method.needs_base and m == sl.base and base_src is None:
            base_src = Source(m, name)
        else:
            others.append(Source(m, name))
            scopes.append((params, where))
    return base_src, others, scopes


def _check_model_count(method: Method, n: int, has_base: bool) -> None:
    if n < method.min_models or (method.max_models is not None and n > method.max_models):
        need = (f"exactly {method.max_models + 1}" if method.max_models == method.min_models
                else f"at least {method.min_models + 1}") if method.needs_base else f"at least {method.min_models}"
        raise CompressError(f"merge_method {method.name} needs {need} models"
                            f"{' including the base' if method.needs_base else ''}, got {n + (1 if has_base else 0)}")


def _output_config(ref_config: dict[str, Any], recipe: Recipe, tasks: list[TensorTask], total_layers: int,
                   layer_types: list[Any], out_dtype: torch.dtype | None) -> dict[str, Any]:
    """The base's config.json with the merge's layer count, vocabulary rows and dtype."""
    config = json.loads(json.dumps(ref_config))
    if recipe.slices is not None:
        config["num_hidden_layers"] = total_layers
        if isinstance(ref_config.get("layer_types"), list):
            config["layer_types"] = layer_types
    vocab_rows = next((t.shape[0] for t in tasks if "embed_tokens" in t.out), None)
    if vocab_rows is not None and "vocab_size" in config:
        config["vocab_size"] = vocab_rows
    if out_dtype is not None:
        config["torch_dtype" if "dtype" not in config else "dtype"] = dtype_name(out_dtype)
    return config
