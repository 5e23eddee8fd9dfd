"""A command's options as one pydantic config: click options generated from it, and `--config run.yaml`.

A run is described once, by a pydantic model whose fields carry their type, default, bounds and help
(`Field(description=...)`); `config_options(Model)` turns every field into a click option, and
`load_config(Model, ctx, values)` builds the validated config from three layers, later ones winning:

    field defaults  <  the `--config` file (YAML or JSON, keys = field names)  <  options given on the command line

Types map as: `Literal[...]` -> a choice; `bool` -> `--flag/--no-flag`; `int`/`float` with `ge`/`gt`/`le`/`lt`
bounds -> a range; `X | None` -> X with no default. A field may set `json_schema_extra={"cli": "--name"}` to
choose its option name or `{"cli": False}` to stay out of the command line (config file only).
"""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
import click
import yaml
from pydantic import BaseModel, ValidationError

from compress.errors import CompressError

CONFIG_PARAM = "config_file"


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            out["min"] = m.ge
        elif isinstance(m, annotated_types.Gt):
            out.update(min=m.gt, min_open=True)
        elif isinstance(m, annotated_types.Le):
            out["max"] = m.le
        elif isinstance(m, annotated_types.Lt):
            out.update(max=m.lt, max_open=True)
    return out


def _click_type(annotation: Any, metadata: list[Any]) -> Any:
    ann = _strip_optional(annotation)
    if get_origin(ann) is Literal:
        return click.Choice([str(a) for a in get_args(ann)])
    bounds = _bounds(metadata)
    if ann is int:
        return click.IntRange(**bounds) if bounds else int
    if ann is float:
        return click.FloatRange(**bounds) if bounds else float
    if ann is Path:
        return click.Path()
    return str


def _option_type(name: str, field: Any) -> Any:
    """The click type of a field; a `device` field is checked as `--device` everywhere (cli.options)."""
    if name == "device":
        from compress.cli.options import DeviceType

        return DeviceType()
    return _click_type(field.annotation, field.metadata)


def option_name(name: str, field: Any) -> str | None:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if extra.get("cli") is False:
        return None
    return str(extra.get("cli") or "--" + name.replace("_", "-"))


def config_options(model: type[BaseModel], exclude: tuple[str, ...] = ()) -> Callable:
    """Decorator adding one click option per field of `model` (minus `exclude`), plus `--config FILE`."""

    def decorate(f: Callable) -> Callable:
        fields = [(n, fi) for n, fi in model.model_fields.items() if n not in exclude]
        for name, field in reversed(fields):
            opt = option_name(name, field)
            if opt is None:
                continue
            ann = _strip_optional(field.annotation)
            required = field.is_required()
            default = None if required else field.default
            helptext = field.description or ""
            if ann is bool:
                flag = opt[2:]
                f = click.option(f"{opt}/--no-{flag}", name, default=bool(default), show_default=True, help=helptext)(f)
                continue
            f = click.option(opt, name, type=_option_type(name, field), default=default,
                             show_default=default is not None, help=helptext + (" [required]" if required else ""))(f)
        return click.option("--config", CONFIG_PARAM, type=click.Path(dir_okay=False), default=None,
                            help="A YAML/JSON file of these options (keys as the option names, '-' or '_'); "
                                 "options given on the command line win.")(f)

    return decorate


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CompressError(f"config file not found: {p}")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise CompressError(f"cannot read config file {p}: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CompressError(f"config file {p} must be a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _explicit(ctx: click.Context | None, name: str) -> bool:
    if ctx is None:
        return True
    src = ctx.get_parameter_source(name)
    return src is not None and src not in (click.core.ParameterSource.DEFAULT,)


def load_config(model: type[BaseModel], values: dict[str, Any], ctx: click.Context | None = None, /,
                **fixed: Any) -> BaseModel:
    """Defaults < `--config` file < explicit command-line options (< `fixed`, e.g. positional arguments)."""
    merged: dict[str, Any] = {}
    file = values.get(CONFIG_PARAM)
    if file:
        merged.update(read_config_file(file))
        unknown = sorted(set(merged) - set(model.model_fields))
        if unknown:
            raise CompressError(f"config file {file}: unknown option {unknown[0]!r}")
    for name, value in values.items():
        if name == CONFIG_PARAM or name not in model.model_fields:
            continue
        if name not in merged or _explicit(ctx, name):
            merged[name] = value
    merged.update(fixed)
    for name, field in model.model_fields.items():
        if field.is_required() and merged.get(name) is None and option_name(name, field):
            raise CompressError(f"missing option {option_name(name, field)}"
                                + (f" (on the command line or in {file})" if file else ""))
    return validate(model, merged, source=str(file) if file else None)


def validate(model: type[BaseModel], data: dict[str, Any], source: str | None = None) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "config"
        opt = "--" + where.replace("_", "-") if where in model.model_fields else where
        origin = f" (in {source})" if source else ""
        raise CompressError(f"invalid {opt}{origin}: {err['msg']}") from None
