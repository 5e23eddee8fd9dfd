"""Exact rank selections: the histogram k-th value and `tie_break: index` plans against sorts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.merge.methods import sparsify as sp
from compress.merge.methods.select import first_in_order
from tests.merge.reference import first_reference


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("descending", [True, False])
def test_first_by_magnitude_is_value_then_position_order(descending):
    a = ((rnd(50000, seed=4) * 30).round().abs() / 30).reshape(-1)  # few distinct values: ties everywhere
    for r in (0, 1, 7, 12345, 25000, 49999, 50000):
        got = first_in_order(a, r, descending).numpy()
        np.testing.assert_array_equal(got, first_reference(a.numpy(), r, descending), err_msg=str(r))


def test_index_tie_break_plans_match_reference_and_sort_plans_off_ties():
    d = (rnd(40000, seed=5) * 40).round() / 40
    a = d.abs().numpy()
    n, k = d.numel(), int(0.4 * d.numel())
    plan = sp.magnitude_plan(d.clone(), 0.4, "l1", tie_break="index")
    want = first_reference(a, k, True)
    np.testing.assert_array_equal(plan.keep.numpy(), want)
    assert float(plan.scale) == pytest.approx(a.sum() / a[want].sum(), rel=1e-6)
    # breadcrumbs: ascending ranks [n_bot, n - n_top)
    n_bot, n_top = sp.breadcrumbs_cut(n, 0.5, 0.02)
    bc = sp.breadcrumbs_plan(d.clone(), 0.5, 0.02, "none", tie_break="index")
    np.testing.assert_array_equal(bc.keep.numpy(), first_reference(a, n - n_top, False) & ~first_reference(a, n_bot, False))
    # against mergekit's sort order: the same entries off the threshold's ties, some others on them
    srt = sp.magnitude_plan(d.clone(), 0.4, "none").keep.numpy()
    t = np.sort(a)[::-1][k - 1]
    assert srt.sum() == k and (srt == want)[a != t].all() and not (srt == want).all()
    with pytest.raises(ValueError, match="tie_break"):
        sp.magnitude_plan(d.clone(), 0.4, tie_break="random")



# ---- exact rank selection without a sort ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_histogram_kth_value_matches_kthvalue_and_sort(dtype):
    from compress.merge.methods.select import kth_smallest

    g = torch.Generator().manual_seed(3)
    a = (torch.randn(300_007, generator=g) * 0.02).to(dtype).float().abs()  # bf16 values: heavy ties
    a[:50] = 0.0
    a[50:60] = float(torch.finfo(torch.float32).tiny) / 4  # subnormals order too
    srt = torch.sort(a).values
    for j in (1, 2, 50, 51, 61, 1000, 150_000, 299_999, 300_007):
        t, below, equal = kth_smallest(a, j)
        assert t == float(torch.kthvalue(a, j).values) == float(srt[j - 1])
        assert below == int((a < t).sum()) and equal == int((a == t).sum())


def test_first_in_order_on_device_agnostic_ties_and_plans():
    a = ((rnd(70_000, seed=9) * 12).round().abs() / 12)
    for r in (1, 35_000, 69_999):
        for desc in (True, False):
            np.testing.assert_array_equal(first_in_order(a, r, desc).numpy(), first_reference(a.numpy(), r, desc))
    # the plan on a tensor larger than one counting chunk, with the l1 rescale
    d = (rnd(600_000, seed=2) * 40).round() / 40
    plan = sp.magnitude_plan(d.clone(), 0.3, "l1", tie_break="index")
    k = int(0.3 * d.numel())
    want = first_reference(d.abs().numpy(), k, True)
    np.testing.assert_array_equal(plan.keep.numpy(), want)
    absd = d.abs().double().numpy()
    assert float(plan.scale) == pytest.approx(absd.sum() / absd[want].sum(), rel=1e-6)
