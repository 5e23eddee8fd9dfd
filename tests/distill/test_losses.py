"""Losses against independent computations (float64 formulas written here, and TRL's GKD JSD)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from compress.distill import losses as L

torch.manual_seed(0)


def _logits(n=6, v=40, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale


def _ref_bucket_kl(student, teacher, k):
    """KL over the teacher's top-k + rest buckets, in float64 with explicit sums (no logsumexp tricks)."""
    p = torch.softmax(teacher.double(), -1)
    q = torch.softmax(student.double(), -1)
    out = []
    for i in range(p.shape[0]):
        top = torch.argsort(p[i], descending=True)[:k]
        pb = torch.cat([p[i, top], (1 - p[i, top].sum()).reshape(1)])
        qb = torch.cat([q[i, top], (1 - q[i, top].sum()).reshape(1)])
        out.append(sum(float(a) * (math.log(max(float(a), 1e-8)) - math.log(max(float(b), 1e-8)))
                       for a, b in zip(pb, qb, strict=True) if a > 0))
    return torch.tensor(out, dtype=torch.float64)


def test_sft_is_mean_token_nll():
    z, y = _logits(), torch.tensor([1, 5, 7, 0, 39, 3])
    ref = -torch.stack([torch.log(torch.softmax(z[i].double(), -1)[y[i]]) for i in range(6)]).mean()
    assert float(L.sft_loss(z, y)) == pytest.approx(float(ref), rel=1e-6)


def test_topk_buckets_sum_to_one_and_rest_by_logsumexp():
    z = _logits(v=100)
    ids, lp, rest = L.topk_from_logits(z, 10)
    total = lp.double().exp().sum(-1) + rest.double().exp()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    p = torch.softmax(z.double(), -1)
    expect = torch.log(1 - p.gather(-1, ids).sum(-1))
    assert torch.allclose(rest.double(), expect, atol=1e-5)
    # a peaked teacher: the rest mass is tiny but still finite and accurate (log(1 - Σp) would cancel)
    peaked = z.clone()
    peaked[:, 0] = 60.0
    _, _, r = L.topk_from_logits(peaked, 1)
    expect = torch.logsumexp(peaked[:, 1:].double(), -1) - torch.logsumexp(peaked.double(), -1)
    assert torch.isfinite(r).all() and torch.allclose(r.double(), expect, atol=1e-4)


def test_kl_is_zero_when_student_equals_teacher():
    z = _logits()
    ids, lp, rest = L.topk_from_logits(z, 5)
    for d in ("forward", "reverse", "jsd"):
        assert L.topk_kd_tokens(z, ids, lp, rest, direction=d).abs().max() < 1e-6


def test_topk_kl_matches_explicit_bucket_kl():
    s, t = _logits(seed=1), _logits(seed=2)
    ids, lp, rest = L.topk_from_logits(t, 7)
    got = L.topk_kd_tokens(s, ids, lp, rest)
    assert torch.allclose(got.double(), _ref_bucket_kl(s, t, 7), atol=1e-5)


def test_k_equal_v_is_dense_kl_and_matches_trl_gkd():
    pytest.importorskip("trl")
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    s, t = _logits(seed=3), _logits(seed=4)
    ids, lp, rest = L.topk_from_logits(t, t.shape[-1])
    dense = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(L.topk_kd_tokens(s, ids, lp, rest), dense, atol=1e-5)
    for beta, direction in ((0.0, "jsd"), (1.0, "jsd"), (0.5, "jsd"), (0.0, "forward"), (1.0, "reverse")):
        trl = GKDTrainer.generalized_jsd_loss(s[None], t[None], beta=beta, reduction="sum") / s.shape[0]
        ours = L.topk_kd_tokens(s, ids, lp, rest, direction=direction, beta=beta).mean()
        assert float(ours) == pytest.approx(float(trl), rel=1e-4, abs=1e-6), (beta, direction)
        assert float(L.dense_kd_tokens(s, t, direction, beta).mean()) == pytest.approx(float(trl), rel=1e-4, abs=1e-6)


