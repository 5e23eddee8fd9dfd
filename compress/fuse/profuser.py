"""ProFuser (Shi et al. 2024, arXiv 2408.04998): progressive choice of the advantageous model per example.

FuseLLM judges the candidates only in *training mode*: teacher-forced CE on the gold response (MinCE).
ProFuser adds *inference mode*: each candidate answers the prompt itself (greedy here) and a scorer
judges the answers — a verifier (GSM8K number, multiple-choice letter), the implicit reward
log π_dpo − log π_ref of a DPO model, or a reward-model folder (`compress.fuse.scorers`). Training
moves from inference mode to training mode (easy to hard):

    stage 1 (the first `infer_fraction` of the steps):  L_fuse over P_infer          (w1, w2) = (1, 0)
    stage 2:                                            L_fuse over 0.1·P_infer + P_train, /1.1   (0.1, 1)

with P_mode the chosen candidate's aligned distributions over the gold response (the generated
answers only judge; the paper's exact loss on the generated text, β, the stage lengths and the
reward models are not public, so they are settings here). Inference-mode ties between equally
scored answers go to the training-mode choice, then to the first candidate (the pivot).
The report counts how often the two modes choose different models.
"""

from __future__ import annotations

from typing import Any

import torch

STAGE2_WEIGHTS = (0.1, 1.0)  # (w1, w2) after the switch, as the paper's schedule


def inference_choice(scores: torch.Tensor, mince: torch.Tensor) -> torch.Tensor:
    """Per record, the candidate whose own answer scored best [R]; ties to the MinCE choice, then the lowest index.

    scores [R, C] (higher is better), mince [R]."""
    best = scores.max(dim=-1, keepdim=True).values
    top = scores == best
    first = top.float().argmax(dim=-1)
    keep_mince = top.gather(-1, mince[:, None])[:, 0]
    return torch.where(keep_mince, mince, first)


def disagreement(infer: torch.Tensor, train: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """How often the two modes pick different models, and the pick counts of each mode."""
    n = max(len(infer), 1)
    return {"records": len(infer), "disagree": int((infer != train).sum()),
            "disagree_share": float((infer != train).sum()) / n,
            "inference_mode": {c: int((infer == i).sum()) for i, c in enumerate(names)},
            "training_mode": {c: int((train == i).sum()) for i, c in enumerate(names)}}


def answers_for(model_path: str, records, max_new_tokens: int, batch_size: int, device: str) -> list[str]:
    """Greedy answers of one candidate to the prompts of `records` (its own chat rendering)."""
    from compress.fuse.records import Renderer
    from compress.model import load_model, load_tokenizer
    from compress.model.generate import generate_responses

    tok = load_tokenizer(model_path)
    r = Renderer(tok, str(model_path))
    prompts = [r.render(rec).prompt for rec in records]
    model = load_model(model_path, device, "auto")
    return generate_responses(model, tok, prompts, max_new_tokens, batch_size, temperature=0.0)


def score_candidates(scorer, records, answers: list[list[str]]) -> torch.Tensor:
    """scores [R, C] of every candidate's answer (answers[c][r]) by `scorer` (check/score protocol)."""
    prompts = [rec.prompt if rec.prompt is not None else rec.text for rec in records]
    refs = [rec.response for rec in records]
    scorer.check(refs)
    cols = [scorer.score(prompts, a, refs) for a in answers]
    return torch.tensor(cols, dtype=torch.float64).T


class Progressive:
    """The stage of a ProFuser run from the optimizer step: inference mode, then both modes mixed."""

    def __init__(self, total_steps: int, infer_fraction: float):
        self.switch = int(round(total_steps * infer_fraction))
        self.step = 0

    def weights(self) -> tuple[float, float]:
        """(w_infer, w_train) normalised to sum 1."""
        if self.step < self.switch:
            return 1.0, 0.0
        w1, w2 = STAGE2_WEIGHTS
        return w1 / (w1 + w2), w2 / (w1 + w2)
