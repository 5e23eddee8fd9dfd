"""WRPO loss and α schedule against the official formulas (SLIT-AI/WRPO scripts/wrpo_trainer.py), written here."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from compress.distill.losses import dpo_loss, wrpo_alpha, wrpo_loss


def official_wrpo(chosen_logps, rejected_logps, ref_chosen, ref_rejected, alpha, beta, eps=0.0):
    """The official trainer's arithmetic: chosen = [y_ws, y_wt] per row, weights [α, 1−α] by matmul."""
    chosen_rewards = chosen_logps - ref_chosen  # [B, 2]
    rejected_rewards = rejected_logps - ref_rejected  # [B, 1]
    weight = torch.tensor([alpha, 1 - alpha], dtype=chosen_logps.dtype).view(2, 1)
    logits = torch.matmul(chosen_rewards, weight) - rejected_rewards
    return (-F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps).squeeze(1)


def _batch(seed=0, b=5):
    g = torch.Generator().manual_seed(seed)
    return [(-40 * torch.rand(b, generator=g, dtype=torch.float64)).requires_grad_() for _ in range(3)], \
           [-40 * torch.rand(b, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize(("alpha", "beta", "eps"), [(0.1, 0.01, 0.0), (0.05, 0.5, 0.1), (1.0, 0.01, 0.0)])
def test_wrpo_matches_the_official_arithmetic(alpha, beta, eps):
    (ps, pc, pr), (rs, rc, rr) = _batch()
    got, wc, wr = wrpo_loss(ps, pc, pr, rs, rc, rr, alpha, beta, eps)
    want = official_wrpo(torch.stack([ps, pc], 1), pr[:, None], torch.stack([rs, rc], 1), rr[:, None], alpha, beta, eps)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(wc, beta * (alpha * (ps - rs) + (1 - alpha) * (pc - rc)).detach())
    torch.testing.assert_close(wr, beta * (pr - rr).detach())


def test_alpha_zero_is_dpo_on_target_pair_with_equal_gradients():
    (ps, pc, pr), (rs, rc, rr) = _batch(1)
    w, _, _ = wrpo_loss(ps, pc, pr, rs, rc, rr, alpha=0.0, beta=0.01)
    gw = torch.autograd.grad(w.sum(), [ps, pc, pr])
    d, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.01)
    gd = torch.autograd.grad(d.sum(), [pc, pr])
    torch.testing.assert_close(w, d)
    torch.testing.assert_close(gw[1], gd[0])
    torch.testing.assert_close(gw[2], gd[1])
    assert torch.count_nonzero(gw[0]) == 0  # y_ws gets no gradient at α = 0


def test_alpha_schedule_ramps_from_zero_to_alpha_max():
    assert wrpo_alpha(0, 100, 0.1) == 0.0
    assert wrpo_alpha(100, 100, 0.1) == pytest.approx(0.1)
    assert wrpo_alpha(50, 100, 0.1) == pytest.approx(0.05)
    assert wrpo_alpha(150, 100, 0.1) == pytest.approx(0.1)  # held after the end, as LinearDecayScheduler
    assert wrpo_alpha(99, 100, 0.1) == pytest.approx(0.099)  # the last update: α_max·(T−1)/T
    assert wrpo_alpha(0, 100, 0.1, dynamic=False) == 0.1


def test_gradient_sign_raises_both_chosen_and_lowers_rejected():
    (ps, pc, pr), (rs, rc, rr) = _batch(2)
    loss, _, _ = wrpo_loss(ps, pc, pr, rs, rc, rr, alpha=0.3)
    g = torch.autograd.grad(loss.sum(), [ps, pc, pr])
    assert (g[0] < 0).all() and (g[1] < 0).all() and (g[2] > 0).all()
    torch.testing.assert_close(g[0] / g[1], torch.full_like(g[0], 0.3 / 0.7))  # weights α : 1−α


# ---------------------------------------------------------------- `compress distill train --method wrpo`
def _train(models, data, out, method, *extra):
    from compress.cli import main

    args = ["distill", "train", str(models["student"]), "--data", str(data), "--method", method, "-o", str(out),
            "--max-steps", "3", "--limit", "6", "--max-length", "64", "--batch-size", "2", "--lr", "1e-3",
            "--beta", "0.5", "--warmup-ratio", "0", *extra]
    assert main(args) == 0
    from compress.checkpoint.reader import Checkpoint

    ck = Checkpoint(out)
    return {n: ck.get(n).float().clone() for n in ck.names()}


def _as_pairs(src, dst, chosen_field):
    rows = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
    dst.write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": r[chosen_field], "rejected": r["rejected"]}) + "\n"
                           for r in rows))
    return dst


def _close(a, b):
    return all(torch.allclose(a[n], b[n], atol=1e-6, rtol=1e-5) for n in a)


def test_wrpo_training_is_dpo_at_the_ends_of_alpha(distill_models, pairs, tmp_path):
    """α = 0 trains exactly as DPO on (y_wt, y_l); constant α = 1 exactly as DPO on (y_ws, y_l); the linear schedule
    (α 0 at the first step, then > 0) follows DPO on (y_wt, y_l) at the first step only."""
    dpo_wt = _train(distill_models, _as_pairs(pairs, tmp_path / "wt.jsonl", "chosen"), tmp_path / "dpo_wt", "dpo")
    dpo_ws = _train(distill_models, _as_pairs(pairs, tmp_path / "ws.jsonl", "source_chosen"), tmp_path / "dpo_ws", "dpo")
    a0 = _train(distill_models, pairs, tmp_path / "a0", "wrpo", "--alpha", "0")
    a1 = _train(distill_models, pairs, tmp_path / "a1", "wrpo", "--alpha", "1", "--alpha-schedule", "constant")
    lin = _train(distill_models, pairs, tmp_path / "lin", "wrpo", "--alpha", "1")
    assert _close(a0, dpo_wt) and _close(a1, dpo_ws)
    assert not _close(dpo_wt, dpo_ws) and not _close(lin, dpo_wt) and not _close(lin, dpo_ws)
    hist = json.loads((tmp_path / "lin" / "compress.json").read_text())["history"]
    assert [h["alpha"] for h in hist] == pytest.approx([0.0, 1 / 3, 2 / 3])


def test_wrpo_data_without_source_response_is_refused(distill_models, tmp_path, capsys):
    from compress.cli import main
    from tests.distill.conftest import make_pairs

    pairs = make_pairs(tmp_path / "pairs.jsonl")  # chosen / rejected only
    rc = main(["distill", "train", str(distill_models["student"]), "--data", str(pairs), "--method", "wrpo",
               "-o", str(tmp_path / "out"), "--max-steps", "1", "--max-length", "64"])
    assert rc == 1 and "source_chosen" in capsys.readouterr().err and not (tmp_path / "out").exists()
