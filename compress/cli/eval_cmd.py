from __future__ import annotations

import click

from compress.cli.options import (
    data_option,
    device_option,
    dtype_option,
    emit_json,
    field_option,
    force_option,
    format_option,
    json_option,
    seq_len_option,
)


class DefaultGroup(click.Group):
    """A group whose default subcommand is `run`: `compress eval MODEL ...` = `compress eval run MODEL ...`."""

    default = "run"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default, *args]
        return super().parse_args(ctx, args)


@click.group("eval", cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
def command():
    """Measure models: lm-eval tasks on local data, perplexity, comparison tables.

    \b
    compress eval MODEL [MODEL...] --tasks piqa,winogrande,arc_easy,arc_challenge,boolq,openbookqa
    compress eval ppl MODEL --data wiki.test.raw
    compress eval M1 M2 --ensemble M1,M2 --fusion cool-fusion+r --tasks gsm8k
    compress eval MODEL PRUNED --tasks socialbench_ep --task-data socialbench=SocialBench/data
    compress eval persona MODEL PRUNED --judge JUDGE -o OUT
    """


@command.command("ppl")
@click.argument("model", type=click.Path())
@data_option(required=True, help="Text to score, e.g. shared/data/wikitext-2-raw/wiki.test.raw.")
@field_option
@format_option
@seq_len_option(2048)
@click.option("--max-windows", type=int, default=None, help="Score only the first N windows (quick runs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@device_option
@dtype_option("auto")
@json_option
def ppl(model, data, field, text_format, seq_len, max_windows, batch_size, device, dtype, as_json):
    """Perplexity of MODEL on --data (WikiText-2 protocol: non-overlapping windows of --seq-len)."""
    from compress import api, progress

    res = api.perplexity(model, data, seq_len=seq_len, batch_size=batch_size, max_windows=max_windows,
                         field=field, text_format=text_format, device=device, dtype=dtype)
    if as_json:
        emit_json(res)
    else:
        progress.console.print(
            f"ppl {res['ppl']:.3f}  (nll {res['nll']:.4f}, {res['windows']} of {res['windows_available']} windows "
            f"x {res['seq_len']} tokens, {res['dtype']} on {res['device']}; text: {res['text_format']})",
            highlight=False)


@command.command("run")
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--tasks", default="piqa,winogrande,arc_easy,arc_challenge,boolq,openbookqa", show_default=True,
              help="Comma list of: piqa, winogrande, arc_easy, arc_challenge, boolq, openbookqa, hellaswag, gsm8k, ppl, "
                   "socialbench_COLUMN_LANG and its groups (socialbench, socialbench_en, socialbench_ep, ...).")
@click.option("--data-dir", multiple=True, type=click.Path(),
              help="Folder(s) holding the task data (layout of shared/data). Default: $COMPRESS_DATA, shared/data.")
@click.option("--task-data", multiple=True, metavar="TASK=PATH",
              help="A task's data file (or folder), e.g. hellaswag=hellaswag_val.jsonl. Repeatable.")
@click.option("--limit", type=int, default=None, help="Score only the first N documents of each task (quick runs).")
@click.option("--num-fewshot", type=int, default=None, help="Few-shot examples (default: the task's, 0; gsm8k 5).")
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--max-gen-toks", type=int, default=None, help="Generation tasks (gsm8k): most new tokens (lm-eval: 256).")
@click.option("--chat-template", is_flag=True, help="Wrap prompts in the model's chat template (off, as in the papers). "
              "SocialBench always uses a model's chat template when it has one.")
@click.option("--socialbench-mode", type=click.Choice(["generative", "loglik"]), default="generative", show_default=True,
              help="SocialBench: generative (the paper's: the model writes its answer) or loglik (option letters "
                   "scored by log-likelihood; memory columns stay generative).")
@click.option("--prompt-source", type=click.Choice(["template", "instruction"]), default="template", show_default=True,
              help="SocialBench prompts: the official dataset.py templates, or each item's own instruction text.")
@click.option("--log-samples", is_flag=True, help="Also write every item's record (with its prompt) as JSONL under -o OUT/samples/.")
@data_option(help="Text for the ppl task (default: wikitext-2-raw/wiki.test.raw in the data folder).")
@format_option
@seq_len_option(2048)
@click.option("--max-windows", type=int, default=None, help="ppl: score only the first N windows.")
@click.option("--names", default=None, help="Comma list of labels for the models in the table (default: folder names).")
@click.option("--ensemble", multiple=True, metavar="M1,M2[,M3]",
              help="Models fused at decoding time, one row of the table (generation tasks only). Repeatable.")
@click.option("--fusion", type=click.Choice(["cool-fusion", "cool-fusion+r"]), default="cool-fusion", show_default=True,
              help="How an --ensemble decodes: Cool-Fusion, or Cool-Fusion with the +R rerank.")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Folder for eval.json, results.md and results.png (written atomically).")
@force_option
@click.option("--seed", type=int, default=1234, show_default=True, help="Seed of the few-shot sampling (lm-eval's default).")
@device_option
@dtype_option("auto")
@json_option
def run(models, tasks, data_dir, task_data, limit, num_fewshot, batch_size, max_gen_toks, chat_template, socialbench_mode,
        prompt_source, log_samples, data, text_format, seq_len, max_windows, names, ensemble, fusion, output, force, seed,
        device, dtype, as_json):
    """Score MODEL(s) on lm-eval tasks (local data) and perplexity; one comparison table."""
    from compress import progress
    from compress.eval.run import evaluate, summary

    res = evaluate(list(models), tasks, data_dir=list(data_dir) or None, task_data=list(task_data), limit=limit,
                   num_fewshot=num_fewshot, batch_size=batch_size, device=device, dtype=dtype, seed=seed,
                   chat_template=chat_template, max_gen_toks=max_gen_toks, data=data, text_format=text_format, seq_len=seq_len,
                   max_windows=max_windows,
                   names=[n.strip() for n in names.split(",")] if names else None, output=output, force=force,
                   ensembles=list(ensemble) or None, fusion=fusion, socialbench_mode=socialbench_mode,
                   prompt_source=prompt_source, log_samples=log_samples)
    if as_json:
        emit_json(summary(res))
    progress.console.print(res["markdown"], highlight=False, markup=False, soft_wrap=True)
    if output:
        progress.console.print(f"wrote {res['output']}/eval.json, results.md, results.png", highlight=False)


@command.command("persona")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--judge", required=True, help="The judge: a local model folder (PATH or local:PATH) with a chat template.")
@click.option("--cards", type=click.Path(), default=None, help="Role-card file (default: the shipped, hashed 30-card set).")
@click.option("--topics", type=click.Path(), default=None, help="Topic JSONL, one {\"topic\": ...} per line (default: the shipped 12).")
@click.option("--dialogues", type=int, default=15, show_default=True, help="Dialogues per model (15 = every card once).")
@click.option("--turns", type=int, default=8, show_default=True, help="Turns per dialogue (the agents alternate).")
@click.option("--max-new-tokens", type=int, default=60, show_default=True, help="Most new tokens per turn.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy; else sampling with --seed.")
@click.option("--judge-mode", type=click.Choice(["loglik", "generative"]), default="loglik", show_default=True,
              help="loglik: the most likely option letter; generative: the judge writes, its text is read.")
@click.option("--judge-template", type=click.Choice(["chat", "plain"]), default="chat", show_default=True,
              help="chat: the judge's chat template (refused if it has none); plain: plain text ending in 'Answer:'.")
@click.option("--validity-dialogues", type=int, default=None,
              help="Dialogues the judge plays itself to measure its validity (default: --dialogues).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Dialogues generated together.")
@click.option("--names", default=None, help="Comma list of labels for the models (default: folder names).")
@click.option("-o", "--output", type=click.Path(), required=True,
              help="Folder for persona.json, results.md, dialogues.jsonl, psyplay.jsonl, validity.jsonl.")
@force_option
@click.option("--resume", is_flag=True, help="Continue the run saved beside the output (OUT.persona-state.jsonl).")
@click.option("--seed", type=int, default=42, show_default=True, help="Schedule of cards and topics, and sampling.")
@device_option
@dtype_option("auto")
@json_option
def persona(models, judge, cards, topics, dialogues, turns, max_new_tokens, temperature, judge_mode, judge_template,
            validity_dialogues, batch_size, names, output, force, resume, seed, device, dtype, as_json):
    """PsyPlay-style persona fidelity: MODEL(s) play two Big Five personas, a judge names the traits."""
    from compress import progress
    from compress.eval.persona.run import persona_eval

    res = persona_eval(list(models), judge, cards=cards, topics=topics, dialogues=dialogues, turns=turns,
                       max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, judge_mode=judge_mode,
                       judge_template=judge_template, validity_dialogues=validity_dialogues, batch_size=batch_size,
                       names=[n.strip() for n in names.split(",")] if names else None, output=output, force=force,
                       resume=resume, device=device, dtype=dtype)
    if as_json:
        emit_json({k: v for k, v in res.items() if k != "models"}
                  | {"models": [{k: v for k, v in m.items() if k != "results"} for m in res["models"]]})
    progress.console.print(res["markdown"], highlight=False, markup=False, soft_wrap=True)
    progress.console.print(f"wrote {res['output']}/persona.json, results.md, dialogues.jsonl, psyplay.jsonl, "
                           "validity.jsonl", highlight=False)
