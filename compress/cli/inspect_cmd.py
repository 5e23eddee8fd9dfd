from __future__ import annotations

import click

from compress.cli.options import emit_json, json_option


def _human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return str(n)


@click.command("inspect")
@click.argument("model", type=click.Path())
@json_option
def command(model, as_json):
    """Family, layers, blocks, parameters by kind, dtype, size on disk and block map of a model."""
    from rich.table import Table

    from compress import api
    from compress.progress import console

    info = api.inspect(model)
    if as_json:
        emit_json(info)
        return
    t = Table(title=str(info["path"]), show_header=False)
    t.add_row("family", f"{info['family']} ({', '.join(info['architectures']) or info['model_type']})")
    t.add_row("layers", str(info["layers"]))
    b = info["blocks"]
    t.add_row("blocks", f"{b['total']} ({b['attn']} attention, {b['mlp']} MLP)")
    t.add_row("block map", info["block_map"] + "   (B both, A attention only, M MLP only)")
    t.add_row("parameters", f"{info['parameters']:,}")
    for kind, n in sorted(info["parameters_by_kind"].items()):
        t.add_row(f"  {kind}", f"{n:,} ({100 * n / info['parameters']:.1f}%)")
    t.add_row("dtype", ", ".join(info["dtypes"]))
    t.add_row("tied embeddings", "yes" if info["tied_embeddings"] else "no")
    t.add_row("size on disk", f"{_human_size(info['size_on_disk'])} in {info['shards']} file(s), {info['format']}")
    t.add_row("chat template", "yes" if info["chat_template"] else "no")
    if info["pruned"]:
        t.add_row("pruned", "yes (compress prune)")
    console.print(t)
