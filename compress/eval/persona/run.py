"""`compress eval persona MODEL [MODEL...] --judge JUDGE -o OUT`: PsyPlay-style persona fidelity.

1. Every model plays the same scheduled dialogues (cards x topics, `schedule`), both agents, N turns.
2. The judge first plays the first `validity_dialogues` of them itself and judges those: its accuracy
   on dialogues written to known cards is its validity; below 90 % the report says the judge, not
   the model, is the bottleneck.
3. The judge answers, per speaker, on the whole dialogue and on its first half; rates per model
   (`metrics.rates`), the passing dialogues as a PsyPlay-Bench-style corpus, and the comparison table
   of `compress eval` with paired bootstrap intervals of each model's difference to the first.
Outputs in OUT: persona.json, results.md, dialogues.jsonl (every dialogue with its verdicts),
psyplay.jsonl (the passing ones), validity.jsonl (the judge's own).
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
from pathlib import Path
from typing import Any

from compress.checkpoint.atomic import atomic_dir, check_output
from compress.checkpoint.provenance import file_sha256
from compress.checkpoint.reader import Checkpoint
from compress.errors import CompressError
from compress.eval.persona import metrics
from compress.eval.persona.cards import load_cards
from compress.eval.persona.dialogue import play, schedule, trait_leaks
from compress.eval.persona.judge import LETTERS, OPTIONS, ask, check_judge_template, question
from compress.eval.persona.state import State, key, state_path
from compress.progress import info, progress_bar

TOPICS_FILE = Path(__file__).resolve().parent / "topics.jsonl"
VALIDITY_THRESHOLD = 0.90
CONSTANT_JUDGE = 0.75  # a judge giving one answer to at least this share of its validity questions is flagged
JUDGE_MODES = ("loglik", "generative")
JUDGE_TEMPLATES = ("chat", "plain")


def read_topics(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    p = Path(path) if path is not None else TOPICS_FILE
    if not p.is_file():
        raise CompressError(f"topic file {p} does not exist")
    topics = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CompressError(f"{p}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("topic"), str) or not rec["topic"].strip():
            raise CompressError(f"{p}:{n}: a topic line is {{\"topic\": \"...\"}}")
        topics.append({"id": str(rec.get("id", f"t{len(topics) + 1:02d}")), "topic": rec["topic"].strip()})
    if not topics:
        raise CompressError(f"topic file {p} holds no topics")
    return {"path": str(p.resolve()), "sha256": file_sha256(p), "topics": topics}


def judge_location(spec: str) -> str:
    """`local:PATH` or `PATH` -> PATH; API judges are not available in this offline build."""
    if spec.startswith("openai:"):
        raise CompressError("--judge openai:MODEL needs network access, which this build does not use: "
                            "pass a local judge folder (--judge local:PATH or --judge PATH)")
    path = spec[len("local:"):] if spec.startswith("local:") else spec
    Checkpoint(path)
    return path


def _check(turns: int, dialogues: int, validity: int, max_new_tokens: int, temperature: float, judge_mode: str,
           judge_template: str, batch_size: int) -> None:
    if turns < 2:
        raise CompressError(f"--turns must be at least 2 (both agents speak), got {turns}")
    if dialogues < 1 or validity < 0:
        raise CompressError(f"--dialogues must be at least 1 and --validity-dialogues 0 or more, got {dialogues}, {validity}")
    if max_new_tokens < 1 or batch_size < 1:
        raise CompressError("--max-new-tokens and --batch-size must be positive")
    if not (temperature >= 0 and temperature < float("inf")):
        raise CompressError(f"--temperature must be 0 (greedy) or positive, got {temperature}")
    if judge_mode not in JUDGE_MODES or judge_template not in JUDGE_TEMPLATES:
        raise CompressError(f"--judge-mode is one of {', '.join(JUDGE_MODES)} and --judge-template one of "
                            f"{', '.join(JUDGE_TEMPLATES)}")


def _dialogues(path: str, label: str, setups: list[dict[str, Any]], gen: dict[str, Any], state: State,
               device: str, dtype: str) -> list[dict[str, Any]]:
    """The model at `path` plays `setups` (chunks of batch_size, each saved as soon as it is done)."""
    from compress.checkpoint.hashing import model_hash
    from compress.model.load import load

    mh = model_hash(path)["sha256"]
    keys = [key(kind="dialogue", model=mh, setup=s["id"], cards=[c["id"] for c in s["cards"]],
                persona=[c["persona"] for c in s["cards"]], topic=s["topic"]["topic"], **gen) for s in setups]
    todo = [i for i, k in enumerate(keys) if state.get(k) is None]
    if todo:
        model, tok = load(path, device, dtype)
        bs = gen["batch_size"]
        for c0 in range(0, len(todo), bs):
            chunk = todo[c0:c0 + bs]
            done = play(model, tok, [setups[i] for i in chunk], turns=gen["turns"], max_new_tokens=gen["max_new_tokens"],
                        temperature=gen["temperature"], seed=gen["seed"], batch_size=bs,
                        label=f"[{label}] {c0 + len(chunk)}/{len(todo)}")
            for i, d in zip(chunk, done, strict=True):
                state.put(keys[i], d)
        del model, tok
        gc.collect()
    return [{**state.get(k), "model": label, "model_hash": mh} for k in keys]


def _judge(loader: Any, jh: str, sets: list[list[dict[str, Any]]], judging: dict[str, Any], state: State) -> None:
    """Adds `verdicts` (per speaker: answer on the whole dialogue and on its first half) to every dialogue;
    the judge is loaded (`loader()`) only if an answer is not saved yet."""
    judge: list[Any] = []
    total = sum(len(s) for s in sets) * 4
    with progress_bar("judge", total=total) as advance:
        for dialogues in sets:
            for d in dialogues:
                verdicts = []
                for s in range(2):
                    v = {}
                    for name, upto in (("", None), ("_half", len(d["turns"]) // 2)):
                        text = question(d, s, upto)
                        k = key(kind="judge", judge=jh, text=text, **judging)
                        if state.get(k) is None:
                            if not judge:
                                judge.extend(loader())
                            state.put(k, ask(judge[0], judge[1], text, **judging))
                        ans = state.get(k)
                        v[f"answer{name}"] = ans["answer"]
                        v[f"judge{name}"] = {x: y for x, y in ans.items() if x != "answer"}
                        advance(1)
                    verdicts.append(v)
                d["verdicts"] = verdicts
    judge.clear()
    gc.collect()


def _model_record(path: str, label: str, dialogues: list[dict[str, Any]]) -> dict[str, Any]:
    from compress.eval.inspect import inspect as inspect_model

    rows = [r for d in dialogues for r in metrics.units(d)]
    rec: dict[str, Any] = {"name": label, "path": str(Path(path).resolve()), "hash": dialogues[0]["model_hash"]}
    try:
        s = inspect_model(path)
        rec.update(parameters=s["parameters"], size_on_disk=s["size_on_disk"])
    except CompressError:
        rec.update(parameters=None, size_on_disk=Checkpoint(path).size_on_disk())
    rec["format"] = dialogues[0]["format"]
    rec["rates"] = metrics.rates(rows)
    rec["passing"] = sum(metrics.passes(d) for d in dialogues)
    rec["trait_leaks"] = sum(trait_leaks(d) for d in dialogues)
    rec["empty_turns"] = sum(not t["text"] for d in dialogues for t in d["turns"])
    rec["results"] = {"persona": {"metric": "success", "value": rec["rates"]["success"],
                                  "items": [{"doc_id": r["unit"], "success": r["success"]} for r in rows]}}
    return rec


def _labels(models: list[str], names: list[str] | None) -> list[str]:
    from compress.model.labels import model_labels

    return model_labels(models, names)


def persona_eval(models: str | list[str], judge: str, *, cards: str | None = None, topics: str | None = None,
                 dialogues: int = 15, turns: int = 8, max_new_tokens: int = 60, temperature: float = 0.0,
                 seed: int = 42, judge_mode: str = "loglik", judge_template: str = "chat",
                 validity_dialogues: int | None = None, batch_size: int = 8, names: list[str] | None = None,
                 output: str | os.PathLike[str] | None = None, force: bool = False, resume: bool = False,
                 device: str = "cpu", dtype: str = "auto") -> dict[str, Any]:
    """Run the persona check for `models` with `judge`; returns the persona.json record."""
    from compress.model.load import load, load_tokenizer

    model_list = [str(models)] if isinstance(models, str | os.PathLike) else [str(m) for m in models]
    if not model_list:
        raise CompressError("no model given: compress eval persona MODEL [MODEL...] --judge JUDGE -o OUT")
    validity = dialogues if validity_dialogues is None else validity_dialogues
    _check(turns, dialogues, validity, max_new_tokens, temperature, judge_mode, judge_template, batch_size)
    card_set, topic_set = load_cards(cards), read_topics(topics)
    for m in model_list:
        Checkpoint(m)
    jpath = judge_location(judge)
    check_judge_template(load_tokenizer(jpath), judge_template, judge)
    labels = _labels(model_list, names)
    if output is None:
        raise CompressError("compress eval persona writes its dialogues and report to a folder: give -o OUT")
    check_output(output, [*model_list, jpath], force)
    state = State(state_path(output), resume)

    setups = schedule(card_set["cards"], topic_set["topics"], max(dialogues, validity), seed)
    gen = {"turns": turns, "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
           "batch_size": batch_size}
    sets = []
    for path, label in zip(model_list, labels, strict=True):
        info(f"[{label}] playing {dialogues} dialogues x {turns} turns")
        sets.append(_dialogues(path, label, setups[:dialogues], gen, state, device, dtype))
    info(f"[judge] playing its own {validity} validity dialogues")
    own = _dialogues(jpath, "judge", setups[:validity], gen, state, device, dtype) if validity else []
    from compress.checkpoint.hashing import model_hash

    jh = model_hash(jpath)["sha256"]
    judging = {"mode": judge_mode, "template": judge_template}
    _judge(lambda: load(jpath, device, dtype), jh, [own, *sets], judging, state)

    result = _result(model_list, labels, sets, own, card_set, topic_set, jpath, jh, judging, gen,
                     dialogues, validity, seed)
    with atomic_dir(output, [*model_list, jpath], force) as tmp:
        _write(tmp, result, sets, own)
    state.remove()
    result["output"] = str(Path(output).resolve())
    return result


def _result(model_list, labels, sets, own, card_set, topic_set, jpath, jh, judging, gen, dialogues, validity,
            seed) -> dict[str, Any]:
    from compress.eval import paired
    from compress.eval.report import build_table
    from compress.eval.report import markdown as table_markdown

    records = [_model_record(p, lab, ds) for p, lab, ds in zip(model_list, labels, sets, strict=True)]
    val_rates = metrics.rates([r for d in own for r in metrics.units(d)]) if own else None
    acc = val_rates["success"] if val_rates else None
    table = build_table(records, ["persona"])
    cis = paired.intervals(records, ["persona"], seed=seed)
    for rec in records[1:]:
        rec["delta_ci"] = cis.get(rec["name"], {})
    result = {
        "tool": "compress eval persona",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {**gen, "dialogues": dialogues, "validity_dialogues": validity,
                     "unit": "one speaker of one dialogue", "passing": "both speakers judged right"},
        "cards": {k: card_set[k] for k in ("path", "sha256", "seed")} | {"n": len(card_set["cards"])},
        "topics": {k: topic_set[k] for k in ("path", "sha256")} | {"n": len(topic_set["topics"])},
        "judge": {"path": str(Path(jpath).resolve()), "hash": jh, **judging, "comparable": False,
                  "note": "a local judge: its numbers are for regression runs, not comparable with the paper's"},
        "validity": {"accuracy": acc, "threshold": VALIDITY_THRESHOLD, "rates": val_rates,
                     "judge_is_bottleneck": acc is None or acc < VALIDITY_THRESHOLD},
        "models": records, "table": table,
    }
    result["markdown"] = (_validity_markdown(result["validity"], validity)
                          + table_markdown(table, ["persona"], {"persona": "success"})
                          + paired.markdown(cis, labels[0]) + _rates_markdown(records))
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _validity_markdown(v: dict[str, Any], n: int) -> str:
    if v["accuracy"] is None:
        return "Judge validity: not measured (--validity-dialogues 0): the success rates below may measure the judge.\n\n"
    head = (f"Judge validity: {_pct(v['accuracy'])}% of the personas recognised in {n} dialogues the judge wrote "
            f"itself to known cards ({v['rates']['n']} speakers; chance {_pct(metrics.CHANCE)}%).")
    if v["judge_is_bottleneck"]:
        head += (f" This is below {_pct(v['threshold'])}%: the judge, not the model, is the bottleneck, and the "
                 "success rates below do not measure the models' role-play.")
    top = v["rates"].get("top_answer")
    if top and top["share"] >= CONSTANT_JUDGE:
        head += (f" The judge answered {top['letter']} ({_option_name(top['letter'])}) to {_pct(top['share'])}% "
                 "of these questions: an almost constant answer, so its rates count the speakers who hold that "
                 "persona and are the same for every model playing the same cards.")
    return head + "\n\n"


def _option_name(letter: str) -> str:
    opt = OPTIONS[LETTERS.index(letter)]
    return "unclear" if opt is None else f"{opt[0]} {opt[1]}"


def _rates_markdown(records: list[dict[str, Any]]) -> str:
    from compress.eval.persona.cards import LEVELS, POLARITIES, TRAITS

    heads = ["model", "success", "first half", "drift", "unclear", "unreadable", *TRAITS, *POLARITIES, *LEVELS,
             "passing", "trait named", "top answer"]
    lines = ["", "Success rates (percent; chance 9.1%):", "", "| " + " | ".join(heads) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(heads) - 1)) + "|"]
    for rec in records:
        r = rec["rates"]
        cells = [rec["name"], _pct(r["success"]), _pct(r["success_half"]),
                 "-" if r["drift"] is None else f"{100 * r['drift']:+.1f}", _pct(r["unclear"]), _pct(r["unreadable"])]
        cells += [_pct(r["by_trait"][t]["success"]) for t in TRAITS]
        cells += [_pct(r["by_polarity"][p]["success"]) for p in POLARITIES]
        cells += [_pct(r["by_level"][lv]["success"]) for lv in LEVELS]
        top = r.get("top_answer")
        cells += [str(rec["passing"]), str(rec["trait_leaks"]), "-" if not top else f"{top['letter']} {_pct(top['share'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _write(tmp: Path, result: dict[str, Any], sets: list[list[dict[str, Any]]], own: list[dict[str, Any]]) -> None:
    (tmp / "persona.json").write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    (tmp / "results.md").write_text(result["markdown"])
    _jsonl(tmp / "dialogues.jsonl", [d for ds in sets for d in ds])
    _jsonl(tmp / "psyplay.jsonl", [{k: d[k] for k in ("id", "model", "topic", "cards", "turns", "verdicts")}
                                   for ds in sets for d in ds if metrics.passes(d)])
    _jsonl(tmp / "validity.jsonl", own)
