"""`compress fuse train`: train the pivot on its data with fused source distributions (FuseLLM / FuseChat).

    L = λ · CE(gold) + (1 − λ) · L_fuse(P_fused, Q_θ)

run by the `compress distill train` loop (method `kd` with w_sft = λ, w_distill = 1 − λ; the fused
targets are its teacher signal), so precision, gradient accumulation, schedules, step checkpoints
and --resume, evaluation and `accelerate launch` are the distill loop's. The targets stay sparse:
per label at most C·k (id, log p) slots, never a vocabulary-wide row.

Inputs are checked before any work: the pivot representation was made by PIVOT from the same data
(every record's labels are re-rendered and compared), every aligned source was aligned to that
representation. Records without labels (the prompt fills --max-length) are skipped and counted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from compress.errors import CompressError
from compress.fuse.fusion import CE_UNITS, Candidate, FusedTargets
from compress.fuse.represent import Rep, read_rep, truncate

FUSION_LOSSES = {"ce": "topk_soft_ce", "kl": "rest"}


class FusedTeacher:
    """The distill loop's teacher signal: the fused target rows of each example's record."""

    def __init__(self, targets: FusedTargets, record_of: list[int], labels: torch.Tensor, offsets: torch.Tensor):
        self.targets, self.record_of, self.labels, self.offsets = targets, record_of, labels, offsets
        self.has_ref = False

    def set_step(self, step: int) -> None:
        """The optimizer step about to run (the ProFuser schedule reads it)."""
        if self.targets.progressive is not None:
            self.targets.progressive.step = step

    def signals(self, examples, batch, slot: str):
        from compress.distill.teacher import Signals

        parts = [self.targets.record(self.record_of[ex.index]) for ex in examples]
        want = torch.cat([self.labels[int(self.offsets[self.record_of[ex.index]]): int(self.offsets[self.record_of[ex.index] + 1])]
                          for ex in examples]).long()
        if not torch.equal(want, batch.targets.cpu()):
            raise CompressError("the fused targets do not match the batch's response tokens")
        return Signals(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                       torch.cat([p[2] for p in parts]))


def _check_pivot(pivot: str, rep: Rep) -> None:
    from compress.checkpoint.hashing import weights_hash as model_hash

    if rep.meta.get("model_hash") != model_hash(pivot):
        raise CompressError(f"{rep.folder} was made by {rep.meta.get('model')}, not by {pivot}: "
                            "run `compress fuse represent` with the pivot")


def _dataset(pivot: str, data: str, rep: Rep, tok):
    """The pivot's rendering of `data` as distill examples (chosen = the labels), checked against `rep`."""
    from compress.data.preference import PreferenceData, PreferenceExample
    from compress.fuse.aligned import check_same_records
    from compress.fuse.records import Renderer, read_records

    records = read_records(data, rep.meta.get("n_records"))
    renderer = Renderer(tok, Path(pivot).name)
    here = Rep({}, {"record_hash": torch.tensor([r.digest for r in records]),
                    "record_line": torch.tensor([r.line for r in records])}, torch.zeros(len(records) + 1),
               {"data": str(data)})
    check_same_records(here, rep, str(data), str(rep.folder))
    if renderer.template != rep.meta.get("chat_template"):
        raise CompressError(f"{rep.folder} was made with another chat template than {pivot}'s")
    examples, record_of, skipped = [], [], 0
    for i, rec in enumerate(records):
        item = truncate(renderer.render(rec), int(rep.meta["max_length"]))
        span = rep.span(i)
        if item.labels != rep.tok["labels"][span].tolist():
            raise CompressError(f"record {i} (line {rec.line}) of {data} tokenises differently from {rep.folder}: "
                                "make the representation again with this pivot")
        if not item.labels:
            skipped += 1
            continue
        examples.append(PreferenceExample(len(examples), rec.line, item.prompt, {"chosen": item.labels}))
        record_of.append(i)
    if not examples:
        raise CompressError(f"{data}: no record has a response token within --max-length {rep.meta['max_length']} "
                            f"({skipped} skipped)")
    opts = {"max_length": rep.meta["max_length"], "fuse": True}
    return PreferenceData(examples, 0, str(data), opts), record_of, skipped


