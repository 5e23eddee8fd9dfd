"""`compress fuse data`: FuseChat-3.0 / WRPO training data from sampled, scored responses.

Input: a JSONL file of prompts, one object per line with `prompt` (a string or chat messages; or
`messages`), optionally `reference` (or `answer`: what a verifier checks against) and `id`.

For each prompt every model (the sources, then the target) samples `n` responses with its own prompt
format (`compress.fuse.render`), every response is scored (`compress.fuse.scorers`), and
`compress.fuse.select` picks the records. The output folder holds:
- `sft.jsonl`: {prompt, chosen, source, ...}: the best source response per prompt;
- `dpo.jsonl`: {prompt, chosen, rejected, source, ...}: same-source preference pairs;
- `wrpo.jsonl`: {prompt, source_chosen (y_ws), chosen (y_wt), rejected (y_l), ...} (with a target);
- `samples.jsonl`: every response of every model with its scores (for SEFT, or another selection);
- `report.json`: counts kept and dropped per set, reason and source; sampling throughput; options.
`compress distill train --data` reads the three sets (sft: chosen; dpo/ln-dpo: chosen, rejected;
wrpo: all three).

Work is done in prompt shards (`shard_size` prompts) kept in `OUTPUT.shards/` until the output is
written: each shard is written whole once all its responses are sampled and scored, so a crash loses
at most the shard in progress and a rerun continues after the last finished shard. A rerun whose
models, prompts, sampling or scoring differ from the shards' is refused. The selection options
(tie rule, margin window, pairs per prompt) apply at the end and may change between runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.fuse.config import DataConfig
from compress.fuse.select import Response, Rules, select

FORMAT = "compress-fuse-data/1"
STATE = "build.json"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    role: str  # source | target
    mode: str  # chat | plain


@dataclass(frozen=True)
class PromptRecord:
    index: int  # position in the file's selected range
    line: int
    id: Any
    prompt: Any
    reference: Any


def read_prompts(path: str | os.PathLike[str], offset: int = 0, limit: int | None = None) -> list[PromptRecord]:
    from compress.data.text import parse_jsonl
    from compress.fuse.render import as_messages

    p = Path(path)
    if not p.is_file():
        raise CompressError(f"prompt file not found: {p}")
    try:
        rows = parse_jsonl(p.read_text(encoding="utf-8"), p)
    except UnicodeDecodeError:
        raise CompressError(f"{p} is not UTF-8 text") from None
    rows = rows[offset:]
    if limit is not None:
        rows = rows[:limit]
    out = []
    for lineno, rec in rows:
        where = f"{p}: line {lineno}"
        if not isinstance(rec, dict) or not ("prompt" in rec or "messages" in rec):
            raise CompressError(f"{where}: expected a JSON object with 'prompt' (or 'messages')")
        prompt = rec.get("prompt", rec.get("messages"))
        as_messages(prompt, where)  # validates
        out.append(PromptRecord(len(out), lineno, rec.get("id", lineno), prompt, rec.get("reference", rec.get("answer"))))
    if not out:
        raise CompressError(f"{p}: no prompts (after --offset {offset})")
    return out


def model_specs(cfg: DataConfig) -> list[ModelSpec]:
    """Sources in the order given, then the target; names are folder names, made unique; plain models marked."""
    if not cfg.sources:
        raise CompressError("give at least one --source model")
    paths = [(s, "source") for s in cfg.sources] + ([(cfg.target, "target")] if cfg.target else [])
    seen: Counter = Counter()
    specs = []
    for path, role in paths:
        if not Path(path).is_dir():
            raise CompressError(f"{role} model {path} is not a folder")
        base = Path(path).resolve().name
        seen[base] += 1
        name = base if seen[base] == 1 else f"{base}-{seen[base]}"
        plain = base in cfg.plain or path in cfg.plain or str(Path(path).resolve()) in {str(Path(x).resolve()) for x in cfg.plain}
        specs.append(ModelSpec(name, str(path), role, "plain" if plain else "chat"))
    unknown = [x for x in cfg.plain if not any(x in (s.name, s.path) or Path(x).resolve() == Path(s.path).resolve()
                                                for s in specs)]
    if unknown:
        raise CompressError(f"--plain {unknown[0]}: no such model among the sources and the target")
    return specs


def _hash_files(folder: str, names: tuple[str, ...] = ("config.json", "tokenizer.json", "tokenizer_config.json",
                                                        "chat_template.jinja")) -> str:
    from compress.checkpoint.provenance import file_sha256

    p = Path(folder)
    files = sorted(set(p.glob("*.safetensors")) | {p / n for n in names if (p / n).is_file()})
    return hashlib.sha256("".join(f"{f.name}:{file_sha256(f)}\n" for f in files).encode()).hexdigest()


def fingerprint(cfg: DataConfig, specs: list[ModelSpec], prompts_path: str) -> dict[str, Any]:
    """Everything the shards' content depends on: prompt file, models (weights, tokenizer), scorers, sampling."""
    from compress.checkpoint.provenance import file_sha256

    scorer = {"verifier": cfg.verifier, "reward_model": _hash_files(cfg.reward_model) if cfg.reward_model else None,
              "implicit": [_hash_files(cfg.implicit_reward), _hash_files(cfg.implicit_ref)] if cfg.implicit_reward else None}
    return {"format": FORMAT, "prompts_sha256": file_sha256(prompts_path),
            "models": [{"name": s.name, "role": s.role, "mode": s.mode, "sha256": _hash_files(s.path)} for s in specs],
            "scorer": scorer, "options": cfg.sampling_options()}


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {json.dumps(x)[:60]} -> {json.dumps(y)[:60]}")
    return out


