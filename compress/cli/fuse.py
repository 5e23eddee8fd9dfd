"""`compress fuse`: knowledge fusion of models."""

from __future__ import annotations

import click

from compress.cli.fuse_data import command as data_command


@click.group("fuse", context_settings={"help_option_names": ["-h", "--help"]})
def command():
    """Knowledge fusion of models.

    \b
    compress fuse data prompts.jsonl -o data --source A --source B --target T --verifier gsm8k
    """


command.add_command(data_command)