def _candidates(pivot_rep: Rep, sources: list[str], ce_unit: str, with_pivot: bool) -> list[Candidate]:
    from compress.fuse.aligned import read_aligned

    key = "ce_" + ce_unit
    cands = []
    if with_pivot:
        t = pivot_rep.tok
        cands.append(Candidate("pivot", t["ids"].long(), t["logprobs"].float(), t["rest_logprob"].float(),
                               pivot_rep.seq[key].float()))
    for s in sources:
        meta, t = read_aligned(s)
        if meta.get("pivot_data_hash") != pivot_rep.meta.get("data_hash") or not torch.equal(
                t["record_hash"], pivot_rep.seq["record_hash"]):
            raise CompressError(f"{s} was aligned to a representation of other data than {pivot_rep.folder}")
        if meta.get("pivot_model_hash") != pivot_rep.meta.get("model_hash") or not torch.equal(
                t["labels"], pivot_rep.tok["labels"]):
            raise CompressError(f"{s} was aligned to another pivot representation than {pivot_rep.folder}")
        cands.append(Candidate(Path(s).name, t["ids"].long(), t["logprobs"].float(), t["rest_logprob"].float(),
                               t[key].float()))
    return cands


def fuse_train(pivot: str | os.PathLike[str], data: str | os.PathLike[str], output: str | os.PathLike[str], *,
               pivot_rep: str, sources: list[str], fusion: str = "min-ce", lam: float = 0.9,
               ce_unit: str | None = None, loss: str = "ce", with_pivot: bool = True,
               select: str = "mince", scorer=None, infer_fraction: float = 0.3, gen_tokens: int = 256,
               force: bool = False, device: str = "cpu", resume: bool = False, checkpoint_dir: str | None = None,
               **options: Any) -> dict[str, Any]:
    """Train PIVOT into a fused target (see the module docstring); `options` are distill's DistillConfig fields."""
    from compress import progress
    from compress.checkpoint.atomic import check_output
    from compress.distill.train import DistillConfig
    from compress.distill.train import train as distill_train
    from compress.model import load_tokenizer

    if not 0.0 <= lam <= 1.0:
        raise CompressError(f"--lam must lie in [0, 1], got {lam}")
    if loss not in FUSION_LOSSES:
        raise CompressError(f"unknown fusion loss {loss!r}: choose one of {', '.join(FUSION_LOSSES)}")
    if not sources and not with_pivot:
        raise CompressError("give at least one --source (or keep the pivot as a candidate)")
    inputs = [str(pivot), str(data), str(pivot_rep), *map(str, sources)]
    check_output(output, inputs, force)
    rep = read_rep(pivot_rep)
    _check_pivot(str(pivot), rep)
    tok = load_tokenizer(pivot)
    heterogeneous = False
    for s in sources:
        from compress.fuse.aligned import read_aligned

        heterogeneous |= not read_aligned(s)[0]["report"].get("same_vocabulary", False)
    unit = ce_unit or ("byte" if heterogeneous else "token")
    if unit not in CE_UNITS:
        raise CompressError(f"unknown --ce-unit {unit!r}: choose token or byte")
    if unit == "token" and heterogeneous:
        progress.warn("--ce-unit token compares CE per token across different tokenizers; byte is comparable")
    ds, record_of, skipped = _dataset(str(pivot), str(data), rep, tok)
    if skipped:
        progress.warn(f"skipped {skipped} records with no response token within --max-length {rep.meta['max_length']}")
    cands = _candidates(rep, list(sources), unit, with_pivot)
    targets = FusedTargets(cands, rep.offsets, fusion)
    report = None
    if select == "progressive":
        targets, report = _progressive(targets, cands, str(pivot), list(sources), with_pivot, str(data), scorer,
                                       infer_fraction, gen_tokens, device, _total_steps(len(ds.examples), options))
    elif select != "mince":
        raise CompressError(f"unknown --select {select!r}: choose mince or progressive")
    teacher = FusedTeacher(targets, record_of, rep.tok["labels"], rep.offsets)
    cfg = DistillConfig(method="kd", w_sft=lam, w_distill=1.0 - lam, missing_mass=FUSION_LOSSES[loss],
                        kd_direction="forward", max_length=int(rep.meta["max_length"]), **options)
    fuse_recipe = {"fusion": fusion, "lam": lam, "ce_unit": unit, "loss": loss, "pivot_candidate": with_pivot,
                   "pivot_rep": str(pivot_rep), "sources": [str(s) for s in sources],
                   "records_skipped_no_labels": skipped, "chosen_by_mince": targets.chosen_counts(),
                   "select": select, **({"profuser": report} if report else {})}
    result = distill_train(pivot, data, output, cfg, force=force, device=device, resume=resume,
                           checkpoint_dir=checkpoint_dir, dataset=ds, signal=teacher, inputs_extra=inputs[2:],
                           recipe_extra={"fuse": fuse_recipe}, tags=("fuse",), method_name=f"fuse-{fusion}")
    return {**result, **fuse_recipe}


