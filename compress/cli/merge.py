from __future__ import annotations

import click

from compress.cli.options import (
    device_option,
    dtype_option,
    emit_json,
    force_option,
    json_option,
    output_option,
    seed_option,
)


def _parse_set(values: tuple[str, ...]) -> dict:
    import yaml

    from compress.errors import CompressError

    out = {}
    for v in values:
        key, sep, raw = v.partition("=")
        if not sep or not key:
            raise CompressError(f"--set {v!r}: use KEY=VALUE, e.g. --set density=0.5")
        out[key.strip()] = yaml.safe_load(raw)
    return out


@click.command("merge")
@click.argument("inputs", nargs=-1, type=click.Path())
@output_option()
@click.option("--method", default=None, help="Shortcut without a recipe: merge method (varm, ties, linear, ...).")
@click.option("--base", default=None, help="Shortcut: the base (pivot) model.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Shortcut: a method parameter, e.g. --set density=0.5 --set weight=0.3 (repeatable).")
@device_option
@dtype_option(help="Output dtype when the recipe sets none (arithmetic is always fp32; auto: as the base stores it).")
@seed_option
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Worker threads (default: min(4, CPUs)).")
@force_option
@json_option
def command(inputs, output, method, base, settings, device, dtype, seed, max_shard_size, threads, force, as_json):
    """Merge models: `compress merge RECIPE.yml -o OUT` (mergekit YAML) or
    `compress merge --method varm --base BASE A B [C...] -o OUT`.

    Methods: linear, task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties,
    della, della_linear, slerp, model_stock, sce, varm.

    \b
    Where compress differs from mergekit or chooses between references:
    - sce: sce_mask_deltas false (default) is FuseChat-2.0's SCE (the FuseAI fork that made
      FuseChat-7B-v2.0: the variance mask only shapes the weights; uniform weights only when their
      sum is exactly 0); true is mergekit's (masked task vectors; uniform weights whenever the sum of
      mean(delta^2) is below 1e-6, which is usual for fine-tuning deltas).
    - varm granularity: matrix (per tensor, the paper's VaRM); layer (FuseChat's avg_layer: per
      decoder layer the SUM of its tensors' mean(delta^2); embeddings, final norm and lm_head get
      uniform weights); model (pooled sum of delta^2 over all parameters).
    - tie_break (ties, breadcrumbs, sce): sort (default, mergekit's bits) or index (ties at the
      threshold by position, found by histogram without a sort: faster, same on every device).
    """
    import sys

    from compress.errors import CompressError
    from compress.merge import merge

    if method is None:
        if len(inputs) != 1:
            raise CompressError("give one recipe file (compress merge recipe.yml -o OUT), or --method with models")
        if base or settings:
            raise CompressError("--base and --set belong to the --method shortcut; put them in the recipe instead")
        report = merge(inputs[0], output, device=device, dtype=dtype, seed=seed, force=force,
                       max_shard_size=max_shard_size, threads=threads, command=" ".join(sys.argv))
    else:
        report = merge(None, output, method=method, base=base, models=list(inputs), parameters=_parse_set(settings),
                       device=device, dtype=dtype, seed=seed, force=force, max_shard_size=max_shard_size,
                       threads=threads, command=" ".join(sys.argv))
    if as_json:
        emit_json(report)