def open_work(work: Path, fp: dict[str, Any]) -> set[int]:
    """Create or reopen the shard folder; the finished shard numbers. A different fingerprint is refused."""
    from compress.checkpoint.atomic import replace_file

    state = work / STATE
    if state.is_file():
        try:
            old = json.loads(state.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise CompressError(f"{state} is damaged: delete {work} to start over") from None
        diff = _differences(old.get("fingerprint", {}), fp)
        if diff:
            raise CompressError(f"{work} holds shards of a build with other options ({'; '.join(diff[:3])}): "
                                f"rerun with the same options to resume, or delete {work} to start over")
        return {int(f.stem.split("-")[1]) for f in work.glob("shard-*.jsonl") if f.stem.split("-")[1].isdigit()}
    if work.exists() and any(work.iterdir()):
        raise CompressError(f"shard folder {work} exists and is not a compress fuse data build: choose another --work")
    work.mkdir(parents=True, exist_ok=True)
    replace_file(state, json.dumps({"fingerprint": fp}, indent=2) + "\n")
    return set()


def _seed(seed: int, model: int, shard: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{model}/{shard}".encode()).digest()[:4], "little")


def build_shard(shard: int, prompts: list[PromptRecord], specs: list[ModelSpec], models: dict[str, Any],
                renders: dict[str, Any], verifier, reward, cfg: DataConfig) -> dict[str, Any]:
    """Sample and score one shard: {"prompts": [...], "stats": {model: {...}}}."""
    from compress.fuse.sampling import sample

    recs = [{"index": p.index, "id": p.id, "prompt": p.prompt, "reference": p.reference, "samples": {}} for p in prompts]
    stats = {}
    for mi, spec in enumerate(specs):
        ids = [renders[spec.name].prompt_ids(p.prompt) for p in prompts]
        got, st = sample(models[spec.name], renders[spec.name].tokenizer, ids, cfg.n, temperature=cfg.temperature,
                         top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, stop=tuple(cfg.stop),
                         batch_size=cfg.batch_size, seed=_seed(cfg.seed, mi, shard))
        stats[spec.name] = st
        for rec, samples in zip(recs, got, strict=True):
            rec["samples"][spec.name] = [{"text": s.text, "tokens": s.tokens, "finished": s.finished, "score": {}}
                                         for s in samples]
    flat = [(rec, s) for rec in recs for spec in specs for s in rec["samples"][spec.name]]
    prompts_, texts, refs = [r["prompt"] for r, _ in flat], [s["text"] for _, s in flat], [r["reference"] for r, _ in flat]
    for key, scorer in (("verifier", verifier), ("reward", reward)):
        if scorer is not None:
            for (_, s), v in zip(flat, scorer.score(prompts_, texts, refs), strict=True):
                s["score"][key] = float(v)
    return {"shard": shard, "prompts": recs, "stats": stats}


def responses_of(rec: dict[str, Any], specs: list[ModelSpec]) -> tuple[list[list[Response]], list[Response] | None]:
    srcs, tgt = [], None
    for order, spec in enumerate(specs):
        rs = [Response(spec.name, k, order, s["text"], s["score"]) for k, s in enumerate(rec["samples"][spec.name])]
        if spec.role == "target":
            tgt = rs
        else:
            srcs.append(rs)
    return srcs, tgt


def _quantiles(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    s = sorted(xs)
    return {f"p{q}": s[min(len(s) - 1, int(q / 100 * len(s)))] for q in (10, 50, 90)}


def assemble(shards: list[dict[str, Any]], specs: list[ModelSpec], cfg: DataConfig
             ) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The three sets from all shards, and the report's counts (kept / dropped per reason and source)."""
    rules = Rules(cfg.tie, (cfg.margin_min, math.inf if cfg.margin_max is None else cfg.margin_max), cfg.pairs, cfg.seed)
    sets: dict[str, list[dict]] = {"sft": [], "dpo": [], "wrpo": []}
    dropped: dict[str, Counter] = {k: Counter() for k in sets}
    by_source: dict[str, dict[str, Counter]] = {k: defaultdict(Counter) for k in sets}
    per_model: dict[str, Counter] = defaultdict(Counter)
    all_margins: list[float] = []
    for sh in shards:
        for rec in sh["prompts"]:
            srcs, tgt = responses_of(rec, specs)
            for r in [x for rs in srcs for x in rs] + (tgt or []):
                per_model[r.model]["responses"] += 1
                per_model[r.model]["passing"] += r.passes
            for spec in specs:
                per_model[spec.name]["unfinished"] += sum(not s["finished"] for s in rec["samples"][spec.name])
            for rs in srcs:
                if len(rs) > 1 and "reward" in rs[0].score:
                    all_margins.append(max(r.score["reward"] for r in rs) - min(r.score["reward"] for r in rs))
            oc = select(rec["index"], rec["prompt"], srcs, tgt, rules)
            for name, rec_out in (("sft", oc.sft), ("wrpo", oc.wrpo)):
                if rec_out is not None:
                    sets[name].append({"id": rec["id"], **rec_out})
                    by_source[name][rec_out["source"]]["kept"] += 1
            for pair in oc.pairs:
                sets["dpo"].append({"id": rec["id"], **pair})
                by_source["dpo"][pair["source"]]["kept"] += 1
            for name, why in oc.dropped.items():
                dropped[name][why] += 1
            for src, why in oc.source_drops.items():
                by_source["dpo"][src][why] += 1
    n = sum(len(sh["prompts"]) for sh in shards)
    report = {"prompts": n, "models": {s.name: {"role": s.role, "mode": s.mode, **per_model[s.name]} for s in specs}}
    for name in sets:
        if name == "wrpo" and not cfg.target:
            continue
        report[name] = {"kept": len(sets[name]), "dropped": dict(dropped[name]),
                        "by_source": {k: dict(v) for k, v in by_source[name].items()}}
    margins = [p["margin"] for p in sets["dpo"] if "margin" in p]
    if margins or all_margins:
        report["dpo"]["kept_margin_quantiles"] = _quantiles(margins)
        report["dpo"]["source_best_minus_worst_quantiles"] = _quantiles(all_margins)
    report["rules"] = {"tie": cfg.tie, "margin_window": [cfg.margin_min, cfg.margin_max], "pairs": cfg.pairs,
                       "seed": cfg.seed}
    tot = Counter()
    for sh in shards:
        for st in sh["stats"].values():
            tot.update(st)
    report["throughput"] = {**{k: tot[k] for k in ("responses", "tokens", "seconds", "cpu_seconds")},
                            "responses_per_s": tot["responses"] / tot["seconds"] if tot["seconds"] else None,
                            "tokens_per_s": tot["tokens"] / tot["seconds"] if tot["seconds"] else None}
    return sets, report
