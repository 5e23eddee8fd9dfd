"""Each merge method against a formula written independently here (numpy / python loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compress.merge.methods import Job, get_method, tensor_generator
from compress.merge.methods import sparsify as sp
from compress.merge.methods.linear import linear
from compress.merge.methods.model_stock import model_stock, model_stock_t
from compress.merge.methods.sce import sce, sce_eta
from compress.merge.methods.slerp import slerp
from compress.merge.methods.varm import squared_change, varm_merge, varm_weights
from tests.merge import reference as ref
from tests.merge.reference import first_reference, merge_deltas, sce_fork_reference, task_arithmetic


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def distinct(n, seed=0):
    """A vector whose |values| are all distinct (so rank-based methods have no ties)."""
    g = np.random.default_rng(seed)
    mags = g.permutation(np.arange(1, n + 1)).astype(np.float32) / n
    signs = g.choice([-1.0, 1.0], n).astype(np.float32)
    return torch.from_numpy(mags * signs)


# ---- linear / task arithmetic -----------------------------------------------------------------
def test_linear_equal_weights_is_mean_and_weighted_formula():
    ts = [rnd(5, 7, seed=i) for i in range(3)]
    np.testing.assert_allclose(linear(ts, [1, 1, 1]).numpy(), np.mean([t.numpy() for t in ts], axis=0), rtol=1e-6, atol=1e-6)
    w = [0.5, 0.3, 0.2]
    want = sum(wi * t.numpy() for wi, t in zip(w, ts, strict=True))
    np.testing.assert_allclose(linear(ts, w, normalize=False).numpy(), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(linear(ts, [1, 2, 3]).numpy(), (ts[0] + 2 * ts[1] + 3 * ts[2]).numpy() / 6, rtol=1e-5, atol=1e-6)


def test_task_arithmetic_one_model_and_formula():
    b, a = rnd(4, 4, seed=1), rnd(4, 4, seed=2)
    torch.testing.assert_close(task_arithmetic(b, [a], [1.0]), a)
    c = rnd(4, 4, seed=3)
    got = task_arithmetic(b, [a, c], [0.25, 0.5], normalize=True, lam=2.0)
    want = b.numpy() + 2.0 * (0.25 * (a - b).numpy() + 0.5 * (c - b).numpy()) / 0.75
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


# ---- TIES ------------------------------------------------------------------------------------
def ties_reference(base, deltas, weights, normalize=True, lam=1.0):
    """Element-by-element TIES (python loops): elect sign of Σ w δ, disjoint weighted mean."""
    b = base.numpy().ravel()
    ds = [d.numpy().ravel() for d in deltas]
    out = np.empty_like(b)
    for p in range(b.size):
        u = [w * d[p] for w, d in zip(weights, ds, strict=True)]
        s = 1.0 if sum(u) >= 0 else -1.0
        num = sum(ui for ui in u if np.sign(ui) == s)
        den = sum(w for w, ui in zip(weights, u, strict=True) if np.sign(ui) == s)
        out[p] = b[p] + lam * (num / (den if den != 0 else 1.0) if normalize else num)
    return out.reshape(base.shape)


def test_ties_density_one_same_signs_is_weighted_mean_of_deltas():
    base = rnd(6, 5, seed=0)
    d = rnd(6, 5, seed=1).abs()
    deltas = [d * 0.5, d * 1.5, d * 1.0]
    w = [1.0, 2.0, 3.0]
    got = merge_deltas(base, deltas, w, consensus="sum", normalize=True)
    want = base.numpy() + sum(wi * di.numpy() for wi, di in zip(w, deltas, strict=True)) / sum(w)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_ties_full_method_matches_loop_reference():
    base = rnd(8, 8, seed=3)
    models = [base + 0.1 * rnd(8, 8, seed=10 + i) for i in range(3)]
    rho, w = 0.4, [0.3, 0.5, 0.2]
    trimmed = []
    for m in models:  # independent trim: keep the k largest |δ| by numpy sort
        d = (m - base).numpy().ravel()
        k = int(rho * d.size)
        keep = np.argsort(-np.abs(d), kind="stable")[:k]
        t = np.zeros_like(d)
        t[keep] = d[keep]
        trimmed.append(torch.from_numpy(t.reshape(8, 8)))
    want = ties_reference(base, trimmed, w, normalize=True, lam=1.0)
    job = Job("x", base.clone(), [m.clone() for m in models], [{"weight": x, "density": rho} for x in w],
              {"normalize": True, "lambda": 1.0, "rescale": False, "int8_mask": False})
    got = get_method("ties").merge(job)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_ties_count_consensus_and_chunking(monkeypatch):
    import sys

    from compress.merge.methods.stream import Sparse
    from compress.merge.methods.ties import merge_sparse

    monkeypatch.setattr(sys.modules["compress.merge.methods.stream"], "CHUNK", 3)
    base = torch.zeros(10)
    deltas = [torch.tensor([1., -1, 2, 0, 1, -3, 1, 1, -1, 0]), torch.tensor([1., -1, -5, 0, -1, 1, 1, -1, -1, 0]),
              torch.tensor([-1., 1, -5, 2, -1, 1, 0, -1, -1, 0])]
    w = [1.0, 1.0, 1.0]
    got = merge_sparse(base, [base + d for d in deltas], [Sparse()] * 3, w, consensus="count", normalize=True)
    ds = np.stack([d.numpy() for d in deltas])
    s = np.where(np.sign(ds).sum(0) >= 0, 1, -1)
    m = np.sign(ds) == s
    want = (ds * m).sum(0) / np.where(m.sum(0) == 0, 1, m.sum(0))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    # sum consensus on the same input differs at entry 2 (Σ = -8 -> negative wins)
    assert merge_sparse(base, deltas, [Sparse()] * 3, w, consensus="sum")[2] == -5


# ---- sparsifiers ----------------------------------------------------------------------------
def test_magnitude_keeps_k_largest_and_at_least_one():
    d = distinct(100, seed=4)
    kept = ref.magnitude(d.clone(), 0.3)
    want = np.where(np.abs(d.numpy()) > np.sort(np.abs(d.numpy()))[-31], d.numpy(), 0)
    np.testing.assert_array_equal(kept.numpy(), want)
    assert int((ref.magnitude(distinct(10), 0.01) != 0).sum()) == 1


def test_l1_rescale_preserves_norm():
    d = distinct(200, seed=5)
    kept = ref.magnitude(d.clone(), 0.5, rescale="l1")
    assert math.isclose(float(kept.abs().sum()), float(d.abs().sum()), rel_tol=1e-5)
    assert int((kept != 0).sum()) == 100


def test_breadcrumbs_rank_window_and_small_tensor_not_dropped():
    n = 1000
    d = distinct(n, seed=6)
    kept = ref.breadcrumbs(d.clone(), density=0.5, gamma=0.01)
    ranks = np.argsort(np.argsort(np.abs(d.numpy())))  # 0 = smallest
    n_top, n_bot = 10, n - 500 - 10
    want = np.where((ranks >= n_bot) & (ranks < n - n_top), d.numpy(), 0)
    np.testing.assert_array_equal(kept.numpy(), want)
    # numel < 1/γ: n_top = 0 -> the top entries stay (mergekit's old [n_bot:-0] slice dropped everything)
    small = distinct(64, seed=7)
    ks = ref.breadcrumbs(small.clone(), density=0.5, gamma=0.01)
    assert int((ks != 0).sum()) == 32
    assert float(ks.abs().max()) == float(small.abs().max())


def test_dare_seeded_order_independent_and_rescaled():
    d = rnd(300, 300, seed=8)
    a = ref.dare(d, 0.3, "inverse_density", tensor_generator(7, 1, "w"))
    b = ref.dare(d, 0.3, "inverse_density", tensor_generator(7, 1, "w"))
    torch.testing.assert_close(a, b)
    frac = float((a != 0).float().mean())
    assert abs(frac - 0.3) < 0.01
    kept = a != 0
    torch.testing.assert_close(a[kept], d[kept] / 0.3)
    c = ref.dare(d, 0.3, "l1", tensor_generator(7, 2, "w"))
    assert not torch.equal(c != 0, kept)
    assert math.isclose(float(c.abs().sum()), float(d.abs().sum()), rel_tol=1e-4)
    # order independence: the generator depends only on (seed, model, name)
    g1 = [tensor_generator(3, i, n) for i, n in [(0, "x"), (1, "y")]]
    g2 = [tensor_generator(3, i, n) for i, n in [(1, "y"), (0, "x")]][::-1]
    for x, y in zip(g1, g2, strict=True):
        assert torch.equal(torch.rand(5, generator=x), torch.rand(5, generator=y))


def test_della_probabilities_and_mask():
    row = distinct(11, seed=9)
    p = sp.della_probabilities(row, density=0.5, epsilon=0.1)
    ranks = np.argsort(np.argsort(np.abs(row.numpy())))
    np.testing.assert_allclose(p.numpy(), 0.4 + 0.2 * ranks / 10, rtol=1e-6)
    mat = torch.stack([distinct(50, seed=s) for s in range(40)])
    out = sp.della(mat, 0.5, 0.1, "inverse_density", tensor_generator(0, 0, "m"))
    probs = sp.della_probabilities(mat, 0.5, 0.1)
    kept = out != 0
    torch.testing.assert_close(out[kept], (mat / probs)[kept])
    assert abs(float(kept.float().mean()) - 0.5) < 0.03


# ---- slerp ----------------------------------------------------------------------------------
def test_slerp_endpoints_lerp_fallback_and_angle():
    a, b = rnd(16, 4, seed=1), rnd(16, 4, seed=2)
    torch.testing.assert_close(slerp(0.0, a, b), a)
    torch.testing.assert_close(slerp(1.0, a, b), b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(slerp(0.3, a, 2 * a), 0.7 * a + 0.3 * 2 * a)  # collinear -> lerp
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])
    got = slerp(0.5, e0, e1)
    s = math.sin(math.pi / 4)
    np.testing.assert_allclose(got.numpy(), [s, 3 * s], rtol=1e-6)
    # general: coefficients sin((1-t)Ω)/sinΩ, sin(tΩ)/sinΩ with Ω = angle between a and b
    an, bn = a.numpy().ravel(), b.numpy().ravel()
    om = math.acos(float(an @ bn / np.linalg.norm(an) / np.linalg.norm(bn)))
    want = (math.sin(0.25 * om) * an + math.sin(0.75 * om) * bn) / math.sin(om)
    np.testing.assert_allclose(slerp(0.75, a, b).numpy().ravel(), want, rtol=1e-4, atol=1e-6)


# ---- model stock ----------------------------------------------------------------------------
def test_model_stock_t_values():
    base = rnd(6, 6, seed=0)
    off = rnd(6, 6, seed=1)
    same = model_stock(base, [base + off, base + off])
    torch.testing.assert_close(same, base + off)  # identical offsets: c = 1 -> t = 1
    e0 = torch.zeros(4)
    e0[0] = 1
    e1 = torch.zeros(4)
    e1[1] = 1
    torch.testing.assert_close(model_stock(torch.zeros(4), [e0, e1]), torch.zeros(4))  # orthogonal: t = 0
    v = torch.tensor([1.0, 0.0])
    u = torch.tensor([math.cos(1.0), math.sin(1.0)])
    c = math.cos(1.0)
    t = float(model_stock_t(torch.zeros(2), [v, u]))
    assert math.isclose(t, 2 * c / (1 + c), rel_tol=1e-6)
    np.testing.assert_allclose(model_stock(torch.zeros(2), [v, u]).numpy(), t * (v + u).numpy() / 2, rtol=1e-6)


def test_model_stock_filter_wise_rows():
    base = torch.zeros(2, 2)
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = model_stock(base, [a, b], filter_wise=True)
    # row 0: identical -> t = 1 -> mean; row 1: orthogonal -> t = 0 -> base
    np.testing.assert_allclose(got.numpy(), [[1.0, 0.0], [0.0, 0.0]], atol=1e-7)


# ---- SCE ------------------------------------------------------------------------------------
def test_sce_variants_agree_at_tau_one_and_differ_below():
    base = rnd(64, 64, seed=0)
    ts = [base + 0.05 * rnd(64, 64, seed=i) for i in range(1, 4)]
    torch.testing.assert_close(sce(base, ts, 1.0, True), sce(base, ts, 1.0, False))
    up, fork = sce(base, ts, 0.1, True), sce(base, ts, 0.1, False)
    torch.testing.assert_close(sce(base, ts, 0.1), fork)  # FuseChat-2.0's variant is the default
    assert not torch.allclose(up, fork)
    frac_up = float(((up - base) != 0).float().mean())
    frac_fork = float(((fork - base) != 0).float().mean())
    assert abs(frac_up - 0.1) < 0.01 and frac_fork > 0.99


def sce_reference(base: np.ndarray, ds: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upstream SCE with the selection mask m given: (merged tensor, η)."""
    md = ds * m
    eta = (md ** 2).reshape(len(ds), -1).mean(1)
    eta = eta / eta.sum()
    s = np.where(md.sum(0) >= 0, 1, -1)
    ew = eta.reshape(-1, *[1] * base.ndim) * (np.sign(md) == s)
    return base + (md * ew).sum(0) / np.maximum(ew.sum(0), 1e-6), eta


