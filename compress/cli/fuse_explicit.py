"""`compress fuse represent | align | train | run`: explicit knowledge fusion (FuseLLM / FuseChat) and recipes.

Attached to the `compress fuse` group by `register(group)`.
"""

from __future__ import annotations

import click

from compress.cli.options import (
    device_option,
    dtype_option,
    emit_json,
    force_option,
    json_option,
    output_option,
)

LOOP_OPTIONS = (
    ("--lr", float, 5e-6, "Peak learning rate (AdamW; FuseChat: 5e-6)."),
    ("--epochs", click.IntRange(min=1), 1, "Passes over the records."),
    ("--max-steps", click.IntRange(min=1), None, "Optimizer steps (overrides --epochs)."),
    ("--batch-size", click.IntRange(min=1), 2, "Records per micro-batch (per process)."),
    ("--grad-accum", click.IntRange(min=1), 1, "Micro-batches per optimizer step."),
    ("--warmup-ratio", click.FloatRange(0, 1), 0.03, "Fraction of the steps with a linear warm-up (FuseChat: 0.03)."),
    ("--scheduler", click.Choice(["cosine", "linear", "constant_with_warmup"]), "cosine", "Learning-rate schedule."),
    ("--weight-decay", click.FloatRange(min=0), 0.0, "AdamW weight decay."),
    ("--max-grad-norm", click.FloatRange(min=0), 1.0, "Gradient clipping norm (0: off)."),
    ("--precision", click.Choice(["fp32", "bf16"]), "fp32", "fp32, or bf16 mixed precision."),
    ("--seed", int, 42, "Random seed (data order)."),
    ("--eval-pairs", click.IntRange(min=0), 0, "Hold out the last N records for evaluation."),
    ("--eval-every", click.IntRange(min=0), 0, "Evaluate every N steps."),
    ("--save-every", click.IntRange(min=0), 0, "Write a step checkpoint every N steps (for --resume)."),
    ("--keep-checkpoints", click.IntRange(min=0), 2, "Step checkpoints kept."),
)


def _loop_opts(f):
    for name, typ, default, help_ in reversed(LOOP_OPTIONS):
        f = click.option(name, type=typ, default=default, show_default=default is not None, help=help_)(f)
    f = click.option("--resume", is_flag=True, help="Continue from the last step checkpoint.")(f)
    f = click.option("--checkpoint-dir", type=click.Path(), default=None,
                     help="Folder of step checkpoints (default: OUTPUT.checkpoints).")(f)
    return f


def represent_cmd():
    @click.command("represent")
    @click.argument("model", type=click.Path())
    @click.option("--data", type=click.Path(), required=True,
                  help="Records: .jsonl (text, messages, prompt/response, question/answer, instruction/output) or a "
                  "text file (one record per non-blank line).")
    @output_option()
    @click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="Top-k kept per token.")
    @click.option("--max-length", type=click.IntRange(min=2), default=1024, show_default=True,
                  help="Prompt + response tokens; responses are cut to fit.")
    @click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
    @click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N records.")
    @click.option("--shard-records", type=click.IntRange(min=1), default=64, show_default=True,
                  help="Records per shard: the unit of resuming and of the split between processes.")
    @device_option
    @dtype_option("auto")
    @force_option
    @json_option
    def represent(model, data, output, k, max_length, batch_size, limit, shard_records, device, dtype, force, as_json):
        """Teacher-forced top-k log-probs of MODEL on every record (resumable; data-parallel under accelerate)."""
        from compress import progress
        from compress.fuse.represent import RepSettings
        from compress.fuse.represent import represent as run

        res = run(model, data, output, RepSettings(k, max_length, batch_size, limit, shard_records), device=device,
                  dtype=dtype,
                  force=force)
        if as_json:
            emit_json(res)
        elif "records" in res:
            progress.info(f"wrote {res['records']} records ({res['tokens']} tokens, top-{k}) to {output}; "
                          f"mean CE {res['ce_token_mean']:.4f}/token {res['ce_byte_mean']:.4f}/byte")

    return represent


def align_cmd():
    @click.command("align")
    @click.argument("pivot_rep", type=click.Path())
    @click.argument("source_rep", type=click.Path())
    @output_option()
    @click.option("--vocab-map", type=click.Choice(["exact", "mined", "ms"]), default="mined", show_default=True,
                  help="exact: same token bytes; mined: else the minimum edit distance; ms: else the co-aligned token at "
                  "the minimum edit distance, frequent pairs first (FuseChat-2.0).")
    @force_option
    @json_option
    def align(pivot_rep, source_rep, output, vocab_map, force, as_json):
        """Map SOURCE_REP's top-k onto the pivot's tokens (byte offsets, DTW where texts differ) and report coverage."""
        from compress import progress
        from compress.fuse.aligned import align as run

        res = run(pivot_rep, source_rep, output, vocab_map, force)
        if as_json:
            emit_json(res)
        else:
            cov = res["coverage"]
            progress.info(f"{res['pivot_tokens']} pivot tokens: one-to-one {cov['one_to_one']:.1%}, one-to-many "
                          f"{cov['one_to_many']:.1%}, many-to-one {cov['many_to_one']:.1%}, many-to-many "
                          f"{cov['many_to_many']:.1%}, unaligned {cov['unaligned']:.1%}; with a source distribution "
                          f"{res['with_source_distribution']:.1%}; top-k mass exact {res['topk_mass']['exact']:.1%}, "
                          f"edit {res['topk_mass']['edit']:.1%}, lost {res['topk_mass']['lost']:.1%}")

    return align


