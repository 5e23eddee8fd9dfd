"""The loss of each distillation method on one micro-batch, keyed by the names in `registry.METHODS`.

A method's loss reads a `Step`: the student's response logits per slot (or, for methods that need only
the log-probs of the response tokens, those), the targets, the teacher signal on demand and the DPO
reference log-probs. All slots go through one forward pass. It returns the scalar loss
and a few figures for the training history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from compress.data.preference import PreferenceExample, SlotBatch, collate_slot, concat_batches
from compress.distill import losses as L
from compress.distill.config import DistillConfig
from compress.distill.forward import sequence_logps, sequence_sums
from compress.distill.registry import METHODS
from compress.distill.teacher import Signals
from compress.errors import CompressError


@dataclass
class Step:
    """One micro-batch of one method: collated slots, the student's outputs on them, and the references.

    `logits[slot]` [N, V] for methods that need distributions; else `token_logps[slot]` [N]."""

    cfg: DistillConfig
    examples: list[PreferenceExample]
    batches: dict[str, SlotBatch]
    logits: dict[str, torch.Tensor]
    token_logps: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher: object | None = None  # OnlineTeacher or CachedTeacher
    ref_logps: dict[str, torch.Tensor] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    progress: tuple[int, int] = (0, 0)  # (optimizer steps done, steps in the run): WRPO's α schedule

    @property
    def device(self) -> torch.device:
        return next(iter({**self.logits, **self.token_logps}.values())).device

    def targets(self, slot: str) -> torch.Tensor:
        return self.batches[slot].targets.to(self.device)

    def lengths(self, slot: str) -> torch.Tensor:
        return self.batches[slot].lengths.to(self.device)

    def signals(self, slot: str) -> Signals:
        if self.teacher is None:
            raise CompressError(f"--method {self.cfg.method} needs a teacher signal")
        return self.teacher.signals(self.examples, self.batches[slot], slot).to(self.device)

    def ce(self, weight: float = 1.0) -> torch.Tensor:
        """weight · the token-mean CE on chosen responses (not computed at all when the weight is 0)."""
        if weight == 0:
            return torch.zeros((), device=self.device)
        if "chosen" in self.token_logps:
            ce = -self.token_logps["chosen"].mean()
        else:
            ce = L.sft_loss(self.logits["chosen"], self.targets("chosen"))
        self.metrics["ce"] = float(ce.detach())
        return weight * ce

    def kd_tokens(self, slot: str) -> torch.Tensor:
        cfg, s = self.cfg, self.signals(slot)
        if s.dense is not None:
            return L.dense_kd_tokens(self.logits[slot], s.dense, cfg.kd_direction, cfg.jsd_beta, cfg.kd_temperature)
        return L.topk_kd_tokens(self.logits[slot], s.ids, s.logprobs, s.rest, cfg.kd_direction, cfg.jsd_beta,
                                cfg.missing_mass, cfg.kd_temperature)

    def logratios(self) -> dict[str, torch.Tensor]:
        """Summed response log-probs of the policy and of the DPO reference: chosen, rejected (and source)."""
        idx = torch.tensor([e.index for e in self.examples])
        out = {}
        for s in [s for s in ("chosen", "rejected", "source") if s in self.batches]:
            out[s] = (sequence_sums(self.token_logps[s], self.batches[s].lengths) if s in self.token_logps
                      else sequence_logps(self.logits[s], self.targets(s), self.batches[s].lengths))
            out["ref_" + s] = self.ref_logps[s][idx].to(self.device)
        return out


def _sft(x: Step) -> torch.Tensor:
    return x.ce()


def _kd(x: Step) -> torch.Tensor:
    kl = x.kd_tokens("chosen").mean()
    x.metrics["kl"] = float(kl.detach())
    return x.ce(x.cfg.w_sft) + x.cfg.w_distill * kl


def _dpo(x: Step) -> torch.Tensor:
    lp, cfg = x.logratios(), x.cfg
    losses, rw, rl = L.dpo_loss(lp["chosen"], lp["rejected"], lp["ref_chosen"], lp["ref_rejected"], cfg.dpo_beta,
                                cfg.label_smoothing, cfg.dpo_loss_type, x.lengths("chosen"), x.lengths("rejected"))
    x.metrics["reward_acc"] = float((rw > rl).float().mean())
    return losses.mean()


def _ln_dpo(x: Step) -> torch.Tensor:
    lp, cfg = x.logratios(), x.cfg
    losses, rw, rl = L.ln_dpo_loss(lp["chosen"], lp["rejected"], lp["ref_chosen"], lp["ref_rejected"],
                                   x.lengths("chosen"), x.lengths("rejected"), cfg.dpo_beta, cfg.label_smoothing)
    x.metrics["reward_acc"] = float((rw > rl).float().mean())
    return losses.mean()


def _wrpo(x: Step) -> torch.Tensor:
    lp, cfg = x.logratios(), x.cfg
    alpha = L.wrpo_alpha(*x.progress, cfg.alpha, cfg.alpha_schedule == "linear")
    losses, rw, rl = L.wrpo_loss(lp["source"], lp["chosen"], lp["rejected"], lp["ref_source"], lp["ref_chosen"],
                                 lp["ref_rejected"], alpha, cfg.dpo_beta, cfg.label_smoothing)
    x.metrics["reward_acc"], x.metrics["alpha"] = float((rw > rl).float().mean()), alpha
    return losses.mean()


def _dckd(x: Step) -> torch.Tensor:
    cfg = x.cfg
    klw, kll = x.kd_tokens("chosen"), x.kd_tokens("rejected")
    x.metrics["kl_chosen"], x.metrics["kl_rejected"] = float(klw.mean().detach()), float(kll.mean().detach())
    return L.dckd_loss(x.ce(), klw, kll, cfg.w_sft, cfg.w_distill, cfg.w_chosen, cfg.w_rejected)


def _adpa(x: Step) -> torch.Tensor:
    s = x.signals("generated")
    if s.ref_logprobs is None:
        raise CompressError("ADPA needs the reference teacher's log-probs: give --ref-teacher (or a cache made with it)")
    adv = L.advantage(s.logprobs, s.ref_logprobs, x.cfg.advantage_clip)
    ea = L.expected_advantage_tokens(x.logits["generated"], s.ids, adv)
    x.metrics["exp_adv"] = float(ea.mean().detach())
    return L.adpa_loss(x.ce(), ea, x.cfg.w_sft, x.cfg.w_adpa)


LOSSES: dict[str, Callable[[Step], torch.Tensor]] = {
    "sft": _sft, "kd": _kd, "dpo": _dpo, "ln-dpo": _ln_dpo, "wrpo": _wrpo, "dckd": _dckd, "adpa": _adpa, "adpa+": _adpa,
}
assert set(LOSSES) == set(METHODS), "every registered method needs a loss"


def batch_loss(cfg: DistillConfig, forward: Callable[[SlotBatch], torch.Tensor], examples: list[PreferenceExample],
               pad_id: int, teacher=None, ref_logps: dict[str, torch.Tensor] | None = None,
               progress: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of `cfg.method` on a micro-batch (token means; pair means for DPO), and its figures. `progress`:
    (optimizer steps done, total steps), read by WRPO's α schedule."""
    spec = METHODS[cfg.method]
    batches = {s: collate_slot(examples, s, pad_id) for s in spec.slots}
    out = slot_outputs(forward, batches, pad_id, targets_only=not spec.logits)
    step = Step(cfg, examples, batches, out if spec.logits else {}, out if not spec.logits else {}, teacher, ref_logps,
                progress=progress)
    loss = LOSSES[cfg.method](step)
    return loss, step.metrics


def slot_outputs(forward: Callable[..., torch.Tensor], batches: dict[str, SlotBatch], pad_id: int,
                 targets_only: bool = False) -> dict[str, torch.Tensor]:
    """Response logits [N, V] (or, with `targets_only`, the response tokens' log-probs [N]) per slot, from
    one forward pass over all slots stacked (as TRL's DPOTrainer does for chosen + rejected): half the
    kernel launches of one pass per slot, and one forward per backward for DDP. Rows come out slot after
    slot, so a split by token counts recovers each slot's rows."""
    joint = next(iter(batches.values())) if len(batches) == 1 else concat_batches(list(batches.values()), pad_id)
    out = forward(joint, targets_only=True) if targets_only else forward(joint)
    sizes = [int(b.lengths.sum()) for b in batches.values()]
    return dict(zip(batches, torch.split(out, sizes), strict=True))


def batch_tokens(examples: list[PreferenceExample], method: str) -> int:
    """Prompt + response tokens the student processes for `examples` (every slot of the method)."""
    return sum(len(e.prompt) + len(e.responses[s]) for e in examples for s in METHODS[method].slots)
