from __future__ import annotations

import click

from compress.cli.config import config_options, load_config
from compress.cli.options import emit_json, force_option, json_option, output_option
from compress.prune.config import PruneConfig


@click.command("prune")
@click.argument("model", type=click.Path())
@output_option()
@config_options(PruneConfig, exclude=("model", "output"))
@click.option("--resume", is_flag=True, help="Continue the search saved beside the output (OUT.prune-state.json); "
                                             "refused when the model, its weights, the calibration data or an "
                                             "option that changes the result differ.")
@force_option
@json_option
def command(model, output, resume, force, as_json, **values):
    """Remove attention / MLP blocks (BlockPruner) or whole layers from MODEL; write a smaller checkpoint.

    Calibration perplexity guides the search (greedy: each step removes the block whose removal
    hurts least). The report (prune_report.json, prune_report.png) is written beside the weights.
    Every option can also come from `--config run.yaml` (keys as the option names).
    """
    from compress.prune.run import run

    cfg = load_config(PruneConfig, values, click.get_current_context(), model=model, output=output)
    report = run(cfg, force=force, resume=resume, show_table=True)
    if as_json:
        emit_json(report)
