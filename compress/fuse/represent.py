"""Representations (`compress fuse represent`): a model's teacher-forced top-k on every record of a data set.

The first step of FuseLLM / FuseChat: every model (pivot and sources) runs on its own rendering and
tokenisation of the same records. Per predicted token (label) it stores, in the layout of the
`compress distill cache-teacher` shards (`ids`, `logprobs` fp32, `rest_logprob`, `labels`, `offsets`):

    ids, logprobs      the top-k next-token ids and log p (k = 10 by default, FuseLLM's)
    rest_logprob       log of the mass outside the top-k
    label_logprob      log p of the actual next token
    byte_start/end     the label's byte span in the record's content (-1: template or special token)

and per record `record_hash` (the record as read, to refuse representations of other data or order),
`content_hash`, `content_bytes`, `ce_token` = −mean log p(label) over the labels and
`ce_byte` = −Σ log p(label) / bytes over the labels inside the content (comparable across tokenizers).
Records without labels (prompt as long as --max-length) keep their place with no rows and CE 0.

Shards of `RECORDS_PER_SHARD` records are written as they finish into `OUT.partial/` and moved into
`OUT` when all are there: a crashed run resumes at the first missing shard; under `accelerate launch`
process r computes the shards s with s mod world = r.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress.errors import CompressError
from compress.fuse.records import Record, Rendered, Renderer, read_records

REP_FORMAT = "compress-fuse-rep/1"
RECORDS_PER_SHARD = 64
LOGIT_BUDGET = 1 << 24  # fp32 logits per LM-head chunk (64 MB): 64 rows of a 262k vocabulary
SEQ_KEYS = ("record_hash", "record_line", "content_hash", "content_bytes", "ce_token", "ce_byte", "prompt_len")
TOK_KEYS = ("ids", "logprobs", "rest_logprob", "labels", "label_logprob", "byte_start", "byte_end")


@dataclass
class RepSettings:
    k: int = 10
    max_length: int = 1024
    batch_size: int = 4
    limit: int | None = None
    shard_records: int | None = None  # records per shard (default RECORDS_PER_SHARD)


def _chunk_rows(vocab: int) -> int:
    return max(16, LOGIT_BUDGET // max(vocab, 1))


@torch.no_grad()
def token_stats(model: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, k: int
                ) -> dict[str, torch.Tensor]:
    """Top-k ids / log-probs, rest mass and label log-prob from final hidden states [N, H], chunked over
    rows so that at most `LOGIT_BUDGET` logits exist at once: log p = z − logsumexp(z)."""
    from compress.distill.losses import topk_from_logits
    from compress.model.logits import head_logits

    vocab = model.get_output_embeddings().weight.shape[0]
    rows = _chunk_rows(vocab)
    out: dict[str, list[torch.Tensor]] = {"ids": [], "logprobs": [], "rest_logprob": [], "label_logprob": []}
    for a in range(0, hidden.shape[0], rows):
        z = head_logits(model, hidden[a: a + rows])
        ids, lp, rest = topk_from_logits(z, k)
        lab = labels[a: a + rows].to(z.device)
        out["ids"].append(ids.to(torch.int32).cpu())
        out["logprobs"].append(lp.float().cpu())
        out["rest_logprob"].append(rest.float().cpu())
        out["label_logprob"].append((z.gather(-1, lab[:, None])[:, 0] - torch.logsumexp(z, -1)).float().cpu())
        del z
    return {n: torch.cat(v) if v else torch.zeros(0) for n, v in out.items()}


def _batch_hidden(model: torch.nn.Module, items: list[Rendered], pad: int) -> torch.Tensor:
    """Final hidden states predicting every label of `items`, row-major [N, H] (prompt positions never reach the head)."""
    from compress.data.preference import pack
    from compress.distill.forward import response_hidden

    return response_hidden(model, pack([it.prompt for it in items], [it.labels for it in items], pad))


def truncate(item: Rendered, max_length: int) -> Rendered:
    """Labels cut so that prompt + labels ≤ max_length (their start kept); none when the prompt fills it."""
    room = max(0, max_length - len(item.prompt))
    if room >= len(item.labels):
        return item
    return Rendered(item.prompt, item.labels[:room], item.starts[:room], item.ends[:room], item.content_bytes,
                    item.content_digest)


def shard_tensors(model: torch.nn.Module, records: list[Record], items: list[Rendered], k: int, batch_size: int,
                  pad: int) -> dict[str, torch.Tensor]:
    """The tensors of one shard (see the module docstring)."""
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in TOK_KEYS}
    order = [i for i, it in enumerate(items) if it.labels]
    stats: dict[int, dict[str, torch.Tensor]] = {}
    for b0 in range(0, len(order), batch_size):
        idx = order[b0: b0 + batch_size]
        batch = [items[i] for i in idx]
        hidden = _batch_hidden(model, batch, pad)
        labels = torch.tensor([t for it in batch for t in it.labels])
        st = token_stats(model, hidden, labels, k)
        at = 0
        for i in idx:
            n = len(items[i].labels)
            stats[i] = {name: v[at: at + n] for name, v in st.items()}
            at += n
    seq: dict[str, list[float | int]] = {n: [] for n in SEQ_KEYS}
    for i, (rec, it) in enumerate(zip(records, items, strict=True)):
        n = len(it.labels)
        st = stats.get(i) or {"ids": torch.zeros(0, k, dtype=torch.int32), "logprobs": torch.zeros(0, k),
                              "rest_logprob": torch.zeros(0), "label_logprob": torch.zeros(0)}
        for name in ("ids", "logprobs", "rest_logprob", "label_logprob"):
            parts[name].append(st[name])
        parts["labels"].append(torch.tensor(it.labels, dtype=torch.int32).reshape(n))
        parts["byte_start"].append(torch.tensor(it.starts, dtype=torch.int32).reshape(n))
        parts["byte_end"].append(torch.tensor(it.ends, dtype=torch.int32).reshape(n))
        nll = -st["label_logprob"].double()
        inside = torch.tensor(it.starts, dtype=torch.long).reshape(n) >= 0
        nbytes = int((torch.tensor(it.ends).reshape(n) - torch.tensor(it.starts).reshape(n))[inside].sum()) if n else 0
        seq["ce_token"].append(float(nll.mean()) if n else 0.0)
        seq["ce_byte"].append(float(nll[inside].sum() / nbytes) if nbytes else 0.0)
        seq["record_hash"].append(rec.digest)
        seq["record_line"].append(rec.line)
        seq["content_hash"].append(it.content_digest)
        seq["content_bytes"].append(it.content_bytes)
        seq["prompt_len"].append(len(it.prompt))
    out = {n: torch.cat(v).contiguous() for n, v in parts.items()}
    out["ids"] = out["ids"].reshape(-1, k)
    out["logprobs"] = out["logprobs"].reshape(-1, k)
    out["offsets"] = torch.tensor([0] + [len(it.labels) for it in items], dtype=torch.int64).cumsum(0)
    for n, v in seq.items():
        out[n] = torch.tensor(v, dtype=torch.float32 if n.startswith("ce_") else torch.int64)
    return out


def _fingerprint(model_path: str, model_hash: str, data: str, records: list[Record], st: RepSettings,
                 renderer: Renderer) -> dict[str, Any]:
    import hashlib

    h = hashlib.sha256(json.dumps([r.digest for r in records]).encode()).hexdigest()
    return {"format": REP_FORMAT, "model_hash": model_hash, "data_hash": h, "k": st.k, "max_length": st.max_length,
            "n_records": len(records), "chat_template": renderer.template,
            "records_per_shard": st.shard_records or RECORDS_PER_SHARD}


def _partial_dir(output: str | os.PathLike[str]) -> Path:
    return Path(str(output).rstrip("/") + ".partial")


def _prepare_partial(part: Path, fp: dict[str, Any], force: bool, main: bool) -> None:
    """Create or reuse the folder of finished shards; one made with other settings is an error (or wiped with force)."""
    from compress.checkpoint.atomic import replace_file

    state = part / "state.json"
    if part.exists() and main:
        try:
            old = json.loads(state.read_text())
        except (OSError, ValueError):
            old = None
        if old != fp:
            if not force and old is not None:
                raise CompressError(f"{part} holds shards of another run (other model, data or settings): "
                                    "remove it or pass --force")
            if old is None and any(part.iterdir()) and not force:
                raise CompressError(f"{part} exists and is not a compress partial representation: remove it")
            shutil.rmtree(part)
    if main:
        part.mkdir(parents=True, exist_ok=True)
        if not state.exists():
            replace_file(state, json.dumps(fp, indent=1))


def _save_shard_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    from compress.checkpoint.atomic import write_error
    from compress.checkpoint.lock import temp_name

    tmp = path.parent / temp_name(path.name)
    try:
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    except Exception as e:
        err = write_error(e, path)
        if err is not None:
            raise err from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def represent(model_path: str | os.PathLike[str], data: str | os.PathLike[str], output: str | os.PathLike[str],
              settings: RepSettings | None = None, *, device: str = "cpu", dtype: str = "auto",
              force: bool = False) -> dict[str, Any]:
    """`compress fuse represent`: write the representation folder of `model_path` on `data` (see module doc)."""
    from accelerate import PartialState

    from compress import progress
    from compress.checkpoint.atomic import atomic_dir, check_checkpoint_dir, check_output
    from compress.checkpoint.hashing import weights_hash as model_hash
    from compress.distill.teacher import vocab_hash
    from compress.model import load_model, load_tokenizer
    from compress.model.device import parse_device

    st = settings or RepSettings()
    if st.k < 1 or st.max_length < 2 or st.batch_size < 1:
        raise CompressError("--k and --batch-size must be at least 1 and --max-length at least 2")
    state = PartialState(cpu=parse_device(device).type == "cpu")
    main = state.is_main_process
    inputs = [str(model_path), str(data)]
    check_output(output, inputs, force, lock=main)  # the lock is held until atomic_dir commits
    part = check_checkpoint_dir(_partial_dir(output), inputs, output)
    if not (Path(model_path) / "config.json").is_file():
        raise CompressError(f"{model_path} is not a model folder (no config.json)")
    tok = load_tokenizer(model_path)
    renderer = Renderer(tok, Path(model_path).name)
    records = read_records(data, st.limit)
    mhash = model_hash(model_path)
    fp = _fingerprint(str(model_path), mhash, str(data), records, st, renderer)
    _prepare_partial(part, fp, force, main)
    state.wait_for_everyone()
    per = st.shard_records or RECORDS_PER_SHARD
    n_shards = (len(records) + per - 1) // per
    names = [f"shard-{s:05d}.safetensors" for s in range(n_shards)]
    mine = [s for s in range(n_shards) if s % state.num_processes == state.process_index and not (part / names[s]).exists()]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    if mine:
        model = load_model(model_path, state.device if state.num_processes > 1 else device, dtype)
        todo = sum(len(records[s * per: (s + 1) * per]) for s in mine)
        with progress.progress_bar(f"represent {Path(model_path).name}", todo) as adv:
            for s in mine:
                recs = records[s * per: (s + 1) * per]
                items = [truncate(renderer.render(r), st.max_length) for r in recs]
                tensors = shard_tensors(model, recs, items, st.k, st.batch_size, pad)
                _save_shard_file(tensors, part / names[s])
                adv(len(recs))
    state.wait_for_everyone()
    if not main:
        return {"output": str(output)}
    missing = [n for n in names if not (part / n).exists()]
    if missing:
        raise CompressError(f"{part} lacks {len(missing)} shards (e.g. {missing[0]}): run the command again to finish")
    rep = Rep.from_shards(part, names)
    empty = int((rep.offsets[1:] == rep.offsets[:-1]).sum())
    meta = {**fp, "model": str(model_path), "vocab_hash": vocab_hash(tok), "vocab_size": len(tok.get_vocab()),
            "data": str(data), **renderer.describe(), "temperature": 1.0, "shards": names,
            "tokens": int(rep.offsets[-1]), "records_without_labels": empty,
            "ce_token_mean": float(rep.seq["ce_token"].mean()), "ce_byte_mean": float(rep.seq["ce_byte"].mean())}
    with atomic_dir(output, inputs, force) as tmp:
        for n in names:
            shutil.copy2(part / n, tmp / n)
        (tmp / "rep.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(part, ignore_errors=True)
    return {"output": str(output), "records": len(records), "tokens": meta["tokens"], "k": st.k,
            "records_without_labels": empty, "chat_template": renderer.template_name,
            "ce_token_mean": meta["ce_token_mean"], "ce_byte_mean": meta["ce_byte_mean"]}


class Rep:
    """A representation folder in memory: per-token tensors and per-record tensors, concatenated over shards."""

    def __init__(self, tok: dict[str, torch.Tensor], seq: dict[str, torch.Tensor], offsets: torch.Tensor,
                 meta: dict[str, Any] | None = None, folder: Path | None = None):
        self.tok, self.seq, self.offsets, self.meta, self.folder = tok, seq, offsets, meta or {}, folder

    @classmethod
    def from_shards(cls, folder: Path, names: list[str], meta: dict[str, Any] | None = None) -> Rep:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        tok: dict[str, list[torch.Tensor]] = {n: [] for n in TOK_KEYS}
        seq: dict[str, list[torch.Tensor]] = {n: [] for n in SEQ_KEYS}
        lens: list[torch.Tensor] = []
        for name in names:
            try:
                sh = load_file(str(folder / name))
            except (OSError, SafetensorError) as e:
                raise CompressError(f"cannot read the representation shard {folder / name}: {e}") from None
            lack = (set(TOK_KEYS) | set(SEQ_KEYS) | {"offsets"}) - set(sh)
            if lack:
                raise CompressError(f"{folder / name} lacks {', '.join(sorted(lack))}: it is not a representation shard")
            for n in TOK_KEYS:
                tok[n].append(sh[n])
            for n in SEQ_KEYS:
                seq[n].append(sh[n])
            lens.append(sh["offsets"].diff())
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cat(lens).cumsum(0)])
        return cls({n: torch.cat(v) for n, v in tok.items()}, {n: torch.cat(v) for n, v in seq.items()}, offsets,
                   meta, folder)

    @property
    def n_records(self) -> int:
        return len(self.offsets) - 1

    def span(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))


def read_rep(folder: str | os.PathLike[str]) -> Rep:
    """Load a representation folder written by `represent`, checking its format."""
    p = Path(folder)
    meta_file = p / "rep.json"
    if not meta_file.is_file():
        hint = " (an unfinished run: run `compress fuse represent` again)" if _partial_dir(p).exists() else ""
        raise CompressError(f"{folder} is not a representation (no rep.json): make one with `compress fuse represent`{hint}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CompressError(f"{meta_file} is not readable: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != REP_FORMAT:
        raise CompressError(f"{folder} is not a representation of format {REP_FORMAT} (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    return Rep.from_shards(p, list(meta["shards"]), meta)