def test_sce_matches_elementwise_reference():
    base = rnd(12, 10, seed=5)
    ts = [base + 0.5 * rnd(12, 10, seed=i) for i in range(6, 9)]
    tau = 0.3
    ds = np.stack([(t - base).numpy() for t in ts])
    var = ds.var(axis=0)
    k = int(np.count_nonzero(var) * tau)
    thr = np.sort(var.ravel())[-k]
    m = (var >= thr).astype(np.float32)
    want, eta = sce_reference(base.numpy(), ds, m)
    np.testing.assert_allclose(sce(base, ts, tau, True).numpy(), want, rtol=1e-5, atol=1e-6)
    # fork: η from the masked deltas, but the full deltas are merged; zero divisor -> 1
    s2 = np.where(ds.sum(0) >= 0, 1, -1)
    e2 = (np.sign(ds) == s2)
    ew2 = eta[:, None, None] * e2
    div = ew2.sum(0)
    want2 = base.numpy() + (ds * ew2).sum(0) / np.where(div == 0, 1, div)
    np.testing.assert_allclose(sce(base, ts, tau, False).numpy(), want2, rtol=1e-5, atol=1e-6)


# ---- VaRM -----------------------------------------------------------------------------------
def test_varm_weights_proportional_to_mean_squared_change():
    base = rnd(20, 30, seed=0)
    t1, t2 = base + 0.1 * rnd(20, 30, seed=1), base + 0.3 * rnd(20, 30, seed=2)
    s = [squared_change(base, t)[0] / base.numel() for t in (t1, t2)]
    ref = [float(((t.double() - base.double()) ** 2).mean()) for t in (t1, t2)]
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    w = varm_weights(s)
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-12)
    np.testing.assert_allclose(w.numpy(), np.array(ref) / sum(ref), rtol=1e-12)
    merged = varm_merge(base, [t1, t2], w.float())
    want = (w[0].item() * t1.double() + w[1].item() * t2.double()).numpy()  # Σ W θ_j with Σ W = 1
    np.testing.assert_allclose(merged.numpy(), want, rtol=1e-5, atol=1e-6)


