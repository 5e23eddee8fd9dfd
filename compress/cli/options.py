"""Options shared by every command: same names, same meaning, everywhere."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from compress.model.device import DTYPE_CHOICES


def output_option(required: bool = True):
    return click.option("-o", "--output", type=click.Path(), required=required, help="Output folder (written atomically).")


def device_option(f):
    return click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")(f)


def dtype_option(default: str = "auto"):
    return click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default=default, show_default=True,
                        help="Compute / storage dtype (auto: as stored on GPU, fp32 on CPU).")


def seed_option(f):
    return click.option("--seed", type=int, default=42, show_default=True, help="Random seed (reproducible runs).")(f)


def force_option(f):
    return click.option("--force", is_flag=True, help="Overwrite an existing output folder.")(f)


def data_option(required: bool = False, help: str = "Text file: .txt, .jsonl or .json (see --field)."):
    return click.option("--data", type=click.Path(), required=required, help=help)


def field_option(f):
    return click.option("--field", default=None,
                        help="JSON field(s) holding the text, comma-separated (default: text, or chat 'messages').")(f)


def seq_len_option(default: int = 2048):
    return click.option("--seq-len", type=click.IntRange(min=2), default=default, show_default=True,
                        help="Tokens per window.")


def samples_option(default: int | None = None):
    return click.option("--samples", type=click.IntRange(min=1), default=default, show_default=True,
                        help="Number of windows (seeded sample).")


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(f)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=str) + "\n")
    sys.stdout.flush()
