"""`compress distill seft`: a reviser, then policy SFT on its revisions (attached to `compress distill`)."""

from __future__ import annotations

import click

from compress.cli.config import config_options, load_config
from compress.cli.options import device_option, dtype_option, emit_json, force_option, json_option
from compress.fuse.seft import SeftConfig


@click.command("seft")
@click.argument("policy", type=click.Path())
@click.option("--samples", type=click.Path(), required=True,
              help="Scored samples: the samples.jsonl of `compress fuse data` (reviser pairs come from it).")
@click.option("--prompts", type=click.Path(), required=True,
              help="Prompt JSONL (prompt, optional reference) the policy answers each round.")
@click.option("-o", "--output", type=click.Path(), required=True, help="Output folder: the final policy.")
@click.option("--stop", multiple=True, help="A string that ends a sample or a revision (repeatable).")
@config_options(SeftConfig, exclude=("stop",))
@click.option("--work", type=click.Path(), default=None, help="Work folder (default: OUTPUT.seft; removed at the end).")
@device_option
@dtype_option("auto", help="Generation dtype (auto: as stored on GPU, fp32 on CPU).")
@force_option
@json_option
@click.pass_context
def command(ctx, policy, samples, prompts, output, stop, work, device, dtype, force, as_json, **values):
    """SEFT: train a reviser on weak -> strong (and strong -> itself) pairs of SAMPLES, then for each round
    let POLICY answer PROMPTS, revise its answers and fine-tune it on the revisions."""
    from compress import progress
    from compress.fuse.seft import run_seft

    cfg = load_config(SeftConfig, values, ctx, **({"stop": list(stop)} if stop else {}))
    report = run_seft(policy, samples, prompts, output, cfg, force=force, device=device, dtype=dtype, work=work)
    if as_json:
        emit_json(report)
        return
    c = report["reviser_pairs"]
    lines = [f"reviser pairs: {c['revise']} revise, {c['keep']} keep"]
    for e in report["rounds"]:
        fr = "-" if e.get("fix_rate") is None else f"{e['fix_rate']:.3f}"
        kr = "-" if e.get("keep_rate") is None else f"{e['keep_rate']:.3f}"
        lines.append(f"round {e['round']}: {e['samples']} samples, unchanged {e['unchanged']:.3f}, fix rate {fr}, keep rate {kr}")
    progress.console.print("\n".join(lines + [f"-> {output}"]), highlight=False)
