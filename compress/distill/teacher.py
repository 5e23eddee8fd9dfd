"""Teacher signals: online (teacher model beside the student) or from a top-k cache on disk.

Cache format (top-k plus one remainder bucket, as the ADPA/DCKD code stores it), one folder:
- `cache.json`: format, teacher (+ reference teacher) path and content hash, tokenizer hash (of
  `get_vocab()`), vocabulary size, k, capture temperature, chat template, data path, data fingerprint
  (sha256 of the tokenised pairs: detects other data, tokenizer or truncation), slots, shard files.
- `<slot>-NNNNN.safetensors` per slot (chosen, rejected, generated): `ids` int32 [N_tok, k],
  `logprobs` fp32 [N_tok, k], `rest_logprob` fp32 [N_tok] (log of the remaining mass), `labels` int32
  [N_tok] (the tokenisation the teacher saw), `offsets` int64 [N_seq + 1]; with a reference teacher
  also `ref_logprobs` fp32 [N_tok, k]: the reference's log-probs at the teacher's top-k ids, so the
  ADPA advantage needs no fill value for ids missing from the reference's own top-k.

Log-probabilities are stored in fp32 (about 50·(4 + 4) + 4 ≈ 404 B/token at k = 50, 604 with the
reference). fp16 (format 1) rounds a log-prob near −4 to a step of 2⁻⁹: for a DPO teacher close to its
reference (median |A| 0.03 for A = log π_dpo − log π_ref) that gave a median advantage error of 0.001
and flipped the sign of 1.7 % of the advantages. Format 1 caches are refused with a request to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from compress.checkpoint.atomic import atomic_dir
from compress.checkpoint.hashing import weights_hash as model_hash
from compress.data.preference import PreferenceData, PreferenceExample, SlotBatch, collate_slot
from compress.distill.forward import response_logits
from compress.distill.losses import topk_from_logits
from compress.errors import CompressError

CACHE_FORMAT = "compress-teacher-cache/2"
CACHE_FORMAT_PREFIX = "compress-teacher-cache/"
SEQS_PER_SHARD = 4096


def vocab_hash(tokenizer) -> str:
    """sha256 of the token -> id map: get_vocab(), not vocab_size, which differs legitimately with padded
    embedding rows (Qwen2.5: 152,064 or 151,936 rows for 151,665 tokens)."""
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def check_same_vocab(student_tok, teacher_tok, teacher_name: str = "teacher") -> None:
    """Refuse a teacher whose token -> id map differs from the student's, naming the first difference."""
    a, b = student_tok.get_vocab(), teacher_tok.get_vocab()
    if a == b:
        return
    ia = {i: t for t, i in a.items()}
    ib = {i: t for t, i in b.items()}
    for i in range(max(len(ia), len(ib), max(ia, default=0) + 1, max(ib, default=0) + 1)):
        if ia.get(i) != ib.get(i):
            raise CompressError(
                f"student and {teacher_name} tokenizers differ: id {i} is {ia.get(i)!r} for the student but "
                f"{ib.get(i)!r} for the {teacher_name} ({len(a)} vs {len(b)} tokens); distillation needs one shared "
                "vocabulary")
    raise CompressError(f"student and {teacher_name} tokenizers differ")


@dataclass
class Signals:
    """Teacher signal for the response tokens of one slot batch, row-major [N, ...]."""

    ids: torch.Tensor  # int64 [N, k]
    logprobs: torch.Tensor  # fp32 [N, k]
    rest: torch.Tensor  # fp32 [N]
    ref_logprobs: torch.Tensor | None = None  # fp32 [N, k], reference teacher at `ids`
    dense: torch.Tensor | None = None  # fp32 [N, V]: the teacher's logits, when k = 0 (the full distribution)

    def to(self, device) -> Signals:
        return Signals(*(t.to(device) if t is not None else None for t in
                         (self.ids, self.logprobs, self.rest, self.ref_logprobs, self.dense)))


