"""Distillation and preference losses: small pure functions over tensors.

Conventions:
- Student logits are given only at response positions, flattened to rows: `logits` [N, V] fp32 where
  row n predicts response token `targets[n]`. Nothing here ever sees prompt positions.
- A teacher distribution at a position is k+1 buckets, as in the ADPA/DCKD code: its top-k ids `ids`
  [N, k], their log-probabilities `logprobs` [N, k] and the log of the remaining mass `rest` [N].
- Per-token functions return [N]; callers take the token mean (DCKD/ADPA reduction: a token mean over
  the micro-batch, not a per-sequence mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from compress.distill.registry import ADVANTAGE_CLIPS, DPO_LOSS_TYPES, KD_DIRECTIONS, MISSING_MASS

PROB_EPS = 1e-8  # probabilities are clamped to [eps, 1 - eps] before logs, as the ADPA code does
LOG_EPS = math.log(PROB_EPS)
LOG_ONE_MINUS_EPS = math.log1p(-PROB_EPS)
ADV_FLOOR = 1e-7  # ADPA advantage: probabilities floored at 1e-7 (merge_logits_adpa_dataset.py)

__all__ = ["ADVANTAGE_CLIPS", "DPO_LOSS_TYPES", "KD_DIRECTIONS", "MISSING_MASS"]  # re-exported choices


def _clamp_log(lp: torch.Tensor) -> torch.Tensor:
    return lp.clamp(LOG_EPS, LOG_ONE_MINUS_EPS)


def sft_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning: token-mean cross-entropy −(1/N) Σ_n log softmax(z_n)[y_n] on the response."""
    return F.cross_entropy(logits.float(), targets, reduction="mean")


def topk_from_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher signal: top-k ids, their log-probabilities and the log of the remaining mass.

    log p_rest = logsumexp(z over the complement of K) − logsumexp(z), never log(1 − Σ p_i).
    Returns (ids int64 [N, k], logprobs fp32 [N, k], rest fp32 [N]; −inf when k = V).
    """
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1)
    k = min(k, z.shape[-1])
    top, ids = torch.topk(z, k, dim=-1)
    masked = z.scatter(-1, ids, float("-inf"))
    rest = torch.logsumexp(masked, dim=-1) - lse
    return ids, top - lse.unsqueeze(-1), rest


def fold_out_of_vocab(ids: torch.Tensor, logprobs: torch.Tensor, rest: torch.Tensor, vocab: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher ids at or above the student's row count (padded embedding rows) join the rest bucket.

    Returns (ids with those slots set to 0, logprobs with those slots −inf, rest, valid mask), as the ADPA
    code's `out_vocab_mask` does (Qwen2.5's embeddings have 152,064 rows for 151,665 real tokens).
    """
    valid = ids < vocab
    if bool(valid.all()):
        return ids, logprobs, rest, valid
    extra = torch.logsumexp(logprobs.masked_fill(valid, float("-inf")), dim=-1)
    rest = torch.logaddexp(rest, extra)
    return ids.masked_fill(~valid, 0), logprobs.masked_fill(~valid, float("-inf")), rest, valid