def _total_steps(n_examples: int, options: dict[str, Any]) -> int:
    """Optimizer steps of the run, as the distill loop counts them."""
    import math

    if options.get("max_steps"):
        return int(options["max_steps"])
    n_train = n_examples - min(int(options.get("eval_pairs", 0) or 0), n_examples - 1)
    per_epoch = max(1, math.ceil(math.ceil(n_train / int(options.get("batch_size", 2))) / int(options.get("grad_accum", 1))))
    return per_epoch * int(options.get("epochs", 1))


def _progressive(targets: FusedTargets, cands: list[Candidate], pivot: str, sources: list[str], with_pivot: bool,
                 data: str, scorer, infer_fraction: float, gen_tokens: int, device: str, total: int):
    """ProFuser: every candidate answers every prompt greedily, the scorer picks the inference-mode model."""
    from compress.fuse.aligned import read_aligned
    from compress.fuse.profuser import (
        Progressive,
        answers_for,
        disagreement,
        inference_choice,
        score_candidates,
    )
    from compress.fuse.records import read_records

    if scorer is None:
        raise CompressError("--select progressive needs a --scorer (gsm8k, choice, a DPO model pair or a reward model)")
    if isinstance(scorer, str):
        scorer = make_scorer(scorer, device)
    if not 0.0 <= infer_fraction <= 1.0:
        raise CompressError(f"--infer-fraction must lie in [0, 1], got {infer_fraction}")
    records = read_records(data, int(targets.offsets.numel() - 1))
    models = ([pivot] if with_pivot else []) + [read_aligned(s)[0]["source_model"] for s in sources]
    answers = [answers_for(m, records, gen_tokens, 4, device) for m in models]
    scores = score_candidates(scorer, records, answers)
    infer = inference_choice(scores, targets.choice)
    out = FusedTargets(cands, targets.offsets, "min-ce", infer, Progressive(total, infer_fraction))
    report = {**disagreement(infer, targets.choice, [c.name for c in cands]), "scorer": getattr(scorer, "name", str(scorer)),
              "switch_step": out.progressive.switch, "mean_scores": scores.mean(0).tolist()}
    return out, report


def make_scorer(spec: str, device: str = "cpu"):
    """A scorer from its command-line spelling: gsm8k, choice, closest, rm:FOLDER, or implicit:DPO_MODEL,REFERENCE."""
    from compress.fuse import scorers

    if spec in scorers.VERIFIERS:
        return scorers.make_verifier(spec)
    if spec.startswith("rm:"):
        return scorers.RewardModel(spec[3:], device=device)
    if spec.startswith("implicit:") and "," in spec:
        dpo, ref = spec[len("implicit:"):].split(",", 1)
        return scorers.ImplicitReward(dpo, ref, device=device)
    raise CompressError(f"unknown scorer {spec!r}: gsm8k, choice, closest, rm:FOLDER or implicit:DPO_MODEL,REFERENCE")