@torch.no_grad()
def compute_signals(teacher: torch.nn.Module, batch: SlotBatch, k: int,
                    ref: torch.nn.Module | None = None) -> Signals:
    """Top-k + rest of `teacher` (and the reference's log-probs at the same ids) on a slot batch.

    k = 0 keeps the teacher's full distribution (`dense`, exact KD as TRL's GKD computes it) besides
    its top-1 (for the agreement figure)."""
    logits = response_logits(teacher, batch)
    if k == 0:
        return Signals(*topk_from_logits(logits, 1), dense=logits.float())
    ids, lp, rest = topk_from_logits(logits, k)
    ref_lp = None
    if ref is not None:
        ref_lp = response_logits(ref, batch).log_softmax(-1).gather(-1, ids.to(logits.device))
    return Signals(ids, lp, rest, ref_lp)


class OnlineTeacher:
    """Teacher (and optional reference teacher) run on every batch, in eval mode, no gradients."""

    def __init__(self, model: torch.nn.Module, k: int = 50, ref: torch.nn.Module | None = None):
        self.model, self.k, self.ref = model.eval(), k, ref.eval() if ref is not None else None

    @property
    def has_ref(self) -> bool:
        return self.ref is not None

    def signals(self, examples: list[PreferenceExample], batch: SlotBatch, slot: str) -> Signals:
        return compute_signals(self.model, batch, self.k, self.ref)


def _check_format(folder, fmt: Any) -> None:
    if fmt == CACHE_FORMAT:
        return
    version = fmt[len(CACHE_FORMAT_PREFIX):] if isinstance(fmt, str) and fmt.startswith(CACHE_FORMAT_PREFIX) else ""
    if version.isdigit() and int(version) < int(CACHE_FORMAT[len(CACHE_FORMAT_PREFIX):]):
        raise CompressError(f"{folder} is a teacher cache of an older format ({fmt}: fp16 log-probabilities, which flip "
                            "ADPA advantage signs): rebuild it with `compress distill cache-teacher`")
    raise CompressError(f"{folder}: unknown teacher cache format {fmt!r} (this compress reads {CACHE_FORMAT})")


def default_cache_dir(data: str | os.PathLike[str], teacher: str | os.PathLike[str], k: int) -> Path:
    d = Path(data)
    return d.parent / f"{d.stem}.teacher-{Path(teacher).name}-k{k}"


def write_cache(output: str | os.PathLike[str], teacher: torch.nn.Module, teacher_tok, data: PreferenceData,
                slots: tuple[str, ...], k: int, teacher_path: str, ref: torch.nn.Module | None = None,
                ref_path: str | None = None, batch_size: int = 4, force: bool = False,
                inputs: tuple[str, ...] = (), advance=None) -> Path:
    """Run the teacher over every response of `slots` and write the cache folder atomically."""
    for s in slots:
        if not data.has(s):
            raise CompressError(f"{data.path} has no {s!r} responses for every pair"
                                + (" (run `compress distill generate` first)" if s == "generated" else ""))
    pad = teacher_tok.pad_token_id if teacher_tok.pad_token_id is not None else 0
    meta: dict[str, Any] = {
        "format": CACHE_FORMAT, "teacher": str(teacher_path), "teacher_hash": model_hash(teacher_path),
        "ref_teacher": str(ref_path) if ref_path else None,
        "ref_teacher_hash": model_hash(ref_path) if ref_path else None,
        "tokenizer_hash": vocab_hash(teacher_tok), "vocab_size": len(teacher_tok.get_vocab()), "k": k,
        "temperature": 1.0, "chat_template": getattr(teacher_tok, "chat_template", None),
        "data": str(data.path), "data_options": data.options, "n_seq": len(data.examples),
        "fingerprints": {s: data.fingerprint((s,)) for s in slots}, "slots": list(slots),
        "shards": {},
    }
    with atomic_dir(output, inputs, force) as tmp:
        for slot in slots:
            files = []
            for s0 in range(0, len(data.examples), SEQS_PER_SHARD):
                shard = data.examples[s0: s0 + SEQS_PER_SHARD]
                parts: dict[str, list[torch.Tensor]] = {"ids": [], "logprobs": [], "rest_logprob": [], "labels": [],
                                                        "ref_logprobs": []}
                lengths = []
                for b0 in range(0, len(shard), batch_size):
                    exs = shard[b0: b0 + batch_size]
                    batch = collate_slot(exs, slot, pad)
                    sig = compute_signals(teacher, batch, k, ref)
                    parts["ids"].append(sig.ids.to(torch.int32).cpu())
                    parts["logprobs"].append(sig.logprobs.float().cpu())
                    parts["rest_logprob"].append(sig.rest.float().cpu())
                    parts["labels"].append(batch.targets.to(torch.int32))
                    if sig.ref_logprobs is not None:
                        parts["ref_logprobs"].append(sig.ref_logprobs.float().cpu())
                    lengths += batch.lengths.tolist()
                    if advance:
                        advance(len(exs))
                tensors = {n: torch.cat(v) for n, v in parts.items() if v}
                tensors["offsets"] = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
                name = f"{slot}-{len(files):05d}.safetensors"
                _save_shard({n: t.contiguous() for n, t in tensors.items()}, tmp / name)
                files.append(name)
            meta["shards"][slot] = files
        (tmp / "cache.json").write_text(json.dumps(meta, indent=2) + "\n")
    return Path(output)


