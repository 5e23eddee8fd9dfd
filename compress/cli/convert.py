from __future__ import annotations

import click

from compress.cli.options import dtype_option, emit_json, force_option, json_option, output_option


@click.command("convert")
@click.argument("gguf", type=click.Path())
@output_option()
@dtype_option("bf16")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard.")
@force_option
@json_option
def command(gguf, output, dtype, max_shard_size, force, as_json):
    """Convert a GGUF model to a Hugging Face safetensors folder (with tokenizer and chat template)."""
    from compress import api, progress

    out = api.convert(gguf, output, dtype=dtype, force=force, max_shard_size=max_shard_size)
    info = api.inspect(out)
    if as_json:
        emit_json(info)
    else:
        progress.info(f"wrote {out}: {info['family']}, {info['layers']} layers, {info['parameters']:,} parameters, {dtype}")