def student_buckets(logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Student log-probabilities on the teacher's k+1 buckets: (log q_i at ids [N, k], log q_rest [N]).

    log q_rest = logsumexp(z restricted to the complement of K_t) − logsumexp(z), never log(1 − Σ q_i),
    which cancels badly when the top-k hold almost all the mass.
    Slots where `valid` is False are excluded from K_t (their log q is −inf).
    """
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    lq = z.gather(-1, ids) - lse
    if valid is None:
        valid = torch.ones_like(ids, dtype=torch.bool)
    hits = torch.zeros_like(z).scatter_add(-1, ids, valid.to(z.dtype))
    keep = hits == 0  # True on the complement of the (valid) top-k ids
    rest = torch.logsumexp(z.masked_fill(~keep, float("-inf")), dim=-1) - lse.squeeze(-1)
    return lq.masked_fill(~valid, float("-inf")), rest


def _kl(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """Σ_i p_i (log p_i − log q_i) over the last axis, logs clamped, zero-mass buckets contribute 0."""
    p = lp.exp()
    return (p * (_clamp_log(lp) - _clamp_log(lq))).sum(-1)


def bucket_divergence(lp: torch.Tensor, lq: torch.Tensor, direction: str = "forward", beta: float = 0.5
                      ) -> torch.Tensor:
    """Divergence between two distributions given as log-probabilities over the same buckets [N, B].

    forward: KL(p‖q); reverse: KL(q‖p); jsd: generalised JSD of TRL GKD (Agarwal et al. 2024,
    "On-policy distillation of language models"): with m = β·p + (1−β)·q,
    β·KL(p‖m) + (1−β)·KL(q‖m); β = 0 is forward KL and β = 1 reverse KL, as in TRL.
    Returns [N].
    """
    if direction == "forward" or (direction == "jsd" and beta == 0.0):
        return _kl(lp, lq)
    if direction == "reverse" or (direction == "jsd" and beta == 1.0):
        return _kl(lq, lp)
    if direction != "jsd":
        raise ValueError(f"unknown KD direction {direction!r}: choose one of {', '.join(KD_DIRECTIONS)}")
    lm = torch.logsumexp(torch.stack([lp + math.log(beta), lq + math.log(1 - beta)]), dim=0)
    return beta * _kl(lp, lm) + (1 - beta) * _kl(lq, lm)


def retarget_temperature(logprobs: torch.Tensor, rest: torch.Tensor, alpha: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-target cached log-probs captured at T_c to T_d: p^α / Σ p^α with α = T_c / T_d (DistillKit
    `get_target_logprobs`). The rest bucket is treated as one lump, so this is approximate."""
    if alpha == 1.0:
        return logprobs, rest
    allp = torch.cat([logprobs, rest.unsqueeze(-1)], -1) * alpha
    allp = allp - torch.logsumexp(allp, -1, keepdim=True)
    return allp[..., :-1], allp[..., -1]


def topk_kd_tokens(logits: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor, rest: torch.Tensor,
                   direction: str = "forward", beta: float = 0.5, missing_mass: str = "rest",
                   temperature: float = 1.0) -> torch.Tensor:
    """Token-level KD from a top-k teacher to the student, per response token [N].

    missing_mass 'rest': divergence over the k+1 buckets (ADPA/DCKD code); 'zero': teacher renormalised
    over K_t, student's log-probs at K_t from its full softmax, no rest bucket (DistillKit `zero`);
    'topk_soft_ce': soft cross-entropy −Σ_{i∈K} p̃_i log q_i with p̃ the teacher renormalised over K_t
    (FuseLLM).

    `temperature` T divides the student logits and re-targets the teacher (captured at T = 1) to
    softmax(z_T / T) (exact when k = V), and the divergence is multiplied by T² (Hinton et al. 2015,
    "Distilling the knowledge in a neural network" §2: the soft targets' gradients scale as 1/T², so
    the T² keeps their size as T changes; DistillKit v0 does the same). TRL's `generalized_jsd_loss`
    has no T² factor (GKD calls it at T = 1): at T ≠ 1 this loss is T² times TRL's.
    """
    if missing_mass not in MISSING_MASS:
        raise ValueError(f"unknown missing_mass {missing_mass!r}: choose one of {', '.join(MISSING_MASS)}")
    z = logits.float() / temperature if temperature != 1.0 else logits.float()
    ids, logprobs, rest, valid = fold_out_of_vocab(ids, logprobs.float(), rest.float(), z.shape[-1])
    logprobs, rest = retarget_temperature(logprobs, rest, 1.0 / temperature)
    lq, lq_rest = student_buckets(z, ids, valid)
    if missing_mass == "rest":
        lp_all = torch.cat([logprobs, rest.unsqueeze(-1)], -1)
        lq_all = torch.cat([lq, lq_rest.unsqueeze(-1)], -1)
        out = bucket_divergence(lp_all, lq_all, direction, beta)
    else:
        lp_k = logprobs - torch.logsumexp(logprobs, -1, keepdim=True)
        if missing_mass == "zero":
            out = bucket_divergence(lp_k, lq, direction, beta)
        else:
            out = -(lp_k.exp() * _clamp_log(lq)).sum(-1)
    return out * (temperature * temperature) if temperature != 1.0 else out


def dense_kd_tokens(logits: torch.Tensor, teacher_logits: torch.Tensor, direction: str = "forward",
                    beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """Full-vocabulary token-level divergence between teacher and student logits [N, V] -> [N]:
    D(softmax(z_T / T) ‖ softmax(z / T)) · T² (the same convention as `topk_kd_tokens`)."""
    t = temperature
    z, zt = (logits.float(), teacher_logits.float()) if t == 1.0 else (logits.float() / t, teacher_logits.float() / t)
    out = bucket_divergence(F.log_softmax(zt, -1), F.log_softmax(z, -1), direction, beta)
    return out * (t * t) if t != 1.0 else out


def dckd_loss(ce_chosen: torch.Tensor, kl_chosen: torch.Tensor, kl_rejected: torch.Tensor,
              w_sft: float = 1.0, w_distill: float = 1.0, w_chosen: float = 0.1, w_rejected: float = 0.1
              ) -> torch.Tensor:
    """DCKD (dual-constrained KD; ADPA paper, ICLR 2025, official `student_dckd.yaml` weights):

    L = w_sft·CE(π_θ; x, y_w) + w_d·[w_c·KL_tok(π_dpo‖π_θ; x, y_w) + w_r·KL_tok(π_dpo‖π_θ; x, y_l)]

    `ce_chosen` is the token-mean CE; `kl_chosen`/`kl_rejected` are per-token KLs [N_w], [N_l]
    (token means are taken here).
    """
    return w_sft * ce_chosen + w_distill * (w_chosen * kl_chosen.mean() + w_rejected * kl_rejected.mean())


def advantage(dpo_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, clip: str = "none") -> torch.Tensor:
    """ADPA advantage A(s, a) = ln π_dpo(a|s) − ln π_ref(a|s) for the DPO teacher's top-k tokens a
    (ADPA, ICLR 2025; β folded into w_adpa). Probabilities are floored at 1e-7 as in the official code.

    clip 'none' (default, the paper's signed advantage) or 'unit': clamp A to [1e-8, 1 − 1e-8], which
    reproduces the released code, which reuses its probability clamp on the advantages (negative
    advantages become ~0, those above 1 become ~1).
    """
    floor = math.log(ADV_FLOOR)
    a = dpo_logprobs.float().clamp_min(floor) - ref_logprobs.float().clamp_min(floor)
    if clip == "none":
        return a
    if clip == "unit":
        return a.clamp(PROB_EPS, 1 - PROB_EPS)
    raise ValueError(f"unknown advantage_clip {clip!r}: choose one of {', '.join(ADVANTAGE_CLIPS)}")


def expected_advantage_tokens(logits: torch.Tensor, ids: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """Σ_{a∈K_t} π_θ(a|s_t)·A(s_t, a) per response token [N] (the rest bucket has advantage 0: no margin is stored for it, as in the ADPA code)."""
    lq = logits.float().log_softmax(-1).gather(-1, ids)
    return (lq.exp() * adv).sum(-1)


def adpa_loss(ce_chosen: torch.Tensor, exp_adv: torch.Tensor, w_sft: float = 1.0, w_adpa: float = 1.6
              ) -> torch.Tensor:
    """ADPA: L = w_sft·CE(π_θ; x, y_w) − w_adpa·mean_{t∈ŷ} Σ_{a∈K_t} π_θ(a|s_t)·A(s_t, a)
    on the student's own generations ŷ (official recipe `student_adpa.yaml`: w_sft 1, w_adpa 1.6)."""
    return w_sft * ce_chosen - w_adpa * exp_adv.mean()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.01, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid", len_chosen: torch.Tensor | None = None,
             len_rejected: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023) per pair [B], with TRL's names. Inputs are summed response log-probs [B];
    ℓ(y) = log π_θ(y|x) − log π_ref(y|x) and h = ℓ(y_w) − ℓ(y_l):

    - sigmoid: −(1−ε)·log σ(β·h) − ε·log σ(−β·h) (ε = label smoothing: conservative DPO);
    - hinge: relu(1 − β·h) (SLiC);
    - ipo: (h̄ − 1/(2β))² with the length-normalised h̄ = ℓ(y_w)/|y_w| − ℓ(y_l)/|y_l| (IPO, Azar et al. 2023,
      as TRL's DPOTrainer computes it: summed log-ratios make the squared loss grow with the response
      length; TRL normalises by the completion lengths, which the ADPA trainer does too). Needs the
      response lengths `len_chosen`, `len_rejected` [B].

    Returns (losses, chosen_rewards β·ℓ(y_w), rejected_rewards β·ℓ(y_l)).
    """
    lr_w, lr_l = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    logits = lr_w - lr_l
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        if len_chosen is None or len_rejected is None:
            raise ValueError("the ipo loss needs the response lengths (len_chosen, len_rejected)")
        norm = lr_w / len_chosen.clamp_min(1) - lr_l / len_rejected.clamp_min(1)
        losses = (norm - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}: choose one of {', '.join(DPO_LOSS_TYPES)}")
    return losses, beta * lr_w.detach(), beta * lr_l.detach()


def ln_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                ref_rejected: torch.Tensor, len_chosen: torch.Tensor, len_rejected: torch.Tensor,
                beta: float = 10.0, label_smoothing: float = 0.0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Length-normalised DPO (FuseChat-3.0's preference stage for Llama targets):
    L = −log σ( (β/|y_w|)·ℓ(y_w) − (β/|y_l|)·ℓ(y_l) ), ℓ(y) = log π_θ(y|x) − log π_ref(y|x) summed over the
    response, |y| its length in tokens; the reference model is kept (unlike SimPO).

    WRPO's official trainer does *not* average: its `concatenated_forward` calls `get_batch_logps(...,
    average_log_prob=False)`, i.e. summed log-probs with β = 0.01, which is `dpo_loss`'s form."""
    return dpo_loss(policy_chosen / len_chosen, policy_rejected / len_rejected, ref_chosen / len_chosen,
                    ref_rejected / len_rejected, beta=beta, label_smoothing=label_smoothing)


def wrpo_alpha(step: int, total: int, alpha_max: float = 0.1, dynamic: bool = True) -> float:
    """WRPO's weight of the source response at optimizer step `step` (steps done) of `total`:
    α(step) = α_max · min(1, step / total) — the official dynamic schedule (`LinearDecayScheduler` from 0
    to α_max over all optimizer steps, read at the trainer's global step), so α(0) = 0, the last update
    uses α_max·(T−1)/T and α(T) = α_max. `dynamic=False` keeps α = α_max throughout."""
    if not dynamic or total <= 0:
        return alpha_max
    return alpha_max * min(1.0, max(step, 0) / total)


def wrpo_loss(policy_source: torch.Tensor, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
              ref_source: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, alpha: float,
              beta: float = 0.01, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """WRPO (weighted-reward preference optimisation, ICLR 2025), per triple [B]:

    L = −log σ( α·β·r(y_ws) + (1−α)·β·r(y_wt) − β·r(y_l) ),  r(y) = log π_θ(y|x) − log π_ref(y|x)

    with y_ws the best source response, y_wt the target's best and y_l its worst; r is **summed** over
    the response tokens (the official code's `get_batch_logps(average_log_prob=False)`); with label
    smoothing ε the loss is −(1−ε)·log σ(h) − ε·log σ(−h) as in its trainer. At α = 0 this is DPO on
    (y_wt, y_l). Returns (losses, β·weighted chosen reward, β·rejected reward), rewards detached."""
    rs, rt, rl = policy_source - ref_source, policy_chosen - ref_chosen, policy_rejected - ref_rejected
    chosen = alpha * rs + (1 - alpha) * rt
    h = beta * (chosen - rl)
    losses = -F.logsigmoid(h) * (1 - label_smoothing) - F.logsigmoid(-h) * label_smoothing
    return losses, beta * chosen.detach(), beta * rl.detach()
