from __future__ import annotations

import click

from compress.cli.fuse_data import command as data_command
from compress.cli.options import (
    device_option,
    dtype_option,
    emit_json,
    force_option,
    json_option,
    seed_option,
)


@click.group("fuse", context_settings={"help_option_names": ["-h", "--help"]})
def command():
    """Knowledge fusion of models with different tokenizers.

    \b
    compress fuse generate --method cool-fusion M1 M2 --data prompts.jsonl -o answers.jsonl
    compress fuse represent MODEL --data D -o REP
    compress fuse align PIVOT_REP SOURCE_REP -o ALIGNED
    compress fuse train PIVOT --data D --pivot-rep REP --source ALIGNED -o TARGET
    compress fuse run RECIPE.yml -o OUT
    compress fuse data prompts.jsonl -o data --source A --source B --target T --verifier gsm8k
    """


@command.command("generate")
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--method", type=click.Choice(["cool-fusion", "greedy"]), default="cool-fusion", show_default=True,
              help="cool-fusion: fuse the models segment by segment; greedy: one model alone, same decoder.")
@click.option("--prompt", default=None, help="One prompt (plain text).")
@click.option("--data", type=click.Path(), default=None,
              help="Prompt file: .jsonl/.json records with prompt or messages (chat), or .txt (one per line).")
@click.option("--field", default=None, help="Field(s) of a --data record holding the prompt (comma-separated).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Answers (JSONL, one per prompt, written as produced; a rerun resumes). Required with --data.")
@click.option("--segment", type=click.Choice(["aligned", "shortest"]), default="aligned", show_default=True,
              help="aligned: segments end at a word boundary that every tokenizer has; shortest: the proposer's own.")
@click.option("--rerank", is_flag=True, help='"+R": rerank the single-model answers and the fused one by mean PPL.')
@click.option("--max-new-tokens", type=int, default=256, show_default=True,
              help="Answer budget in each model's own tokens (decoding stops when one model reaches it).")
@click.option("--max-segment-tokens", type=int, default=32, show_default=True,
              help="A segment without a word boundary ends after this many tokens.")
@click.option("--k-words", type=click.IntRange(min=1), default=4, show_default=True,
              help="Words of context re-encoded with the new segment by the models that did not write it.")
@click.option("--stop", multiple=True, help="A string that ends an answer (cut off). Repeatable.")
@click.option("--chat", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Plain-text prompts: auto = each model's chat template where it has one; off = plain text for all.")
@click.option("--names", default=None, help="Comma list of labels for the models (default: folder names).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Answer only the first N prompts.")
@click.option("--trace", is_flag=True, help="Record per answer which model won each segment, candidates and scores.")
@device_option
@dtype_option("auto")
@seed_option
@force_option
@json_option
def generate(models, method, prompt, data, field, output, segment, rerank, max_new_tokens, max_segment_tokens, k_words,
             stop, chat, names, limit, trace, device, dtype, seed, force, as_json):
    """Answer prompts with Cool-Fusion of MODELS (any tokenizers), or one model greedily."""
    from compress import progress
    from compress.fuse.generate import generate_answers

    records = generate_answers(
        list(models), method=method, prompt=prompt, data=data, field=field, output=output, segment=segment,
        rerank=rerank, max_new_tokens=max_new_tokens, max_segment_tokens=max_segment_tokens, k_words=k_words,
        stop=list(stop), chat={"auto": "auto", "on": True, "off": False}[chat],
        names=[n.strip() for n in names.split(",")] if names else None, limit=limit, trace=trace, device=device,
        dtype=dtype, seed=seed, force=force)
    if as_json:
        emit_json({"answers": records, "output": output})
    elif output is None:
        for rec in records:
            click.echo(rec["answer"])
    else:
        progress.info(f"wrote {len(records)} answers to {output}")


def _register_explicit() -> None:
    from compress.cli.fuse_explicit import register

    register(command)


_register_explicit()


command.add_command(data_command)