def test_padded_vocab_ids_fold_into_rest():
    s = _logits(n=3, v=20, seed=5)
    # teacher with 24 rows: ids 20..23 do not exist in the student; their mass joins the rest bucket
    t = _logits(n=3, v=24, seed=6)
    t[:, 21] = 9.0
    ids, lp, rest = L.topk_from_logits(t, 5)
    assert (ids >= 20).any()
    got = L.topk_kd_tokens(s, ids, lp, rest)
    p, q = torch.softmax(t.double(), -1), torch.softmax(s.double(), -1)
    for i in range(3):
        keep = [int(j) for j in ids[i] if j < 20]
        pb = torch.cat([p[i, keep], (1 - p[i, keep].sum()).reshape(1)])
        qb = torch.cat([q[i, keep], (1 - q[i, keep].sum()).reshape(1)])
        assert float(got[i]) == pytest.approx(float((pb * (pb.log() - qb.log())).sum()), abs=1e-5)


def test_zero_and_soft_ce_modes():
    s, t = _logits(seed=7), _logits(seed=8)
    ids, lp, rest = L.topk_from_logits(t, 4)
    pk = torch.softmax(t.double(), -1).gather(-1, ids)
    pk = pk / pk.sum(-1, keepdim=True)
    lq = torch.log_softmax(s.double(), -1).gather(-1, ids)
    assert torch.allclose(L.topk_kd_tokens(s, ids, lp, rest, missing_mass="zero").double(),
                          (pk * (pk.log() - lq)).sum(-1), atol=1e-5)
    assert torch.allclose(L.topk_kd_tokens(s, ids, lp, rest, missing_mass="topk_soft_ce").double(),
                          -(pk * lq).sum(-1), atol=1e-5)


def test_dckd_equals_dense_computation_when_k_is_v():
    sw, tw, sl, tl = (_logits(seed=i) for i in (10, 11, 12, 13))
    sl = sl[:4]
    tl = tl[:4]
    yw = torch.tensor([0, 1, 2, 3, 4, 5])
    v = sw.shape[-1]
    kw, kl = L.topk_from_logits(tw, v), L.topk_from_logits(tl, v)
    got = L.dckd_loss(L.sft_loss(sw, yw), L.topk_kd_tokens(sw, *kw), L.topk_kd_tokens(sl, *kl))
    p_w, q_w = torch.softmax(tw.double(), -1), torch.softmax(sw.double(), -1)
    p_l, q_l = torch.softmax(tl.double(), -1), torch.softmax(sl.double(), -1)
    ce = -torch.log(q_w[torch.arange(6), yw]).mean()
    ref = ce + 0.1 * (p_w * (p_w / q_w).log()).sum(-1).mean() + 0.1 * (p_l * (p_l / q_l).log()).sum(-1).mean()
    assert float(got) == pytest.approx(float(ref), rel=1e-5)


def test_advantage_and_expected_advantage():
    dpo = torch.log(torch.tensor([[0.5, 0.3, 1e-9]]))
    ref = torch.log(torch.tensor([[0.25, 0.6, 0.1]]))
    a = L.advantage(dpo, ref)
    expect = torch.tensor([[math.log(2), math.log(0.5), math.log(1e-7) - math.log(0.1)]])
    assert torch.allclose(a, expect, atol=1e-5)
    assert (L.advantage(dpo, ref, "unit") >= 0).all()
    z = _logits(n=1, v=10, seed=14)
    ids = torch.tensor([[3, 1, 7]])
    q = torch.softmax(z.double(), -1)[0]
    ea = L.expected_advantage_tokens(z, ids, a)
    assert float(ea) == pytest.approx(float(sum(q[int(i)] * a[0, j] for j, i in enumerate(ids[0]))), rel=1e-5)


def test_adpa_negative_advantage_gradient_sign_none_vs_unit():
    """A token with negative advantage is pushed down with the signed (paper) advantage; the released code's
    unit clamp turns it into ~0 advantage, so the loss no longer pushes it down."""
    z = _logits(n=1, v=8, seed=15).requires_grad_(True)
    ids = torch.tensor([[2]])
    adv_raw = (torch.log(torch.tensor([[0.1]])), torch.log(torch.tensor([[0.4]])))  # A = log(0.25) < 0
    for clip, sign in (("none", 1), ("unit", -1)):
        z.grad = None
        a = L.advantage(*adv_raw, clip=clip)
        loss = L.adpa_loss(torch.tensor(0.0), L.expected_advantage_tokens(z, ids, a))
        loss.backward()
        g = float(z.grad[0, 2])
        assert g * sign > 0, (clip, g)
        if clip == "unit":
            assert abs(g) < 1e-7
        else:
            q = float(torch.softmax(z.detach(), -1)[0, 2])
            assert g == pytest.approx(-1.6 * math.log(0.25) * q * (1 - q), rel=1e-4)


