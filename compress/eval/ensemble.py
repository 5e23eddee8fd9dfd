"""A Cool-Fusion ensemble as one row of `compress eval`: lm-eval's generation tasks through `FusedLM`."""

from __future__ import annotations

from typing import Any

from compress.errors import CompressError
from compress.fuse.cool_fusion import CoolFusionDecoder
from compress.fuse.lm_eval_model import FUSIONS, FusedLM


def ensemble_label(members: list[str], labels: list[str], fusion: str) -> str:
    return f"{fusion}({'+'.join(labels)})"


def score_ensemble(members: list[str], labels: list[str], fusion: str, lm_tasks: list[Any], *, device: str,
                   dtype: str, limit: int | None, num_fewshot: int | None, seed: int, chat_template: bool,
                   max_gen_toks: int | None) -> dict[str, Any]:
    """One `compress eval` record for the fused decoder of `members`: the lm-eval results of its generation
    tasks, with the segment wins per model (`backed`: co-proposers credited too) and (with +R) what the
    rerank chose."""
    from compress.eval.harness import run_lm_eval
    from compress.model.load import load
    from compress.progress import info

    if fusion not in FUSIONS:
        raise CompressError(f"unknown --fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
    label = ensemble_label(members, labels, fusion)
    info(f"[{label}] loading {', '.join(members)}")
    loaded = [load(m, device, dtype) for m in members]
    dec = CoolFusionDecoder(loaded, names=labels, chat=False)
    lm = FusedLM(dec, rerank=fusion.endswith("+r"), max_gen_toks=max_gen_toks or 256)
    info(f"[{label}] lm-eval: {', '.join(t.task for t in lm_tasks)}" + (f" (limit {limit})" if limit else ""))
    results = run_lm_eval(None, None, lm_tasks, limit=limit, num_fewshot=num_fewshot, seed=seed,
                          chat_template=chat_template, max_gen_toks=max_gen_toks, lm=lm)
    contested = sum(sum(r["wins"].values()) for r in lm.records)
    segments = sum(r["segments"] for r in lm.records)
    rec: dict[str, Any] = {
        "name": label, "path": [str(m) for m in members], "fusion": fusion, "parameters": None,
        "size_on_disk": None, "family": "ensemble",
        "loaded_parameters": sum(sum(t.numel() for t in m.parameters()) for m, _ in loaded),
        "results": {t: r.as_dict() for t, r in results.items()},
        "fusion_stats": {"segments": segments, "agreed": segments - contested,
                         "wins": {n: sum(r["wins"][n] for r in lm.records) for n in labels},
                         "backed": {n: sum(r["backed"][n] for r in lm.records) for n in labels}}}
    if lm.rerank:
        rec["fusion_stats"]["rerank_chosen"] = {k: sum(r.get("rerank_chosen") == k for r in lm.records)
                                                for k in ["fused", *labels]}
    return rec
