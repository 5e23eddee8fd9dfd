"""FuseChat-3.0 / WRPO selection on hand-built scored responses (the rules of the module doc)."""

from __future__ import annotations

import math

from compress.fuse.select import Response, Rules, pick, select


def R(model, k, order, text, **score):
    return Response(model, k, order, text, score)


def test_verifier_pairs_are_same_source_right_vs_wrong():
    a = [R("a", 0, 0, "a-wrong", verifier=0.0), R("a", 1, 0, "a-right", verifier=1.0)]
    b = [R("b", 0, 1, "b-right", verifier=1.0), R("b", 1, 1, "b-right2", verifier=1.0)]  # no contrast
    out = select(0, "q", [a, b], None, Rules(tie="first"))
    assert [(p["chosen"], p["rejected"], p["source"]) for p in out.pairs] == [("a-right", "a-wrong", "a")]
    assert out.source_drops == {"b": "no_contrast"}
    assert out.sft["chosen"] == "a-right" and out.sft["tied"] == 3  # three right responses tie; first = a's
    assert out.wrpo is None and "wrpo" not in out.dropped  # no target given


def test_all_fail_prompt_is_dropped_everywhere():
    a = [R("a", 0, 0, "x", verifier=0.0)]
    b = [R("b", 0, 1, "y", verifier=0.0)]
    t = [R("t", 0, 2, "r", verifier=1.0), R("t", 1, 2, "w", verifier=0.0)]
    out = select(3, "q", [a, b], t, Rules())
    assert out.sft is None and out.pairs == [] and out.wrpo is None
    assert out.dropped == {"sft": "all_fail", "dpo": "all_fail", "wrpo": "no_source_pass"}


def test_reward_margin_window_in_the_reward_units():
    a = [R("a", k, 0, f"a{k}", reward=r) for k, r in enumerate([0.0, 0.5, 3.0])]  # margin 3.0
    b = [R("b", k, 1, f"b{k}", reward=r) for k, r in enumerate([1.0, 1.4])]  # margin 0.4
    assert [p["source"] for p in select(0, "q", [a, b], None, Rules(margin=(0.0, math.inf), pairs="all")).pairs] == ["a", "b"]
    out = select(0, "q", [a, b], None, Rules(margin=(0.1, 1.0), pairs="all"))
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in out.pairs] == [("b1", "b0", 0.3999999999999999)]
    assert out.source_drops == {"a": "margin_outside"}
    one = select(0, "q", [a, b], None, Rules(pairs="one"))  # one pair: the source whose chosen ranks highest
    assert [p["source"] for p in one.pairs] == ["a"] and one.source_drops == {"b": "other_source_chosen"}
    flat = [R("c", k, 0, f"c{k}", reward=1.0) for k in range(2)]
    assert select(0, "q", [flat], None, Rules()).source_drops == {"c": "margin_zero"}


def test_verifier_and_reward_take_the_reward_inside_each_group():
    a = [R("a", 0, 0, "right-low", verifier=1.0, reward=0.1), R("a", 1, 0, "right-high", verifier=1.0, reward=0.9),
         R("a", 2, 0, "wrong-high", verifier=0.0, reward=2.0), R("a", 3, 0, "wrong-low", verifier=0.0, reward=-1.0)]
    (pair,) = select(0, "q", [a], None, Rules()).pairs
    assert (pair["chosen"], pair["rejected"], pair["margin"]) == ("right-high", "wrong-low", 1.9)


def test_tie_rules():
    cands = [R("a", 0, 0, "long answer", verifier=1.0), R("b", 0, 1, "short", verifier=1.0),
             R("a", 1, 0, "x", verifier=0.0)]
    assert pick(cands, Rules(tie="first"), "s")[0].text == "long answer"
    assert pick(cands, Rules(tie="shortest"), "s")[0].text == "short"
    picks = {pick(cands, Rules(tie="random", seed=s), "s")[0].text for s in range(40)}
    assert picks == {"long answer", "short"}  # random over the tied best only, never the wrong one
    assert pick(cands, Rules(tie="random", seed=7), "s") == pick(cands, Rules(tie="random", seed=7), "s")
    assert pick(cands, Rules(), "s", worst=True)[0].text == "x"


def test_wrpo_triple():
    src = [[R("a", 0, 0, "src-right", verifier=1.0), R("a", 1, 0, "src-wrong", verifier=0.0)]]
    tgt = [R("t", 0, 1, "t-wrong", verifier=0.0), R("t", 1, 1, "t-right", verifier=1.0)]
    out = select(0, "q", src, tgt, Rules())
    w = out.wrpo
    assert (w["source_chosen"], w["chosen"], w["rejected"], w["source"]) == ("src-right", "t-right", "t-wrong", "a")
    all_right = [R("t", k, 1, f"t{k}", verifier=1.0) for k in range(2)]
    assert select(0, "q", src, all_right, Rules()).dropped["wrpo"] == "target_all_pass"
    all_wrong = [R("t", k, 1, f"t{k}", verifier=0.0) for k in range(2)]
    assert select(0, "q", src, all_wrong, Rules()).dropped["wrpo"] == "target_all_fail"
    rw = [R("t", k, 1, f"t{k}", reward=r) for k, r in enumerate([0.2, -0.3, 0.2])]
    rsrc = [[R("a", 0, 0, "s", reward=5.0)]]
    w = select(0, "q", rsrc, rw, Rules(tie="first")).wrpo
    assert (w["chosen"], w["rejected"]) == ("t0", "t1")
