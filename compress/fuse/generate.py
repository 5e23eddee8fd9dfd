"""`compress fuse generate`: answers of a decoder (Cool-Fusion or one greedy model) for a prompt file.

Answers are appended to a JSONL file as they are produced. Its first line is a header with the run's
options and their fingerprint (sha256 of the canonical JSON of the options that change answers); a
rerun with the same options resumes after the last complete answer (a half-written last line is
dropped), a rerun with other options is refused unless `force` starts the file again.

Prompt files: .jsonl / .json records with `prompt` (text) or `messages` (chat turns), or the field(s)
named by `field`; .txt: one prompt per line. Records may carry an `id` (kept in the answers).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.fuse.sources import Prompt
from compress.model.labels import model_labels

HEADER_KEY = "compress_fuse_generate"


def read_prompts(path: str | os.PathLike[str], field: str | None = None) -> list[tuple[Any, Prompt]]:
    """[(id, prompt)] of a prompt file (see the module doc); an empty file is an error."""
    p = Path(path)
    if not p.is_file():
        raise CompressError(f"prompt file {path} not found")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".txt":
        items: list[Any] = [line for line in text.splitlines() if line.strip()]
    elif p.suffix == ".json":
        from compress.data.text import parse_json_list

        items = parse_json_list(text, path, "prompts")
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise CompressError(f"{path} line {n} is not JSON: {e.msg}") from None
    if not items:
        raise CompressError(f"prompt file {path} holds no prompt")
    return [(_id(rec, i), _prompt(rec, field, f"{path} record {i + 1}")) for i, rec in enumerate(items)]


def _id(rec: Any, i: int) -> Any:
    return rec.get("id", i) if isinstance(rec, dict) else i


def _prompt(rec: Any, field: str | None, where: str) -> Prompt:
    if isinstance(rec, str):
        prompt: Any = rec
    elif isinstance(rec, dict):
        keys = [k.strip() for k in field.split(",")] if field else (["messages"] if "messages" in rec else ["prompt"])
        missing = [k for k in keys if k not in rec]
        if missing:
            raise CompressError(f"{where} has no field {missing[0]!r} (fields: {', '.join(sorted(rec))})")
        prompt = rec[keys[0]] if len(keys) == 1 else "\n\n".join(str(rec[k]) for k in keys)
    else:
        raise CompressError(f"{where}: a prompt is a string or a record, not {type(rec).__name__}")
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            raise CompressError(f"{where}: chat messages must be a non-empty list of {{role, content}}")
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    if not isinstance(prompt, str) or not prompt.strip():
        raise CompressError(f"{where}: the prompt is empty")
    return prompt


def fingerprint(options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()


def is_answer_file(path: Path) -> bool:
    """Was `path` written by `compress fuse generate` (its first line is our header)?"""
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(first, dict) and isinstance(first.get(HEADER_KEY), dict)


def open_answers(path: str | os.PathLike[str], options: dict[str, Any], force: bool = False,
                 inputs: tuple[str | os.PathLike[str], ...] = ()) -> set[int]:
    """Prepare the answer file and take its lock: resumed (the indices already answered are returned) when
    it holds answers made with the same options, else new (header written; an existing file is replaced
    only with `force` and only when this command wrote it)."""
    from compress.checkpoint.atomic import check_output_file, replace_file
    from compress.checkpoint.lock import acquire

    p = Path(path)
    fp = fingerprint(options)
    if p.is_file() and not force and is_answer_file(p):
        header, done, good = _read_answers(p)
        if header is None or header.get("fingerprint") != fp:
            old = (header or {}).get("options", {})
            diff = sorted(k for k in set(old) | set(options) if old.get(k) != options.get(k))
            raise CompressError(f"output {path} was written with other options ({', '.join(diff) or 'fingerprint'} "
                                f"differ): pass --force to start it again, or choose another -o")
        check_output_file(path, inputs, force=True, is_ours=is_answer_file, lock=False)  # placement rules
        acquire(p.resolve())
        with open(p, "r+b") as f:  # drop a half-written last line
            f.truncate(good)
        return done
    check_output_file(path, inputs, force, is_ours=is_answer_file)
    header = {HEADER_KEY: {"fingerprint": fp, "options": options,
                           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}}
    replace_file(p, json.dumps(header, ensure_ascii=False) + "\n")
    return set()


def answered_indices(path: str | os.PathLike[str]) -> set[int]:
    """The prompt indices an answer file holds complete answers for (empty when it is missing or not ours)."""
    p = Path(path)
    return _read_answers(p)[1] if p.is_file() else set()


def _read_answers(p: Path) -> tuple[dict[str, Any] | None, set[int], int]:
    """(header, answered indices, byte length of the complete lines) of an answer file."""
    data = p.read_bytes()
    done: set[int] = set()
    header = None
    good = 0
    for n, line in enumerate(data.split(b"\n")):
        if good + len(line) >= len(data):  # no newline after it: written halfway
            break
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if n == 0:
            header = rec.get(HEADER_KEY) if isinstance(rec, dict) else None
            if header is None:
                return None, set(), 0
        elif isinstance(rec, dict) and isinstance(rec.get("index"), int):
            done.add(rec["index"])
        good += len(line) + 1
    return header, done, good


def append_answer(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one answer line and flush it to disk."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def answer_record(index: int, pid: Any, out: dict[str, Any], trace: bool) -> dict[str, Any]:
    """The JSONL line of one answer: the method's answer (the "+R" choice with rerank), how it was made."""
    rec: dict[str, Any] = {"index": index, "id": pid, "answer": out["text"], "finish_reason": out["finish_reason"],
                           "tokens": out["tokens"], "segments": len(out["segments"]), "agreed": out["agreed"],
                           "wins": out["wins"], "backed": out["backed"], "time": out["time"]}
    if "rerank" in out:
        rec["fused"] = out["text"]
        rec["answer"] = out["rerank"]["text"]
        rec["rerank"] = out["rerank"]
        rec["singles"] = out["singles"]
    if trace:
        rec["trace"] = out["segments"]
    return rec


