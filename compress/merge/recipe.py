"""mergekit-compatible YAML recipes: pydantic models, loading with line numbers, parameter resolution.

The schema follows mergekit's `MergeConfiguration` (`models` | `slices`, `base_model`,
`merge_method`, `parameters`, `dtype`, `out_dtype`, `tokenizer_source` or `tokenizer`, `chat_template`), so an
existing mergekit recipe runs unchanged. Parameter values are scalars, gradients (numeric lists
interpolated at t = layer/(n_layers−1) over a slice; non-numeric lists step) or filter lists
(`[{filter: self_attn, value: ...}, {value: default}]`, first substring match wins).
Unknown keys are errors; every error names the field and its line in the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from compress.errors import CompressError

Scalar = Union[bool, int, float, str]
ScalarOrGradient = Union[Scalar, list[Scalar]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Conditional(_Strict):
    value: ScalarOrGradient
    filter: str | None = None


Setting = Union[Conditional, list[Conditional], ScalarOrGradient]


class InputModel(_Strict):
    model: str
    parameters: dict[str, Setting] | None = None


class InputSlice(_Strict):
    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Setting] | None = None


class OutputSlice(_Strict):
    sources: list[InputSlice]
    base_model: str | None = None
    parameters: dict[str, Setting] | None = None

    @model_validator(mode="after")
    def _lengths(self) -> OutputSlice:
        if not self.sources:
            raise ValueError("a slice needs at least one source")
        lengths = {s.layer_range[1] - s.layer_range[0] for s in self.sources}
        if len(lengths) != 1:
            raise ValueError("all sources of a slice must have the same number of layers")
        if min(lengths) <= 0 or min(s.layer_range[0] for s in self.sources) < 0:
            raise ValueError("layer_range must be [start, end) with 0 <= start < end")
        return self


class TokenizerConfig(_Strict):
    """mergekit's `tokenizer:` object (`tokens` overrides are not supported and rejected at plan time)."""

    source: str = "union"
    tokens: dict[str, Any] | None = None
    pad_to_multiple_of: int | None = None


class Recipe(_Strict):
    merge_method: str
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    base_model: str | None = None
    parameters: dict[str, Setting] | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerConfig | None = None
    chat_template: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Recipe:
        if (self.models is None) == (self.slices is None):
            raise ValueError("exactly one of 'models' or 'slices' must be given")
        if self.tokenizer is not None and self.tokenizer_source is not None:
            raise ValueError("give either tokenizer_source or tokenizer (an object), not both")
        if self.tokenizer is not None and self.tokenizer.pad_to_multiple_of is not None \
                and self.tokenizer.pad_to_multiple_of < 1:
            raise ValueError("tokenizer.pad_to_multiple_of must be >= 1")
        if self.models is not None and not self.models:
            raise ValueError("'models' is empty")
        return self


# ---- loading with line numbers ------------------------------------------------------------
# A recipe is a few hundred nodes; these bounds refuse "billion laughs" alias bombs (nested aliases
# expand exponentially), recursive aliases and absurd nesting before they cost memory or time.
MAX_RECIPE_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64


def _compose(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML and record the line (1-based) of every mapping key / sequence item by path.

    Aliases are expanded here, node by node, within MAX_NODES nodes and MAX_DEPTH levels.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise CompressError(f"{source}: the recipe is larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a "
                            f"small YAML file")
    try:
        _check_nesting(text, source)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CompressError(f"{source}{where}: malformed YAML: {problem}") from None
    except RecursionError:
        raise CompressError(f"{source}: the YAML is nested too deeply (or an alias refers to itself)") from None
    if node is None:
        raise CompressError(f"{source}: the recipe is empty")
    lines: dict[tuple, int] = {}
    count = 0
    loader = yaml.SafeLoader("")  # one constructor for every scalar

    def walk(n: yaml.Node, path: tuple) -> Any:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise CompressError(f"{source} line {n.start_mark.line + 1}: the recipe expands to more than {MAX_NODES} "
                                f"YAML nodes (nested aliases?): refusing it")
        if len(path) > MAX_DEPTH:
            raise CompressError(f"{source} line {n.start_mark.line + 1}: the recipe is nested more than {MAX_DEPTH} "
                                f"levels deep (an alias that refers to itself?)")
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            out = {}
            for k, v in n.value:
                if not isinstance(k, yaml.ScalarNode):
                    raise CompressError(f"{source} line {k.start_mark.line + 1}: a mapping key must be a plain value")
                key = _scalar(k, source, loader)
                lines[path + (key,)] = k.start_mark.line + 1
                out[key] = walk(v, path + (key,))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(v, path + (i,)) for i, v in enumerate(n.value)]
        return _scalar(n, source, loader)

    try:
        return walk(node, ()), lines
    finally:
        loader.dispose()


