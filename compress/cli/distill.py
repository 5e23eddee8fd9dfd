from __future__ import annotations

import click

from compress.cli.options import (
    DtypeChoice,
    device_option,
    dtype_option,
    emit_json,
    force_option,
    json_option,
    output_option,
    seed_option,
)


def _data_opts(f):
    f = click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N pairs.")(f)
    f = click.option("--long-prompt", type=click.Choice(["skip", "error", "truncate"]), default="skip",
                     show_default=True, help="A prompt longer than --max-prompt-length: skip it (counted), "
                     "stop with an error, or keep its last tokens.")(f)
    f = click.option("--max-prompt-length", type=click.IntRange(min=1), default=None,
                     help="Longest prompt in tokens (default: --max-length - 1).")(f)
    f = click.option("--max-length", type=click.IntRange(min=2), default=1024, show_default=True,
                     help="Prompt + response tokens; responses are cut to fit.")(f)
    f = click.option("--data", type=click.Path(), required=True,
                     help="Preference jsonl: prompt/chosen/rejected (strings or chat messages), or HH-RLHF dialogues.")(f)
    return f


@click.group("distill")
def command():
    """Preference distillation: sft, kd, dpo, ln-dpo, dckd, adpa, adpa+ (see `distill train`)."""


@command.command("train")
@click.argument("student", type=click.Path())
@_data_opts
@output_option()
@click.option("--method", type=click.Choice(["sft", "kd", "dpo", "ln-dpo", "dckd", "adpa", "adpa+"]), required=True)
@click.option("--teacher", type=click.Path(), default=None, help="Teacher model (DPO-aligned teacher for dckd/adpa), run online.")
@click.option("--ref-teacher", type=click.Path(), default=None, help="ADPA reference teacher (the DPO teacher's SFT start).")
@click.option("--teacher-cache", type=click.Path(), default=None, help="Cache folder from `distill cache-teacher` (no teacher in memory).")
@click.option("--ref-model", type=click.Path(), default=None, help="DPO reference (default: the initial student).")
@click.option("--k", type=click.IntRange(min=1), default=50, show_default=True, help="Teacher top-k (online teacher).")
@click.option("--kd-direction", type=click.Choice(["forward", "reverse", "jsd"]), default="forward", show_default=True)
@click.option("--jsd-beta", type=float, default=0.5, show_default=True, help="Generalised JSD mixture weight (TRL GKD beta).")
@click.option("--missing-mass", type=click.Choice(["rest", "zero", "topk_soft_ce"]), default="rest", show_default=True)
@click.option("--kd-temperature", type=float, default=1.0, show_default=True)
@click.option("--w-sft", type=float, default=1.0, show_default=True)
@click.option("--w-distill", type=float, default=1.0, show_default=True)
@click.option("--w-chosen", type=float, default=0.1, show_default=True, help="DCKD weight of the KL on chosen responses.")
@click.option("--w-rejected", type=float, default=0.1, show_default=True, help="DCKD weight of the KL on rejected responses.")
@click.option("--w-adpa", type=float, default=1.6, show_default=True)
@click.option("--advantage-clip", type=click.Choice(["none", "unit"]), default="none", show_default=True,
              help="none: signed advantage (the paper); unit: the released code's clamp.")
