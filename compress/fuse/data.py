"""The run of `compress fuse data`: checks first, then shards, then the output folder (see `build`)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.fuse.build import (
    ModelSpec,
    PromptRecord,
    assemble,
    build_shard,
    fingerprint,
    model_specs,
    open_work,
    read_prompts,
)
from compress.fuse.config import DataConfig


def _context(path: str) -> int | None:
    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    cfg = cfg.get("text_config", cfg)
    return cfg.get("max_position_embeddings")


def check_prompts(prompts: list[PromptRecord], specs: list[ModelSpec], renders: dict[str, Any], cfg: DataConfig) -> None:
    """Every prompt renders for every model within --max-prompt-length and the model's context."""
    for spec in specs:
        ctx = _context(spec.path)
        for p in prompts:
            n = len(renders[spec.name].prompt_ids(p.prompt, f"prompt {p.id}"))
            if n > cfg.max_prompt_length:
                raise CompressError(f"prompt {p.id} (line {p.line}) is {n} tokens for {spec.name}, longer than "
                                    f"--max-prompt-length {cfg.max_prompt_length}: raise it or shorten the prompt")
            if ctx is not None and n + cfg.max_new_tokens > ctx:
                raise CompressError(f"prompt {p.id} (line {p.line}) + --max-new-tokens {cfg.max_new_tokens} is "
                                    f"{n + cfg.max_new_tokens} tokens, beyond {spec.name}'s context of {ctx}")


def make_reward(cfg: DataConfig, device: str, dtype: str):
    from compress.fuse.scorers import ImplicitReward, RewardModel

    if cfg.reward_model:
        return RewardModel(cfg.reward_model, device, dtype, cfg.batch_size, cfg.reward_label,
                           cfg.max_prompt_length + cfg.max_new_tokens + 64)
    if cfg.implicit_reward:
        return ImplicitReward(cfg.implicit_reward, cfg.implicit_ref, device, dtype, cfg.batch_size)
    return None


def write_sets(folder: Path, sets: dict[str, list[dict]], shards: list[dict], cfg: DataConfig) -> None:
    for name, rows in sets.items():
        if name == "wrpo" and not cfg.target:
            continue
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(folder / "samples.jsonl", "w", encoding="utf-8") as f:
        for sh in shards:
            for rec in sh["prompts"]:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def build_data(prompts_path: str | os.PathLike[str], output: str | os.PathLike[str], cfg: DataConfig, *,
               work: str | os.PathLike[str] | None = None, force: bool = False, device: str = "cpu",
               dtype: str = "auto") -> dict[str, Any]:
    """Sample, score and select (module doc of `compress.fuse.build`); returns the report."""
    from compress import progress
    from compress.checkpoint.atomic import atomic_dir, check_checkpoint_dir, check_output, replace_file
    from compress.checkpoint.provenance import write_provenance
    from compress.fuse.render import Rendering
    from compress.fuse.scorers import make_verifier
    from compress.model import load_model, load_tokenizer
    from compress.model.device import parse_device

    parse_device(device)
    specs = model_specs(cfg)
    extra = [p for p in (cfg.reward_model, cfg.implicit_reward, cfg.implicit_ref) if p]
    inputs = [str(prompts_path), *[s.path for s in specs], *extra]
    check_output(output, inputs, force)
    work_dir = Path(work) if work else Path(str(output) + ".shards")
    check_checkpoint_dir(work_dir, inputs, output)
    prompts = read_prompts(prompts_path, cfg.offset, cfg.limit)
    verifier = make_verifier(cfg.verifier)
    if verifier is None and not (cfg.reward_model or cfg.implicit_reward):
        raise CompressError("nothing scores the responses: give --verifier, --reward-model or --implicit-reward")
    if verifier is not None:
        for p in prompts:
            if p.reference is None:
                raise CompressError(f"prompt {p.id} (line {p.line}) has no reference: --verifier {cfg.verifier} "
                                    "needs a 'reference' (or 'answer') in every record")
            try:
                verifier.check([p.reference])
            except CompressError as e:
                raise CompressError(f"prompt {p.id} (line {p.line}): {e}") from None
    if cfg.reward_model:
        from compress.fuse.scorers import reward_model_head

        reward_model_head(cfg.reward_model)  # a folder that is not a sequence classifier: refused before sampling
    renders = {s.name: Rendering(load_tokenizer(s.path), s.name, s.mode, cfg.plain_format) for s in specs}
    for r in renders.values():
        r.check()
    check_prompts(prompts, specs, renders, cfg)
    from compress.fuse.sampling import check_sampling

    check_sampling(cfg.n, cfg.temperature, cfg.top_p)
    done = open_work(work_dir, fingerprint(cfg, specs, str(prompts_path)))
    shards = [prompts[i: i + cfg.shard_size] for i in range(0, len(prompts), cfg.shard_size)]
    todo = [k for k in range(len(shards)) if k not in done]
    if done:
        progress.info(f"resuming: {len(shards) - len(todo)} of {len(shards)} shards already in {work_dir}")
    if todo:
        reward = make_reward(cfg, device, dtype)
        models = {s.name: load_model(s.path, device, dtype) for s in specs}
        with progress.progress_bar("fuse data", sum(len(shards[k]) for k in todo)) as advance:
            for k in todo:
                sh = build_shard(k, shards[k], specs, models, renders, verifier, reward, cfg)
                replace_file(work_dir / f"shard-{k:05d}.jsonl", json.dumps(sh, ensure_ascii=False) + "\n")
                advance(len(shards[k]))
        del models
    loaded = [json.loads((work_dir / f"shard-{k:05d}.jsonl").read_text(encoding="utf-8")) for k in range(len(shards))]
    sets, report = assemble(loaded, specs, cfg)
    units = {"verifier": verifier.units if verifier else None}
    if cfg.reward_model or cfg.implicit_reward:
        units["reward"] = ("nats: log π_dpo(y|x) − log π_ref(y|x) summed over the response tokens"
                           if cfg.implicit_reward else f"logit of output {cfg.reward_label or 0} of {cfg.reward_model}")
    report["units"] = units
    report["options"] = cfg.model_dump()
    with atomic_dir(output, inputs, force, marker=False) as tmp:
        write_sets(tmp, sets, loaded, cfg)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        write_provenance(tmp, inputs=inputs, recipe={"method": "fuse-data", **cfg.model_dump()},
                         extra={"report": report, "created_unix": time.time()})
    shutil.rmtree(work_dir, ignore_errors=True)
    return report