def test_varm_zero_statistic_and_fallbacks():
    base = rnd(5, 5, seed=0)
    t1 = base.clone()                 # target that did not move: weight 0 (paper)
    t2 = base + rnd(5, 5, seed=1)
    w = varm_weights([0.0, 2.0])
    assert w.tolist() == [0.0, 1.0]
    torch.testing.assert_close(varm_merge(base, [t1, t2], w.float()), t2)
    assert varm_weights([0.0, 0.0]).tolist() == [0.0, 0.0]          # all zero: the pivot
    torch.testing.assert_close(varm_merge(base, [t1, t1], varm_weights([0.0, 0.0]).float()), base)
    assert varm_weights([0.0, 2.0], zero_fallback="uniform").tolist() == [0.5, 0.5]  # the script's rule
    sm = varm_weights([1.0, 2.0], norm="softmax", temperature=0.5)
    np.testing.assert_allclose(sm.numpy(), np.exp([2.0, 4.0]) / np.exp([2.0, 4.0]).sum(), rtol=1e-12)


def test_registry_covers_the_issue_methods():
    want = {"linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
            "della", "della_linear", "slerp", "model_stock", "sce", "varm"}
    from compress.merge.methods import METHODS
    assert want <= set(METHODS)
    for name in want:
        assert METHODS[name].merge.__doc__ is not None or callable(METHODS[name].merge)


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_random_methods_reproducible(name):
    base = rnd(30, 30, seed=0)
    models = [base + 0.1 * rnd(30, 30, seed=i) for i in (1, 2)]
    params = [{"weight": 0.5, "density": 0.5, "epsilon": 0.1}, {"weight": 0.5, "density": 0.5, "epsilon": 0.1}]
    shared = {"normalize": True, "lambda": 1.0, "rescale": True, "int8_mask": False}
    m = get_method(name)

    def run(seed):
        mp = [{k: v for k, v in p.items() if k in m.per_model} for p in params]
        return m.merge(Job("layer.w", base.clone(), [x.clone() for x in models], mp, shared, seed, [1, 2]))
    torch.testing.assert_close(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_magnitude_plan_keeps_the_sorted_selection_with_ties():
    d = (rnd(20000, seed=11) * 50).round() / 50  # many equal magnitudes: tie order matters
    want = ref.magnitude(d.clone(), 0.4) != 0
    assert int(want.sum()) == 8000
    assert torch.equal(sp.magnitude_plan(d.clone(), 0.4).keep, want.reshape(-1))


# ---- chunked evaluation on stored-dtype inputs --------------------------------------------------
def test_bf16_inputs_tiny_chunks_match_fp32_formulas(monkeypatch):
    """Inputs stay bf16 and every method works over 7-element chunks: same values as the formulas on
    the fp32 upcast of the inputs (chunk boundaries fall inside rows and inside masks)."""
    import sys

    monkeypatch.setattr(sys.modules["compress.merge.methods.stream"], "CHUNK", 7)
    base = distinct(60, seed=1).reshape(6, 10).bfloat16()
    models = [(base.float() + distinct(60, seed=2 + i).reshape(6, 10) * 0.5).bfloat16() for i in range(3)]
    b32, m32 = base.float(), [m.float() for m in models]
    w = [0.3, 0.5, 0.2]
    # TIES, density 0.5: keep the 30 largest |δ| per model (distinct: no ties), elect, disjoint mean
    trimmed = []
    for m in m32:
        d = (m - b32).numpy().ravel()
        keep = np.argsort(-np.abs(d), kind="stable")[:30]
        t = np.zeros_like(d)
        t[keep] = d[keep]
        trimmed.append(torch.from_numpy(t.reshape(6, 10)))
    job = Job("x", base, list(models), [{"weight": x, "density": 0.5} for x in w],
              {"normalize": True, "lambda": 1.0, "rescale": False, "int8_mask": False})
    got = get_method("ties").merge(job)
    np.testing.assert_allclose(got.numpy(), ties_reference(b32, trimmed, w), rtol=1e-5, atol=1e-6)
    assert all(m.dtype == torch.bfloat16 for m in models)  # inputs untouched
    # breadcrumbs (no consensus): ranks [n_bot, numel − n_top) of |δ| ascending, task arithmetic
    job = Job("x", base, [], [{"weight": x, "density": 0.8, "gamma": 0.1} for x in w],
              {"normalize": False, "lambda": 1.0, "rescale": False, "int8_mask": False}, load=lambda i: models[i])
    want = b32.clone()
    for x, m in zip(w, m32, strict=True):
        d = (m - b32).numpy().ravel()
        ranks = np.argsort(np.argsort(np.abs(d)))
        keep = (ranks >= 60 - 48 - 6) & (ranks < 60 - 6)
        want += x * torch.from_numpy(np.where(keep, d, 0).reshape(6, 10))
    np.testing.assert_allclose(get_method("breadcrumbs").merge(job).numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    # linear, written in bf16
    job = Job("x", None, [], [{"weight": x} for x in w], {"normalize": True}, load=lambda i: models[i],
              out_dtype=torch.bfloat16)
    got = get_method("linear").merge(job)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, (sum(x * m for x, m in zip(w, m32, strict=True)) / sum(w)).bfloat16())
    # slerp and model stock against their formulas on the upcast inputs
    an, bn = b32.numpy().ravel().astype(np.float64), m32[0].numpy().ravel().astype(np.float64)
    om = math.acos(float(an @ bn / np.linalg.norm(an) / np.linalg.norm(bn)))
    want = (math.sin(0.6 * om) * an + math.sin(0.4 * om) * bn) / math.sin(om)
    np.testing.assert_allclose(slerp(0.4, base, models[0]).numpy().ravel(), want, rtol=1e-5, atol=1e-6)
    ds = [(m - b32).numpy().ravel().astype(np.float64) for m in m32]
    cos = [ds[i] @ ds[j] / np.linalg.norm(ds[i]) / np.linalg.norm(ds[j]) for i in range(3) for j in range(i + 1, 3)]
    c = float(np.mean(cos))
    t = 3 * c / (1 + 2 * c)
    want = t * np.mean([m.numpy() for m in m32], axis=0) + (1 - t) * b32.numpy()
    np.testing.assert_allclose(model_stock(base, models).numpy(), want, rtol=1e-4, atol=1e-5)


def test_sce_index_tie_break_selects_by_variance_then_position():
    base = (rnd(4000, seed=7) * 8).round() / 8  # exact differences below
    ts = [base + 0.25 * rnd(4000, seed=i).sign() * (rnd(4000, seed=10 + i) > 0) for i in range(3)]  # few variances
    ds = np.stack([(t - base).numpy() for t in ts])
    var = ds.var(axis=0)
    k = int(np.count_nonzero(var) * 0.3)
    assert (var == np.sort(var)[::-1][k - 1]).sum() > 100  # many ties at the threshold
    m = first_reference(var, k, True).astype(np.float32)
    want, _ = sce_reference(base.numpy(), ds, m)
    np.testing.assert_allclose(sce(base, ts, 0.3, True, tie_break="index").numpy(), want, rtol=1e-5, atol=1e-6)


# ---- SCE: the variants and the zero cases -----------------------------------------------------
def test_sce_fusechat2_finite_when_nothing_changed_or_k_is_zero():
    """The old zero test `abs(total) < 0.0` was never true: η = 0/0 and an all-NaN tensor."""
    base = rnd(16, 8, seed=1)
    same = sce(base, [base.clone(), base.clone(), base.clone()], 0.1, mask_deltas=False)
    assert bool(torch.isfinite(same).all())
    torch.testing.assert_close(same, base)
    # k = ⌊τ · nnz(v)⌋ = 0: M = 0, so η is uniform over the (full, fork) deltas
    ts = [base + 0.01 * rnd(16, 8, seed=s) for s in (2, 3, 4)]
    got = sce(base, ts, 0.005, mask_deltas=False)
    want = sce_fork_reference(base.numpy(), [t.numpy() for t in ts], 0.005)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)
    # one tensor-wide equal set: only one target moved
    one = sce(base, [base.clone(), ts[0], base.clone()], 0.5, mask_deltas=False)
    np.testing.assert_allclose(one.numpy(), sce_fork_reference(base.numpy(), [base.numpy(), ts[0].numpy(),
                                                                               base.numpy()], 0.5), rtol=1e-5, atol=1e-7)
    assert bool(torch.isfinite(sce(base, [base.clone()] * 2, 0.0, mask_deltas=False)).all())


def test_sce_eta_zero_tests_of_both_variants():
    # FuseChat-2.0: exact zero only; fine-tuning-sized statistics keep their weighting
    np.testing.assert_allclose(sce_eta([1e-8, 3e-8], mask_deltas=False).numpy(), [0.25, 0.75], rtol=1e-6)
    assert sce_eta([0.0, 0.0], mask_deltas=False).tolist() == [0.5, 0.5]
    # mergekit: uniform below a sum of 1e-6, which such statistics are (documented, kept for parity)
    assert sce_eta([1e-8, 3e-8], mask_deltas=True).tolist() == [0.5, 0.5]
    np.testing.assert_allclose(sce_eta([1e-6, 3e-6], mask_deltas=True).numpy(), [0.25, 0.75], rtol=1e-6)