def _save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors `save_file`, with its I/O failures ("... (os error 28)") raised as the OSError they are,
    so that the atomic folder turns a full disk into one error line."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as e:
        m = re.search(r"os error (\d+)", str(e))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def read_cache_meta(folder: Path) -> dict[str, Any]:
    """The cache's `cache.json`, checked to be a JSON object of the current format."""
    meta_file = folder / "cache.json"
    if not meta_file.is_file():
        raise CompressError(f"{folder} is not a teacher cache (no cache.json): make one with `compress distill cache-teacher`")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CompressError(f"{meta_file} is not a readable teacher cache description: {e}") from None
    if not isinstance(meta, dict):
        raise CompressError(f"{meta_file} is not a teacher cache description (not a JSON object)")
    _check_format(folder, meta.get("format"))
    return meta


def _check_meta(folder: Path, meta: dict[str, Any], data: PreferenceData, student_tok, slots: tuple[str, ...],
                need_ref: bool, teacher_path: str | None) -> None:
    """Refuse a cache made with another vocabulary, teacher, data or tokenisation, or lacking a slot."""
    if meta["tokenizer_hash"] != vocab_hash(student_tok):
        raise CompressError(f"{folder} was made with a teacher tokenizer whose vocabulary differs from the student's")
    if teacher_path is not None and meta["teacher_hash"] != model_hash(teacher_path):
        raise CompressError(f"{folder} was made by the teacher {meta['teacher']}, not by {teacher_path}: "
                            "run cache-teacher again")
    for s in slots:
        if s not in meta["shards"]:
            raise CompressError(f"{folder} has no teacher signal for the {s!r} responses (it has "
                                f"{', '.join(meta['shards'])}): run cache-teacher with --slots including {s}")
        if meta["fingerprints"][s] != data.fingerprint((s,)):
            raise CompressError(f"{folder} was made for other data (or another tokenisation or --max-length) than "
                                f"{data.path}: run cache-teacher again for this data")
    if need_ref and not meta.get("ref_teacher"):
        raise CompressError(f"{folder} has no reference-teacher log-probs, which ADPA needs: "
                            "run cache-teacher with --ref-teacher")


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    try:
        shard = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CompressError(f"cannot read the teacher cache shard {path}: {e}") from None
    need = {"ids", "logprobs", "rest_logprob", "labels", "offsets"}
    if not need <= set(shard):
        raise CompressError(f"{path} lacks {', '.join(sorted(need - set(shard)))}: rebuild the teacher cache")
    return shard