def _ref_dpo(pw, pl, rw, rl, beta, eps=0.0):
    h = beta * ((pw - rw) - (pl - rl))
    return -(1 - eps) * torch.log(torch.sigmoid(h)) - eps * torch.log(torch.sigmoid(-h))


def test_dpo_against_formula():
    g = torch.Generator().manual_seed(16)
    pw, pl, rw, rl = (torch.randn(5, generator=g, dtype=torch.float64) * 20 for _ in range(4))
    for eps in (0.0, 0.1):
        losses, cr, rr = L.dpo_loss(pw, pl, rw, rl, beta=0.1, label_smoothing=eps)
        assert torch.allclose(losses, _ref_dpo(pw, pl, rw, rl, 0.1, eps), atol=1e-10)
    assert torch.allclose(cr, 0.1 * (pw - rw)) and torch.allclose(rr, 0.1 * (pl - rl))
    hinge, _, _ = L.dpo_loss(pw, pl, rw, rl, beta=0.1, loss_type="hinge")
    assert torch.allclose(hinge, torch.relu(1 - 0.1 * ((pw - rw) - (pl - rl))))


def test_ln_dpo_properties():
    pw, pl = torch.tensor([-3.0]), torch.tensor([-5.0])
    rw, rl = torch.tensor([-4.0]), torch.tensor([-4.5])
    one = torch.tensor([1.0])
    # equals DPO when |y_w| = |y_l| = 1
    assert torch.allclose(L.ln_dpo_loss(pw, pl, rw, rl, one, one, beta=0.5)[0], L.dpo_loss(pw, pl, rw, rl, beta=0.5)[0])
    # invariant to duplicating tokens with a constant per-token log-ratio (sums scale with length)
    a = L.ln_dpo_loss(pw, pl, rw, rl, one * 3, one * 2, beta=2.0)[0]
    b = L.ln_dpo_loss(pw * 4, pl * 4, rw * 4, rl * 4, one * 12, one * 8, beta=2.0)[0]
    assert torch.allclose(a, b)
    # the gradient increases the chosen log-ratio and decreases the rejected one
    pw.requires_grad_(True)
    pl.requires_grad_(True)
    L.ln_dpo_loss(pw, pl, rw, rl, one * 3, one * 2)[0].sum().backward()
    assert pw.grad[0] < 0 < pl.grad[0]


def test_reverse_and_jsd_buckets_match_explicit():
    s, t = _logits(seed=17), _logits(seed=18)
    ids, lp, rest = L.topk_from_logits(t, 6)
    p, q = torch.softmax(t.double(), -1), torch.softmax(s.double(), -1)
    for i in range(s.shape[0]):
        top = ids[i]
        pb = torch.cat([p[i, top], (1 - p[i, top].sum()).reshape(1)])
        qb = torch.cat([q[i, top], (1 - q[i, top].sum()).reshape(1)])
        rev = (qb * (qb / pb).log()).sum()
        m = 0.3 * pb + 0.7 * qb
        jsd = 0.3 * (pb * (pb / m).log()).sum() + 0.7 * (qb * (qb / m).log()).sum()
        assert float(L.topk_kd_tokens(s[i:i + 1], ids[i:i + 1], lp[i:i + 1], rest[i:i + 1], "reverse")) == pytest.approx(float(rev), abs=1e-5)
        assert float(L.topk_kd_tokens(s[i:i + 1], ids[i:i + 1], lp[i:i + 1], rest[i:i + 1], "jsd", 0.3)) == pytest.approx(float(jsd), abs=1e-5)


def test_temperature_retarget_is_power_and_renormalise():
    z = _logits(n=2, v=12, seed=19)
    ids, lp, rest = L.topk_from_logits(z, 4)
    lp2, rest2 = L.retarget_temperature(lp, rest, 0.5)
    buckets = torch.cat([lp.double().exp(), rest.double().exp().unsqueeze(-1)], -1) ** 0.5
    buckets = buckets / buckets.sum(-1, keepdim=True)
    assert torch.allclose(torch.cat([lp2, rest2.unsqueeze(-1)], -1).double().exp(), buckets, atol=1e-6)
