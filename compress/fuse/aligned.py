"""`compress fuse align`: a source's representation turned into sparse targets over the pivot's tokens.

For every pivot label row of the pivot representation: the source distribution that predicted the
source token starting at the same byte (`align.align_spans`), its top-k ids mapped to pivot ids
(`vocabmap.VocabMap`), lost mass added to the rest bucket and duplicates merged
(`sparse.merge_duplicates`); every other row a one-hot on the pivot's own label (its next token).

The folder (ALIGNED): `aligned.safetensors` with per row `ids` int32 [N, k], `logprobs` fp32 [N, k],
`rest_logprob` fp32 [N], `labels` int32 [N] (the pivot's), `kind` int8 [N] (`align.KINDS`), `from_source`
bool [N]; per record `offsets`, `record_hash`, and the source's `ce_token` / `ce_byte`.
`vocab_map.safetensors`: the computed part of the map. `align.json`: inputs, settings and the report.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.errors import CompressError
from compress.fuse.align import KINDS, ONE_TO_ONE, Alignment, align_spans, align_texts, coverage_counts
from compress.fuse.represent import Rep, read_rep
from compress.fuse.sparse import NEG_INF, merge_duplicates, onehot
from compress.fuse.vocabmap import EDIT, EXACT, VocabMap

ALIGNED_FORMAT = "compress-fuse-aligned/1"


def check_same_records(a: Rep, b: Rep, name_a: str, name_b: str) -> None:
    """Refuse representations of different records (or orders), naming the first differing record."""
    ha, hb = a.seq["record_hash"], b.seq["record_hash"]
    n = min(len(ha), len(hb))
    diff = torch.nonzero(ha[:n] != hb[:n])
    if len(diff):
        i = int(diff[0])
        raise CompressError(f"{name_a} and {name_b} were made from different data: record {i} (line "
                            f"{int(a.seq['record_line'][i])} of {a.meta.get('data')}, line {int(b.seq['record_line'][i])} "
                            f"of {b.meta.get('data')}) differs; make both from the same file")
    if len(ha) != len(hb):
        raise CompressError(f"{name_a} has {len(ha)} records and {name_b} {len(hb)}: make both from the same file "
                            "with the same --limit")


def view_of(rep: Rep, what: str):
    """The TokenizerView of the model a representation was made by (its tokenizer must still be there)."""
    from compress.distill.teacher import vocab_hash
    from compress.fuse.tokens import TokenizerView
    from compress.model import load_tokenizer

    path = rep.meta.get("model")
    if not path or not Path(path).is_dir():
        raise CompressError(f"the {what} representation {rep.folder} names the model {path!r}, which is not a folder")
    if not any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise CompressError(f"{path} (the {what} model) has no tokenizer files: alignment needs its tokenizer")
    tok = load_tokenizer(path)
    if vocab_hash(tok) != rep.meta.get("vocab_hash"):
        raise CompressError(f"the tokenizer of {path} is not the one {rep.folder} was made with (its vocabulary changed)")
    return TokenizerView(tok, Path(path).name)


def _alignments(piv: Rep, src: Rep, pview, sview, same_vocab: bool) -> tuple[np.ndarray, np.ndarray]:
    """Global source row (−1: none) and kind for every pivot row. A source with the pivot's vocabulary and
    the same tokens of a record is aligned row for row, special tokens included (FuseChat's
    `replace_model.py` for same-vocabulary sources)."""
    pt, st = piv.tok, src.tok
    p_s, p_e = pt["byte_start"].numpy(), pt["byte_end"].numpy()
    s_s, s_e = st["byte_start"].numpy(), st["byte_end"].numpy()
    rows = np.full(len(p_s), -1, np.int64)
    kinds = np.zeros(len(p_s), np.int8)
    same_text = (piv.seq["content_hash"] == src.seq["content_hash"]).tolist()
    for i in range(piv.n_records):
        a, b = int(piv.offsets[i]), int(piv.offsets[i + 1])
        c, d = int(src.offsets[i]), int(src.offsets[i + 1])
        if same_vocab and b - a == d - c and torch.equal(pt["labels"][a:b], st["labels"][c:d]):
            rows[a:b] = np.arange(c, d)
            kinds[a:b] = ONE_TO_ONE
            continue
        if same_text[i]:
            ali = align_spans(p_s[a:b], p_e[a:b], s_s[c:d], s_e[c:d])
        else:
            ptoks = [pview.token_bytes(int(t)) for t in pt["labels"][a:b]]
            stoks = [sview.token_bytes(int(t)) for t in st["labels"][c:d]]
            ali = align_texts(ptoks, p_s[a:b], p_e[a:b], stoks, s_s[c:d], s_e[c:d])
        rows[a:b] = np.where(ali.src >= 0, ali.src + c, -1)
        kinds[a:b] = ali.kind
    return rows, kinds


def mapped_rows(ids: torch.Tensor, logprobs: torch.Tensor, rest: torch.Tensor, vmap: VocabMap
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
    """Source top-k rows in pivot ids: lost slots leave their mass to the rest, duplicates merged.
    Also the top-k probability mass by route (lost, exact, edit), summed over the rows."""
    pid, route = vmap.lookup(ids.numpy())
    pid_t, route_t = torch.from_numpy(pid), torch.from_numpy(route.astype(np.int64))
    lost = pid_t < 0
    p = logprobs.exp()
    mass = {"lost": float(p[lost].sum()), "exact": float(p[(route_t == EXACT) & ~lost].sum()),
            "edit": float(p[(route_t == EDIT) & ~lost].sum())}
    new_rest = torch.logaddexp(rest, torch.logsumexp(logprobs.masked_fill(~lost, NEG_INF), -1))
    # a lost slot keeps a harmless id (0) with no mass
    out_ids, out_lp = merge_duplicates(pid_t.clamp(min=0), logprobs.masked_fill(lost, NEG_INF))
    return out_ids, out_lp, new_rest, mass


def build_aligned(piv: Rep, src: Rep, pview, sview, kind: str = "mined") -> tuple[dict[str, torch.Tensor], dict, VocabMap]:
    """The aligned target tensors and the report (see the module docstring)."""
    from compress.distill.teacher import vocab_hash

    same_vocab = vocab_hash(pview.tokenizer) == vocab_hash(sview.tokenizer)
    vmap = VocabMap(pview, sview, kind, same_vocab)
    t0 = time.perf_counter()
    rows, kinds = _alignments(piv, src, pview, sview, same_vocab)
    t_align = time.perf_counter() - t0
    has = torch.from_numpy(rows >= 0)
    srow = torch.from_numpy(rows[rows >= 0])
    p_labels = piv.tok["labels"].long()
    if kind == "ms":
        vmap.observe(src.tok["labels"][srow].numpy(), p_labels[has].numpy())
    k = src.tok["ids"].shape[1]
    ids, lp, rest = onehot(p_labels, k)
    mass = {"lost": 0.0, "exact": 0.0, "edit": 0.0}
    if len(srow):
        mi, ml, mr, mass = mapped_rows(src.tok["ids"][srow].long(), src.tok["logprobs"][srow].float(),
                                       src.tok["rest_logprob"][srow].float(), vmap)
        ids[has], lp[has], rest[has] = mi, ml, mr
    total_mass = sum(mass.values()) or 1.0
    counts = coverage_counts(Alignment(rows, kinds))
    n = max(len(rows), 1)
    table = vmap.table()
    report = {
        "pivot_tokens": len(rows), "records": piv.n_records, "vocab_map": kind, "same_vocabulary": same_vocab,
        "coverage": {name: counts[name] / n for name in KINDS},
        "with_source_distribution": counts["with_source"] / n,
        "topk_mass": {name: mass[name] / total_mass for name in ("exact", "edit", "lost")},
        "source_tokens_mapped": {"exact": int(((table["routes"] == EXACT) & (table["pivot_ids"] >= 0)).sum()),
                                 "edit": int((table["routes"] == EDIT).sum()),
                                 "lost": int((table["pivot_ids"] < 0).sum())},
        "align_seconds": t_align,
    }
    tensors = {"ids": ids.to(torch.int32), "logprobs": lp.float(), "rest_logprob": rest.float(),
               "labels": p_labels.to(torch.int32), "kind": torch.from_numpy(kinds), "from_source": has,
               "offsets": piv.offsets.clone(), "record_hash": piv.seq["record_hash"].clone(),
               "ce_token": src.seq["ce_token"].clone(), "ce_byte": src.seq["ce_byte"].clone()}
    return tensors, report, vmap


def align(pivot_rep: str | os.PathLike[str], source_rep: str | os.PathLike[str], output: str | os.PathLike[str],
          vocab_map: str = "mined", force: bool = False) -> dict[str, Any]:
    """`compress fuse align`: write ALIGNED and return its report."""
    from safetensors.torch import save_file

    from compress.checkpoint.atomic import atomic_dir, check_output

    inputs = [str(pivot_rep), str(source_rep)]
    check_output(output, inputs, force)
    piv, src = read_rep(pivot_rep), read_rep(source_rep)
    check_same_records(piv, src, str(pivot_rep), str(source_rep))
    if piv.meta.get("k") != src.meta.get("k"):
        raise CompressError(f"{pivot_rep} has top-{piv.meta.get('k')} and {source_rep} top-{src.meta.get('k')}: "
                            "make both with the same --k")
    pview, sview = view_of(piv, "pivot"), view_of(src, "source")
    t0 = time.perf_counter()
    tensors, report, vmap = build_aligned(piv, src, pview, sview, vocab_map)
    report["seconds"] = time.perf_counter() - t0
    report["tokens_per_second"] = report["pivot_tokens"] / max(report["seconds"], 1e-9)
    meta = {"format": ALIGNED_FORMAT, "pivot_rep": str(pivot_rep), "source_rep": str(source_rep),
            "pivot_model": piv.meta.get("model"), "pivot_model_hash": piv.meta.get("model_hash"),
            "source_model": src.meta.get("model"), "source_model_hash": src.meta.get("model_hash"),
            "pivot_data_hash": piv.meta.get("data_hash"), "k": src.meta.get("k"), "vocab_map": vocab_map,
            "report": report}
    table = {n: torch.from_numpy(np.ascontiguousarray(v)) for n, v in vmap.table().items()}
    with atomic_dir(output, inputs, force) as tmp:
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp / "aligned.safetensors"))
        save_file(table, str(tmp / "vocab_map.safetensors"))
        (tmp / "align.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {"output": str(output), **report}


def read_aligned(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(align.json, tensors) of an ALIGNED folder, checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(folder)
    try:
        meta = json.loads((p / "align.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CompressError(f"{folder} is not an aligned source (no readable align.json): make it with "
                            "`compress fuse align`") from None
    if not isinstance(meta, dict) or meta.get("format") != ALIGNED_FORMAT:
        raise CompressError(f"{folder} is not an aligned source of format {ALIGNED_FORMAT}")
    try:
        tensors = load_file(str(p / "aligned.safetensors"))
    except (OSError, SafetensorError) as e:
        raise CompressError(f"cannot read {p / 'aligned.safetensors'}: {e}") from None
    return meta, tensors