def run_prompts(decoder: Any, prompts: list[tuple[Any, Prompt]], output: str | os.PathLike[str] | None,
                options: dict[str, Any], *, stop: list[str] | None = None, trace: bool = False, force: bool = False,
                inputs: tuple[str | os.PathLike[str], ...] = (), done: set[int] | None = None,
                on_answer: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Decode every prompt not answered yet in `output`, appending each answer as it is produced."""
    from compress.checkpoint.lock import release
    from compress.progress import progress_bar

    if done is None:
        done = open_answers(output, options, force, inputs) if output is not None else set()
    todo = [(i, pid, pr) for i, (pid, pr) in enumerate(prompts) if i not in done]
    records = []
    try:
        _answer_all(decoder, todo, output, stop, trace, on_answer, records, progress_bar)
    finally:
        if output is not None:
            release(Path(output).resolve())
    return records


def _answer_all(decoder, todo, output, stop, trace, on_answer, records, progress_bar) -> None:
    with progress_bar("fuse generate", total=len(todo)) as advance:
        for i, pid, prompt in todo:
            out = decoder.generate(prompt, stop=stop, trace=trace)
            rec = answer_record(i, pid, out, trace)
            if output is not None:
                append_answer(output, rec)
            if on_answer:
                on_answer(rec)
            records.append(rec)
            advance(1)


def generate_answers(models: list[str], *, method: str = "cool-fusion", prompt: str | None = None,
                     data: str | os.PathLike[str] | None = None, field: str | None = None,
                     output: str | os.PathLike[str] | None = None, segment: str = "aligned", rerank: bool = False,
                     max_new_tokens: int = 256, max_segment_tokens: int = 32, k_words: int = 4,
                     stop: list[str] | None = None, chat: Any = "auto", names: list[str] | None = None,
                     limit: int | None = None, trace: bool = False, device: str = "cpu", dtype: str = "auto",
                     seed: int = 42, force: bool = False) -> list[dict[str, Any]]:
    """Load MODELS, check every prompt against every model, then answer (see `run_prompts`)."""
    import torch

    from compress.checkpoint.reader import Checkpoint
    from compress.fuse.cool_fusion import CoolFusionDecoder
    from compress.fuse.sources import Source, render_prompt
    from compress.fuse.tokens import TokenizerView
    from compress.model.load import load_model, load_tokenizer

    if not models:
        raise CompressError("no model given: compress fuse generate --method cool-fusion M1 M2 ... --prompt TEXT")
    if method == "greedy" and len(models) != 1:
        raise CompressError(f"--method greedy runs one model, got {len(models)}")
    if (prompt is None) == (data is None):
        raise CompressError("give the prompts: --prompt TEXT or --data PROMPTS.jsonl (one of them)")
    if data is not None and output is None:
        raise CompressError("--data needs -o ANSWERS.jsonl (answers are written as they are produced)")
    if max_new_tokens < 1:
        raise CompressError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if max_segment_tokens < 1:
        raise CompressError(f"--max-segment-tokens must be at least 1, got {max_segment_tokens}")
    prompts = [(0, _prompt(prompt, None, "--prompt"))] if prompt is not None else read_prompts(data, field)
    prompts = prompts[:limit] if limit else prompts
    labels = model_labels(models, names)
    configs = [Checkpoint(m).config for m in models]  # a missing folder or non-model is refused before anything loads
    tokenizers = [load_tokenizer(m) for m in models]
    for tok, cfg, label in zip(tokenizers, configs, labels, strict=True):  # every prompt fits every model
        src = Source(model=None, view=TokenizerView(tok, label), name=label,
                     context=cfg.get("text_config", cfg).get("max_position_embeddings"))
        for i, (_, p) in enumerate(prompts):
            try:
                render_prompt(src, p, chat)
            except CompressError as e:
                raise CompressError(f"prompt {i + 1}: {e}") from None
    options = {"method": method, "models": [str(Path(m).resolve()) for m in models], "names": labels,
               "segment": segment, "rerank": rerank, "max_new_tokens": max_new_tokens,
               "max_segment_tokens": max_segment_tokens, "k_words": k_words, "stop": list(stop or []),
               "chat": chat, "dtype": dtype, "seed": seed, "limit": limit, "field": field,
               "prompts": _prompts_digest(prompt, data)}
    inputs = tuple(models) + ((data,) if data is not None else ())
    done = open_answers(output, options, force, inputs) if output is not None else set()
    torch.manual_seed(seed)
    loaded = [(load_model(m, device, dtype), tok) for m, tok in zip(models, tokenizers, strict=True)]
    decoder = CoolFusionDecoder(loaded, names=labels, segment=segment, rerank=rerank and method != "greedy",
                                k_context_words=k_words, max_new_tokens=max_new_tokens,
                                max_segment_tokens=max_segment_tokens, chat=chat)
    return run_prompts(decoder, prompts, output, options, stop=stop, trace=trace, done=done)


def _prompts_digest(prompt: str | None, data: str | os.PathLike[str] | None) -> str:
    from compress.checkpoint.provenance import file_sha256

    if data is not None:
        return f"{Path(data).resolve()} sha256:{file_sha256(data)}"
    return "sha256:" + hashlib.sha256(str(prompt).encode()).hexdigest()
