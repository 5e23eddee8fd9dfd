"""Our preference and KD losses against TRL's own code (trl's DPOTrainer and GKD), on real tiny models."""

from __future__ import annotations

import pytest
import torch

from compress.data.preference import collate_slot, read_preference
from compress.distill import losses as L
from compress.distill.forward import response_logits, sequence_logps
from compress.model import load, load_model
from tests.distill.conftest import make_pairs

trl = pytest.importorskip("trl")


def test_dpo_losses_equal_trl_dpo_trainer(distill_models, tmp_path):
    """TRL's DPOTrainer loss on the same [chosen; rejected] batch as ours: for ipo this checks the length
    normalisation (TRL divides the log-ratios by the completion lengths). About 10 s: most of it is
    importing TRL's DPOTrainer, the independent implementation checked against."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy, tok = load(distill_models["student"], "cpu", "fp32")
    ref = load_model(distill_models["ref"], "cpu", "fp32")
    data = read_preference(make_pairs(tmp_path / "pairs.jsonl", n=4), tok, max_length=64)
    exs = data.examples
    beta = 0.1
    c, r = collate_slot(exs, "chosen", tok.pad_token_id), collate_slot(exs, "rejected", tok.pad_token_id)
    with torch.no_grad():
        pol = {s: sequence_logps(response_logits(policy, b), b.targets, b.lengths) for s, b in (("c", c), ("r", r))}
        rf = {s: sequence_logps(response_logits(ref, b), b.targets, b.lengths) for s, b in (("c", c), ("r", r))}
    args = DPOConfig(output_dir=str(tmp_path / "trl"), loss_type=["sigmoid"], beta=beta, report_to="none",
                     use_cpu=True, bf16=False, disable_tqdm=True)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]))
    t = max(c.input_ids.shape[1], r.input_ids.shape[1])

    def pad(x, v):
        return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=v)

    inputs = {"input_ids": torch.cat([pad(c.input_ids, tok.pad_token_id), pad(r.input_ids, tok.pad_token_id)]),
              "attention_mask": torch.cat([pad(c.attention_mask, 0), pad(r.attention_mask, 0)]),
              "completion_mask": torch.cat([pad(c.response_mask.long(), 0), pad(r.response_mask.long(), 0)])}
    for loss_type in L.DPO_LOSS_TYPES:
        trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
        with torch.no_grad():
            theirs = trainer._compute_loss(trainer.model, inputs, False)
        ours, _, _ = L.dpo_loss(pol["c"], pol["r"], rf["c"], rf["r"], beta=beta, loss_type=loss_type,
                                len_chosen=c.lengths, len_rejected=r.lengths)
        assert float(ours.mean()) == pytest.approx(float(theirs), rel=1e-5, abs=1e-6), loss_type
        if loss_type == "ipo":  # summed log-ratios (the old form) give another value
            summed = ((pol["c"] - rf["c"]) - (pol["r"] - rf["r"]) - 1 / (2 * beta)) ** 2
            assert float(summed.mean()) != pytest.approx(float(theirs), rel=1e-3)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_kd_temperature_is_t_squared_times_trl_gkd(beta):
    """At temperature T our KD loss (k = V: exact) is T² × TRL's `generalized_jsd_loss(temperature=T)`
    (Hinton et al.'s T² factor; TRL has none), and equal to it at T = 1."""
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    g = torch.Generator().manual_seed(20)
    s, t = torch.randn(7, 48, generator=g) * 3, torch.randn(7, 48, generator=g) * 3
    ids, lp, rest = L.topk_from_logits(t, t.shape[-1])
    direction = {0.0: "forward", 1.0: "reverse"}.get(beta, "jsd")
    for temp in (1.0, 2.0, 4.0):  # (T < 1 sharpens below the 1e-8 probability clamp, which TRL lacks)
        theirs = GKDTrainer.generalized_jsd_loss(s[None], t[None], beta=beta, temperature=temp, reduction="sum") / 7
        ours = L.topk_kd_tokens(s, ids, lp, rest, direction=direction, beta=beta, temperature=temp).mean()
        assert float(ours) == pytest.approx(temp * temp * float(theirs), rel=1e-4, abs=1e-6), temp


def test_full_distribution_kd_equals_trl_gkd_loss(distill_models, tmp_path):
    """`--method kd --k 0 --w-sft 0` (online teacher, full distribution) is TRL GKD's loss at β = 0
    (forward KL), β = 1 (reverse) and β = 0.5, on the same real batch: a token mean over response tokens."""
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    from compress.distill.config import DistillConfig
    from compress.distill.methods import batch_loss
    from compress.distill.teacher import OnlineTeacher

    student, tok = load(distill_models["student"], "cpu", "fp32")
    teacher = load_model(distill_models["teacher"], "cpu", "fp32")
    exs = read_preference(make_pairs(tmp_path / "pairs.jsonl", n=4), tok, max_length=64).examples
    b = collate_slot(exs, "chosen", tok.pad_token_id)
    labels = b.input_ids.masked_fill(~b.response_mask, -100)
    with torch.no_grad():
        s_logits, t_logits = student(b.input_ids, attention_mask=b.attention_mask).logits, teacher(
            b.input_ids, attention_mask=b.attention_mask).logits
        for beta, direction in ((0.0, "forward"), (1.0, "reverse"), (0.5, "jsd")):
            theirs = GKDTrainer.generalized_jsd_loss(s_logits[:, :-1], t_logits[:, :-1], labels[:, 1:], beta=beta)
            cfg = DistillConfig(method="kd", k=0, w_sft=0.0, kd_direction=direction, jsd_beta=beta)
            ours, _ = batch_loss(cfg, lambda x: response_logits(student, x), exs, tok.pad_token_id,
                                 OnlineTeacher(teacher, 0))
            assert float(ours) == pytest.approx(float(theirs), rel=1e-4), beta
