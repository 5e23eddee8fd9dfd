"""Options shared by every command: same names, same meaning, everywhere."""

from __future__ import annotations

import sys
from typing import Any

import click

from compress.model.device import DTYPE_ALIASES, DTYPE_CHOICES, canonical_dtype_name


class DtypeChoice(click.ParamType):
    """A dtype in either spelling (fp32 / float32, bf16 / bfloat16, fp16 / float16), normalised to the
    short name; `choices` restricts the accepted dtypes."""

    name = "dtype"

    def __init__(self, choices: tuple[str, ...] = DTYPE_CHOICES):
        self.choices = tuple(choices)

    def get_metavar(self, param, ctx=None) -> str:  # noqa: ARG002 - click's signature
        return "[" + "|".join(self.choices) + "]"

    def convert(self, value, param, ctx):
        key = canonical_dtype_name(value) if isinstance(value, str) else None
        if key is None or key not in self.choices:
            longs = [k for k, v in DTYPE_ALIASES.items() if v in self.choices and k not in ("half", "float")]
            self.fail(f"{value!r} is not one of {', '.join(self.choices)} (or {', '.join(longs)})", param, ctx)
        return key


def output_option(required: bool = True):
    return click.option("-o", "--output", type=click.Path(), required=required, help="Output folder (written atomically).")


class DeviceType(click.ParamType):
    """cpu, cuda, cuda:N or auto, checked when the command line is read (mps, meta, a missing GPU: refused)."""

    name = "device"

    def convert(self, value, param, ctx):
        from compress.errors import CompressError
        from compress.model.device import parse_device

        text = str(value).strip()
        try:
            parse_device(text)
        except CompressError as e:
            self.fail(str(e), param, ctx)
        return text


def device_option(f):
    return click.option("--device", type=DeviceType(), default="cpu", show_default=True,
                        help="cpu, cuda, cuda:N or auto.")(f)


def dtype_option(default: str = "auto", choices: tuple[str, ...] = DTYPE_CHOICES,
                 help: str = "Compute / storage dtype (auto: as stored on GPU, fp32 on CPU)."):
    return click.option("--dtype", type=DtypeChoice(choices), default=default, show_default=True,
                        help=help + " Long spellings (float32, bfloat16, float16) are accepted too.")


def seed_option(f):
    return click.option("--seed", type=int, default=42, show_default=True, help="Random seed (reproducible runs).")(f)


def force_option(f):
    return click.option("--force", is_flag=True, help="Overwrite an existing output folder.")(f)


def data_option(required: bool = False, help: str = "Text file: .txt, .jsonl or .json (see --field)."):
    return click.option("--data", type=click.Path(), required=required, help=help)


def field_option(f):
    return click.option("--field", default=None,
                        help="JSON field(s) holding the text, comma-separated (default: text, or chat 'messages').")(f)


def format_option(f):
    return click.option(
        "--format", "text_format", type=click.Choice(["auto", "text", "wikitext"]), default="auto", show_default=True,
        help="How --data becomes text. text: the file as written; wikitext: the WikiText-2 protocol (each line "
             "with its newline, blank lines empty, joined by a blank line - the rows of HF's wikitext datasets); "
             "auto: wikitext for wiki.*.raw / wiki.*.tokens, records for .jsonl/.json, text otherwise.")(f)


def seq_len_option(default: int = 2048):
    return click.option("--seq-len", type=click.IntRange(min=2), default=default, show_default=True,
                        help="Tokens per window.")


def samples_option(default: int | None = None):
    return click.option("--samples", type=click.IntRange(min=1), default=default, show_default=True,
                        help="Number of windows (seeded sample).")


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(f)


def emit_json(obj: Any) -> None:
    """One JSON object on stdout; NaN/Inf values are written as null and named under `non_finite`."""
    from compress.jsonsafe import dumps

    sys.stdout.write(dumps(obj) + "\n")
    sys.stdout.flush()
