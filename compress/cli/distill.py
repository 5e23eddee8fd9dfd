"""`compress distill`: train, cache-teacher, generate. Options are generated from the pydantic run
configs in `compress.distill.config` (one description: type, default, bounds, help), and a whole run
can be given as `--config run.yaml` (options on the command line win)."""

from __future__ import annotations

import os

import click

from compress.cli.config import config_options, load_config
from compress.cli.options import DtypeChoice, dtype_option, emit_json, force_option, json_option
from compress.distill.config import CacheTeacherRun, GenerateRun, TrainRun
from compress.distill.registry import METHODS


def _output(required_text: str):
    return click.option("-o", "--output", type=click.Path(), default=None, help=required_text)


@click.group("distill")
def command():
    """Preference distillation: sft, kd, dpo, ln-dpo, wrpo, dckd, adpa, adpa+ (see `distill train`)."""


@command.command("train", help=f"""Train STUDENT on preference pairs with one loss; save the result to -o (atomic,
with provenance). Methods: {', '.join(METHODS)}.

Works under `accelerate launch` (DDP/FSDP configs; see docs/accelerate.md). --save-every writes step
checkpoints (safetensors + JSON, verified before --resume reads them).""")
@click.argument("student", type=click.Path())
@config_options(TrainRun)
@_output("Output folder (written atomically). [required]")
@click.option("--precision", type=DtypeChoice(("fp32", "bf16")), default="fp32", show_default=True,
              help=TrainRun.model_fields["precision"].description)
@click.option("--resume", is_flag=True, help="Continue from the latest step checkpoint of the same run (same inputs "
              "and options; anything else is refused).")
@force_option
@json_option
def train_cmd(student, resume, force, as_json, **values):
    from compress import progress
    from compress.distill.train import train

    run: TrainRun = load_config(TrainRun, values, click.get_current_context())
    res = train(student, run.data, run.output, run.settings(), teacher=run.teacher, ref_teacher=run.ref_teacher,
                teacher_cache=run.teacher_cache, ref_model=run.ref_model, checkpoint_dir=run.checkpoint_dir,
                resume=resume, force=force, device=run.device)
    if int(os.environ.get("RANK", "0")) != 0:  # under `accelerate launch`, the first process reports
        return
    if as_json:
        emit_json(res)
    else:
        ev = " ".join(f"{k} {v:.4f}" for k, v in res["eval"].items())
        progress.console.print(f"{run.method}: {res['steps']} steps, final loss {res['final_loss']:.4f} {ev} -> "
                               f"{run.output}", highlight=False)


@command.command("cache-teacher")
@click.argument("teacher", type=click.Path())
@config_options(CacheTeacherRun)
@_output("Cache folder (default: beside the data, <data>.teacher-<teacher>-k<k>).")
@dtype_option("fp32", ("fp32", "bf16", "fp16"), help="Teacher compute dtype.")
@force_option
@json_option
def cache_teacher_cmd(teacher, force, as_json, **values):
    """Write TEACHER's top-k log-probs (+ remaining mass) per response token beside the data.

    Train with the same --max-length/--max-prompt-length/--limit: the cache records a fingerprint of
    the tokenised data and refuses other data.
    """
    from compress import progress
    from compress.distill.teacher import run_cache_teacher

    run: CacheTeacherRun = load_config(CacheTeacherRun, values, click.get_current_context())
    res = run_cache_teacher(teacher, run, force)
    if as_json:
        emit_json(res)
    else:
        progress.console.print(f"teacher cache for {res['pairs']} pairs ({', '.join(res['slots'])}) -> {res['cache']}",
                               highlight=False)


@command.command("generate")
@click.argument("student", type=click.Path())
@config_options(GenerateRun)
@_output("Output jsonl (written atomically). [required]")
@dtype_option()
@force_option
@json_option
def generate_cmd(student, force, as_json, **values):
    """Add STUDENT's own response (`student_response`) to every pair of --data; write the jsonl to -o."""
    from compress import progress
    from compress.distill.generate import run_generate

    run: GenerateRun = load_config(GenerateRun, values, click.get_current_context())
    res = run_generate(student, run, force)
    if as_json:
        emit_json(res)
    else:
        progress.console.print(f"{res['pairs']} student responses -> {res['output']}", highlight=False)


from compress.cli.distill_seft import command as _seft_command  # noqa: E402

command.add_command(_seft_command)