@click.option("--beta", type=float, default=None, help="DPO beta (default 0.1; ln-dpo 10).")
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option("--dpo-loss-type", type=click.Choice(["sigmoid", "hinge", "ipo"]), default="sigmoid", show_default=True)
@click.option("--lr", type=float, default=1e-5, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Optimizer steps (overrides --epochs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=2, show_default=True, help="Pairs per micro-batch.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--warmup-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--scheduler", type=click.Choice(["cosine", "linear", "constant_with_warmup"]), default="cosine", show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="Gradient clipping (0: off).")
@click.option("--precision", type=DtypeChoice(("fp32", "bf16")), default="fp32", show_default=True,
              help="fp32, or bf16 mixed precision (fp32 master weights); float32 / bfloat16 also accepted.")
@click.option("--eval-pairs", type=click.IntRange(min=0), default=0, show_default=True, help="Hold out the last N pairs for evaluation.")
@click.option("--eval-every", type=click.IntRange(min=0), default=0, show_default=True, help="Evaluate every N steps (and at the end).")
@click.option("--save-every", type=click.IntRange(min=0), default=0, show_default=True, help="Checkpoint every N steps.")
@click.option("--checkpoint-dir", type=click.Path(), default=None, help="Default: OUTPUT.checkpoints")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint.")
@device_option
@seed_option
@force_option
@json_option
def train_cmd(student, data, max_length, max_prompt_length, long_prompt, limit, output, method, teacher, ref_teacher,
              teacher_cache, ref_model, k, kd_direction, jsd_beta, missing_mass, kd_temperature, w_sft, w_distill,
              w_chosen, w_rejected, w_adpa, advantage_clip, beta, label_smoothing, dpo_loss_type, lr, epochs,
              max_steps, batch_size, grad_accum, warmup_ratio, scheduler, weight_decay, max_grad_norm, precision,
              eval_pairs, eval_every, save_every, checkpoint_dir, resume, device, seed, force, as_json):
    """Train STUDENT on preference pairs with one loss; save the result to -o (atomic, with provenance).

    Works under `accelerate launch` (DDP/FSDP/DeepSpeed configs; see docs/accelerate.md).
    """
    from compress import progress
    from compress.distill.train import DistillConfig, train

    cfg = DistillConfig(method=method, k=k, kd_direction=kd_direction, jsd_beta=jsd_beta, missing_mass=missing_mass,
                        kd_temperature=kd_temperature, w_sft=w_sft, w_distill=w_distill, w_chosen=w_chosen,
                        w_rejected=w_rejected, w_adpa=w_adpa, advantage_clip=advantage_clip, beta=beta,
                        label_smoothing=label_smoothing, dpo_loss_type=dpo_loss_type, lr=lr, epochs=epochs,
                        max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, warmup_ratio=warmup_ratio,
                        scheduler=scheduler, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                        precision=precision, seed=seed, max_length=max_length, max_prompt_length=max_prompt_length,
                        long_prompt=long_prompt, limit=limit, eval_pairs=eval_pairs, eval_every=eval_every,
                        save_every=save_every)
    res = train(student, data, output, cfg, teacher=teacher, ref_teacher=ref_teacher, teacher_cache=teacher_cache,
                ref_model=ref_model, checkpoint_dir=checkpoint_dir, resume=resume, force=force, device=device)
    if as_json:
        emit_json(res)
    else:
        ev = " ".join(f"{k} {v:.4f}" for k, v in res["eval"].items())
        progress.console.print(f"{method}: {res['steps']} steps, final loss {res['final_loss']:.4f} {ev} -> {output}",
                               highlight=False)


@command.command("cache-teacher")
@click.argument("teacher", type=click.Path())
@_data_opts
@output_option(required=False)
@click.option("--ref-teacher", type=click.Path(), default=None,
              help="Also store this model's log-probs at the teacher's top-k ids (ADPA reference).")
@click.option("--slots", default="chosen,rejected", show_default=True,
              help="Responses to score: chosen, rejected, generated (comma list).")
@click.option("--k", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@dtype_option("fp32", ("fp32", "bf16", "fp16"), help="Teacher compute dtype.")
@device_option
@force_option
@json_option
def cache_teacher_cmd(teacher, data, max_length, max_prompt_length, long_prompt, limit, output, ref_teacher, slots,
                      k, batch_size, dtype, device, force, as_json):
    """Write TEACHER's top-k log-probs (+ remaining mass) per response token beside the data.

    Train with the same --max-length/--max-prompt-length/--limit: the cache records a fingerprint of
    the tokenised data and refuses other data.
    """
    from compress import progress
    from compress.checkpoint.atomic import check_output
    from compress.data.preference import SLOTS, read_preference
    from compress.distill.teacher import check_same_vocab, default_cache_dir, write_cache
    from compress.errors import CompressError
    from compress.model import load_model, load_tokenizer

    want = tuple(s.strip() for s in slots.split(",") if s.strip())
    bad = [s for s in want if s not in SLOTS]
    if bad or not want:
        raise CompressError(f"unknown slot {bad[0] if bad else slots!r}: choose from {', '.join(SLOTS)}")
    out = output or str(default_cache_dir(data, teacher, k))
    inputs = (teacher, data, *([ref_teacher] if ref_teacher else []))
    check_output(out, inputs, force)  # before any work; write_cache checks again and writes atomically
    tok = load_tokenizer(teacher)
    ds = read_preference(data, tok, max_length, max_prompt_length, long_prompt, limit)
    if ds.skipped_long:
        progress.warn(f"skipped {ds.skipped_long} pairs with prompts longer than {ds.options['max_prompt_length']} tokens")
    ref = None
    if ref_teacher:
        check_same_vocab(tok, load_tokenizer(ref_teacher), "reference teacher")
        ref = load_model(ref_teacher, device, dtype)
    model = load_model(teacher, device, dtype)
    with progress.progress_bar("teacher cache", len(ds.examples) * len(want)) as adv:
        path = write_cache(out, model, tok, ds, want, k, str(teacher), ref, ref_teacher, batch_size, force,
                           inputs=inputs, advance=adv)
    res = {"cache": str(path), "pairs": len(ds.examples), "slots": list(want), "k": k,
           "skipped_long_prompts": ds.skipped_long}
    if as_json:
        emit_json(res)
    else:
        progress.console.print(f"teacher cache for {len(ds.examples)} pairs ({', '.join(want)}) -> {path}", highlight=False)


@command.command("generate")
@click.argument("student", type=click.Path())
@_data_opts
@output_option()
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy (the ADPA recipe).")
@dtype_option()
@device_option
@seed_option
@force_option
@json_option
def generate_cmd(student, data, max_length, max_prompt_length, long_prompt, limit, output, max_new_tokens, batch_size,
                 temperature, dtype, device, seed, force, as_json):
    """Add STUDENT's own response (`student_response`) to every pair of --data; write the jsonl to -o."""
    from compress import progress
    from compress.data.preference import read_preference
    from compress.distill.generate import (
        check_generated_output,
        check_temperature,
        generate_responses,
        write_generated,
    )
    from compress.model import load

    check_temperature(temperature)
    check_generated_output(output, [student, data], force)
    model, tok = load(student, device, dtype)
    ds = read_preference(data, tok, max_length, max_prompt_length, long_prompt, limit)
    with progress.progress_bar("generate", len(ds.examples)) as adv:
        resp = generate_responses(model, tok, [ex.prompt for ex in ds.examples], max_new_tokens, batch_size,
                                  temperature, seed, adv)
    path = write_generated(ds, resp, output, force, inputs=(student,))
    res = {"output": str(path), "pairs": len(resp), "skipped_long_prompts": ds.skipped_long}
    if as_json:
        emit_json(res)
    else:
        progress.console.print(f"{len(resp)} student responses -> {path}", highlight=False)


from compress.cli.distill_seft import command as _seft_command  # noqa: E402

command.add_command(_seft_command)