def train_cmd():
    @click.command("train")
    @click.argument("pivot", type=click.Path())
    @click.option("--data", type=click.Path(), required=True, help="The records the representations were made from.")
    @click.option("--pivot-rep", type=click.Path(), required=True, help="The pivot's representation.")
    @click.option("--source", "sources", type=click.Path(), multiple=True, help="An aligned source (repeatable).")
    @output_option()
    @click.option("--fusion", type=click.Choice(["min-ce", "avg-ce"]), default="min-ce", show_default=True)
    @click.option("--lam", type=click.FloatRange(0, 1), default=0.9, show_default=True,
                  help="λ: weight of the CE on the gold text; 1 − λ weighs the fusion term.")
    @click.option("--ce-unit", type=click.Choice(["token", "byte"]), default=None,
                  help="CE that MinCE/AvgCE compare (default: byte when a source has another vocabulary, else token).")
    @click.option("--fusion-loss", type=click.Choice(["ce", "kl"]), default="ce", show_default=True,
                  help="ce: soft CE on the renormalised targets (FuseLLM); kl: KL with the rest bucket.")
    @click.option("--no-pivot-candidate", is_flag=True, help="Fuse the sources only (not the pivot's own distribution).")
    @click.option("--select", type=click.Choice(["mince", "progressive"]), default="mince", show_default=True,
                  help="mince: the lowest-CE model per record (training mode); progressive: ProFuser, the model whose "
                  "own greedy answer scores best first (inference mode), then training mode.")
    @click.option("--scorer", default=None, help="ProFuser's judge: gsm8k, choice, rm:FOLDER or implicit:DPO_MODEL,REFERENCE.")
    @click.option("--infer-fraction", type=click.FloatRange(0, 1), default=0.3, show_default=True,
                  help="ProFuser: share of the steps in inference mode (stage 1).")
    @click.option("--gen-tokens", type=click.IntRange(min=1), default=256, show_default=True,
                  help="ProFuser: longest greedy answer of each model.")
    @_loop_opts
    @device_option
    @force_option
    @json_option
    def train(pivot, data, pivot_rep, sources, output, fusion, lam, ce_unit, fusion_loss, no_pivot_candidate,
              select, scorer, infer_fraction, gen_tokens, resume, checkpoint_dir, device, force, as_json, **loop):
        """Train PIVOT with λ·CE + (1−λ)·fusion loss over the fused sparse targets (the distill loop)."""
        from compress import progress
        from compress.fuse.train import fuse_train

        res = fuse_train(pivot, data, output, pivot_rep=pivot_rep, sources=list(sources), fusion=fusion, lam=lam,
                         ce_unit=ce_unit, loss=fusion_loss, with_pivot=not no_pivot_candidate, select=select,
                         scorer=scorer, infer_fraction=infer_fraction, gen_tokens=gen_tokens, force=force,
                         device=device, resume=resume, checkpoint_dir=checkpoint_dir, **loop)
        if as_json:
            emit_json(res)
        else:
            progress.info(f"wrote {output}: {res['steps']} steps, final loss {res['final_loss']}; MinCE choices "
                          f"{res['chosen_by_mince']}")
            if "profuser" in res:
                pr = res["profuser"]
                progress.info(f"ProFuser: the two modes chose different models for {pr['disagree']} of {pr['records']} "
                              f"records ({pr['disagree_share']:.1%}); switch at step {pr['switch_step']}")

    return train


def run_cmd():
    @click.command("run")
    @click.argument("recipe", type=click.Path())
    @output_option()
    @click.option("--dry-run", is_flag=True, help="Print the stages' commands and exit.")
    @force_option
    @json_option
    def run(recipe, output, dry_run, force, as_json):
        """Run a recipe of stages (any compress command), resumable stage by stage, with provenance in OUTPUT."""
        from compress import progress
        from compress.fuse.pipeline import run_recipe

        res = run_recipe(recipe, output, force=force, dry_run=dry_run)
        if as_json:
            emit_json(res)
        else:
            for st in res["stages"]:
                progress.info(f"{st['name']}: {st['status']}  {st.get('output') or ''}")

    return run


def register(group: click.Group) -> None:
    """Attach represent, align, train and run to the `compress fuse` group."""
    for make in (represent_cmd, align_cmd, train_cmd, run_cmd):
        group.add_command(make())