_OPEN = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken, yaml.BlockSequenceStartToken,
         yaml.BlockMappingStartToken)
_CLOSE = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)


def _check_nesting(text: str, source: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH from the token stream (PyYAML's composer recurses per level)."""
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                raise CompressError(f"{source} line {token.start_mark.line + 1}: the YAML is nested more than "
                                    f"{MAX_DEPTH} levels deep")
        elif isinstance(token, _CLOSE):
            depth -= 1


def _scalar(n: yaml.Node, source: str, loader: yaml.SafeLoader | None = None) -> Any:
    own = loader is None
    loader = loader or yaml.SafeLoader("")
    try:
        return loader.construct_object(n, deep=True)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CompressError(f"{source} line {n.start_mark.line + 1}: {problem}") from None
    finally:
        if own:
            loader.dispose()


def _where(lines: dict[tuple, int], loc: tuple) -> int | None:
    for i in range(len(loc), -1, -1):
        if loc[:i] in lines:
            return lines[loc[:i]]
    return None


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_recipe(text: str, source: str = "recipe") -> tuple[Recipe, dict[tuple, int]]:
    """YAML text -> validated Recipe plus the line of each field (for later error messages)."""
    data, lines = _compose(text, source)
    if not isinstance(data, dict):
        raise CompressError(f"{source} line 1: a recipe is a mapping with merge_method and models or slices")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        err = _best_error(e.errors())
        loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
        line = _where(lines, loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (see mergekit's recipe schema)"
        elif err["type"] == "missing":
            msg = "field required"
        at = f" line {line}" if line is not None else ""
        raise CompressError(f"{source}{at}: {_dotted(loc)}: {msg}") from None
    return recipe, lines


def _is_union_tag(p: Any) -> bool:
    return isinstance(p, str) and (p.startswith(("list[", "dict[", "tuple[")) or p in
                                   ("bool", "int", "float", "str", "Conditional"))


def _best_error(errors: list[dict]) -> dict:
    # Prefer errors not produced by trying every branch of a union (the deepest, non-union one).
    plain = [e for e in errors if not any(_is_union_tag(p) for p in e["loc"])]
    return (plain or sorted(errors, key=lambda e: -len(e["loc"])))[0]


def load_recipe(path: str | os.PathLike[str]) -> tuple[Recipe, dict[tuple, int], str]:
    p = Path(path)
    if not p.is_file():
        raise CompressError(f"recipe not found: {p}")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CompressError(f"cannot read recipe {p}: {e}") from None
    recipe, lines = parse_recipe(text, str(p))
    return recipe, lines, text


# ---- parameter values -----------------------------------------------------------------------
def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """Resolve a filter list / gradient / scalar for one tensor at relative depth t ∈ [0, 1]."""
    if isinstance(setting, Conditional):
        setting = [setting]
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(c, Conditional) for c in setting):
            for c in setting:
                if c.filter is None or c.filter == "*" or c.filter in tensor_name:
                    return evaluate_setting(c.value, tensor_name, t)
            return None
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        return setting[int(t * (len(setting) - 1))]
    return setting


def setting_leaves(setting: Any) -> list[Any]:
    """Every scalar a setting can produce (gradients interpolate between them; checks are intervals)."""
    if isinstance(setting, Conditional):
        return setting_leaves(setting.value)
    if isinstance(setting, list):
        out: list[Any] = []
        for s in setting:
            out.extend(setting_leaves(s))
        return out
    return [setting]