class CachedTeacher:
    """Teacher signals read from a cache folder; checks that it was made for this data and vocabulary."""

    def __init__(self, folder: str | os.PathLike[str], data: PreferenceData, student_tok,
                 slots: tuple[str, ...], need_ref: bool = False, teacher_path: str | None = None):
        self.folder = Path(folder)
        self.meta = meta = read_cache_meta(self.folder)
        try:
            _check_meta(self.folder, meta, data, student_tok, slots, need_ref, teacher_path)
            self.k = int(meta["k"])
            shard_files = {s: [self.folder / str(f) for f in meta["shards"][s]] for s in slots}
        except (KeyError, TypeError, ValueError) as e:
            raise CompressError(f"{self.folder}/cache.json is incomplete or damaged ({type(e).__name__}: {e}): "
                                "rebuild the cache with `compress distill cache-teacher`") from None
        self.has_ref = bool(meta.get("ref_teacher"))
        self.tensors: dict[str, list[dict[str, torch.Tensor]]] = {}
        self.index: dict[str, list[tuple[int, int, int]]] = {}
        for s in slots:
            shards = [_load_shard(f) for f in shard_files[s]]
            self.tensors[s] = shards
            idx = []
            for si, sh in enumerate(shards):
                off = sh["offsets"]
                idx += [(si, int(off[i]), int(off[i + 1])) for i in range(len(off) - 1)]
            if len(idx) != len(data.examples):
                raise CompressError(f"{self.folder}: the {s} shards hold {len(idx)} sequences, the data {len(data.examples)}")
            self.index[s] = idx

    def signals(self, examples: list[PreferenceExample], batch: SlotBatch, slot: str) -> Signals:
        parts: dict[str, list[torch.Tensor]] = {"ids": [], "logprobs": [], "rest_logprob": [], "ref_logprobs": [],
                                                "labels": []}
        for ex in examples:
            si, a, b = self.index[slot][ex.index]
            sh = self.tensors[slot][si]
            for n in parts:
                if n in sh:
                    parts[n].append(sh[n][a:b])
        # widen before concatenating: torch.cat of fp16 tensors fails under CPU bf16 autocast
        cat = {n: torch.cat([t.long() if n in ("ids", "labels") else t.float() for t in v]) for n, v in parts.items() if v}
        if not torch.equal(cat["labels"], batch.targets.cpu()):
            raise CompressError(f"{self.folder}: cached labels do not match the batch's {slot} tokens")
        return Signals(cat["ids"], cat["logprobs"], cat["rest_logprob"], cat.get("ref_logprobs"))


def run_cache_teacher(teacher: str, run, force: bool = False) -> dict[str, Any]:
    """`compress distill cache-teacher`: score the responses of `run.slots` with `teacher` (a CacheTeacherRun)."""
    from compress import progress
    from compress.checkpoint.atomic import check_output
    from compress.data.preference import SLOTS, read_preference
    from compress.distill.forward import distill_device
    from compress.model import load_model, load_tokenizer

    want = tuple(s.strip() for s in run.slots.split(",") if s.strip())
    bad = [s for s in want if s not in SLOTS]
    if bad or not want:
        raise CompressError(f"unknown slot {bad[0] if bad else run.slots!r}: choose from {', '.join(SLOTS)}")
    out = run.output or str(default_cache_dir(run.data, teacher, run.k))
    inputs = (teacher, run.data, *([run.ref_teacher] if run.ref_teacher else []))
    check_output(out, inputs, force)
    device = distill_device(run.device)
    tok = load_tokenizer(teacher)
    ds = read_preference(run.data, tok, run.max_length, run.max_prompt_length, run.long_prompt, run.limit)
    if ds.skipped_long:
        progress.warn(f"skipped {ds.skipped_long} pairs with prompts longer than {ds.options['max_prompt_length']} tokens")
    ref = None
    if run.ref_teacher:
        check_same_vocab(tok, load_tokenizer(run.ref_teacher), "reference teacher")
        ref = load_model(run.ref_teacher, device, run.dtype)
    model = load_model(teacher, device, run.dtype)
    with progress.progress_bar("teacher cache", len(ds.examples) * len(want)) as adv:
        path = write_cache(out, model, tok, ds, want, run.k, str(teacher), ref, run.ref_teacher, run.batch_size, force,
                           inputs=inputs, advance=adv)
    return {"cache": str(path), "pairs": len(ds.examples), "slots": list(want), "k": run.k,
            "skipped_long_prompts": ds.skipped_long}
