from __future__ import annotations

import click

from compress.cli.options import (
    data_option,
    device_option,
    dtype_option,
    emit_json,
    field_option,
    json_option,
    seq_len_option,
)


@click.group("eval")
def command():
    """Measure models: perplexity (and lm-eval tasks)."""


@command.command("ppl")
@click.argument("model", type=click.Path())
@data_option(required=True, help="Text to score, e.g. shared/data/wikitext-2-raw/wiki.test.raw.")
@field_option
@seq_len_option(2048)
@click.option("--max-windows", type=int, default=None, help="Score only the first N windows (quick runs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@device_option
@dtype_option("auto")
@json_option
def ppl(model, data, field, seq_len, max_windows, batch_size, device, dtype, as_json):
    """Perplexity of MODEL on --data (WikiText-2 protocol: non-overlapping windows of --seq-len)."""
    from compress import api, progress

    res = api.perplexity(model, data, seq_len=seq_len, batch_size=batch_size, max_windows=max_windows,
                         field=field, device=device, dtype=dtype)
    if as_json:
        emit_json(res)
    else:
        progress.console.print(
            f"ppl {res['ppl']:.3f}  (nll {res['nll']:.4f}, {res['windows']} of {res['windows_available']} windows "
            f"x {res['seq_len']} tokens, {res['dtype']} on {res['device']})", highlight=False)
