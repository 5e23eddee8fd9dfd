"""`compress fuse data`: FuseChat-3.0 / WRPO training data (attached to the `compress fuse` group)."""

from __future__ import annotations

import click

from compress.cli.config import config_options, load_config
from compress.cli.options import device_option, dtype_option, emit_json, force_option, json_option
from compress.fuse.config import DataConfig


@click.command("data")
@click.argument("prompts", type=click.Path())
@click.option("-o", "--output", type=click.Path(), required=True, help="Output folder (written atomically at the end).")
@click.option("--source", "sources", multiple=True, type=click.Path(), help="A source model (repeatable, at least one).")
@click.option("--plain", multiple=True, help="A model (folder name or path) whose prompts are rendered with "
              "--plain-format instead of a chat template (repeatable; required for models without a template).")
@click.option("--stop", multiple=True, help="A string that ends a response (repeatable).")
@config_options(DataConfig, exclude=("sources", "plain", "stop"))
@click.option("--work", type=click.Path(), default=None, help="Shard folder (default: OUTPUT.shards; kept until the end).")
@device_option
@dtype_option("auto")
@force_option
@json_option
@click.pass_context
def command(ctx, prompts, output, sources, plain, stop, work, device, dtype, force, as_json, **values):
    """Sample N responses per prompt from every source (and the target), score them, and write the SFT set,
    same-source DPO pairs and WRPO triples of FuseChat-3.0 / WRPO.

    \b
    compress fuse data prompts.jsonl -o data --source A --source B --target T --verifier gsm8k
    compress distill train T --method sft --data data/sft.jsonl -o t-sft
    """
    from compress import progress
    from compress.fuse.data import build_data

    fixed = {k: list(v) for k, v in (("sources", sources), ("plain", plain), ("stop", stop)) if v}
    cfg = load_config(DataConfig, values, ctx, **fixed)
    report = build_data(prompts, output, cfg, work=work, force=force, device=device, dtype=dtype)
    if as_json:
        emit_json(report)
        return
    lines = [f"{report['prompts']} prompts -> {output}"]
    for name in ("sft", "dpo", "wrpo"):
        if name in report:
            r = report[name]
            drops = ", ".join(f"{k} {v}" for k, v in sorted(r["dropped"].items())) or "none"
            lines.append(f"  {name}: {r['kept']} kept; dropped: {drops}")
    t = report["throughput"]
    if t["responses_per_s"]:
        lines.append(f"  sampled {t['responses']} responses in {t['seconds']:.0f} s ({t['responses_per_s']:.2f}/s)")
    progress.console.print("\n".join(lines), highlight=False)
