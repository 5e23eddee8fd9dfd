"""FuseChat-3.0 and WRPO data from scored samples: pure functions over one prompt's responses.

A response carries `score` = {"verifier": 1.0 | 0.0, "reward": float} (either or both). Its rank key
is (verifier, reward): with a verifier, any right response outranks any wrong one, and the reward
orders responses within each group; with a verifier alone all right (or all wrong) responses tie.
A response *passes* when the verifier says right; with no verifier every response passes.

Per prompt (FuseChat-3.0, arXiv 2503.04222 §3; WRPO, ICLR 2025):
- SFT: the best passing response over all sources; none passing -> dropped (`all_fail`).
- DPO pair, chosen and rejected from the **same** source: with a verifier the best right response
  against the worst wrong one (`no_contrast` when a source has no right or no wrong response); with a
  reward, the best against the worst, kept when their reward margin lies in the window [lo, hi] of
  that reward's units (`margin_outside`) and is positive (`margin_zero`). Of the sources with a valid
  pair one is kept (`pairs='one'`: the source whose chosen ranks highest) or every one (`'all'`).
  A prompt on which every response of every source fails is dropped (`all_fail`).
- WRPO triple (y_ws, y_wt, y_l): y_ws the SFT response, y_wt the target's best and y_l its worst
  sample; kept when y_ws passes and y_wt strictly outranks y_l (`no_source_pass`, `target_tie`).
Equal keys are broken by the tie rule: `first` (model order, then sample order), `shortest` (fewest
characters, then first) or `random` (seeded by the run seed, the prompt index and the purpose).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

TIE_RULES = ("random", "first", "shortest")
PAIR_MODES = ("one", "all")


@dataclass(frozen=True)
class Response:
    model: str
    sample: int  # sample index within its model
    order: int  # model position (sources first, in the order given; the target last)
    text: str
    score: dict[str, float]

    def key(self) -> tuple[float, ...]:
        return tuple(self.score[k] for k in ("verifier", "reward") if k in self.score)

    @property
    def passes(self) -> bool:
        return self.score.get("verifier", 1.0) == 1.0


@dataclass(frozen=True)
class Rules:
    tie: str = "random"
    margin: tuple[float, float] = (0.0, math.inf)  # reward-margin window [lo, hi], in the reward's own units
    pairs: str = "one"
    seed: int = 42


def _tie_rank(r: Response, rule: str, salt: str) -> tuple:
    if rule == "shortest":
        return (len(r.text), r.order, r.sample)
    if rule == "random":
        h = hashlib.sha256(f"{salt}/{r.order}/{r.sample}".encode()).digest()
        return (h,)
    return (r.order, r.sample)


def pick(cands: list[Response], rules: Rules, salt: str, worst: bool = False) -> tuple[Response, int]:
    """The best (or worst) response of `cands` by key, ties broken by `rules.tie`; and how many tied."""
    target = min(c.key() for c in cands) if worst else max(c.key() for c in cands)
    tied = [c for c in cands if c.key() == target]
    seed = f"{rules.seed}/{salt}"
    return min(tied, key=lambda r: _tie_rank(r, rules.tie, seed)), len(tied)


@dataclass
class Outcome:
    """What one prompt gives: records to keep, and the reasons for what was dropped."""

    sft: dict[str, Any] | None = None
    pairs: list[dict[str, Any]] = field(default_factory=list)
    wrpo: dict[str, Any] | None = None
    dropped: dict[str, str] = field(default_factory=dict)  # set -> reason
    source_drops: dict[str, str] = field(default_factory=dict)  # source -> DPO reason


def _margin(ch: Response, rj: Response) -> float | None:
    return ch.score["reward"] - rj.score["reward"] if "reward" in ch.score else None


def source_pair(resps: list[Response], rules: Rules, salt: str) -> tuple[tuple[Response, Response] | None, str]:
    """The DPO pair of one source's responses, or (None, reason)."""
    verified = "verifier" in resps[0].score
    if verified:
        good = [r for r in resps if r.passes]
        bad = [r for r in resps if not r.passes]
        if not good or not bad:
            return None, "no_contrast"
        ch, _ = pick(good, rules, salt + "/chosen")
        rj, _ = pick(bad, rules, salt + "/rejected", worst=True)
    else:
        ch, _ = pick(resps, rules, salt + "/chosen")
        rj, _ = pick(resps, rules, salt + "/rejected", worst=True)
    m = _margin(ch, rj)
    if m is not None:
        if not verified and m <= 0:
            return None, "margin_zero"
        lo, hi = rules.margin
        if not lo <= m <= hi:
            return None, "margin_outside"
    if ch.text.strip() == rj.text.strip():
        return None, "identical"
    return (ch, rj), ""


def _scores(r: Response) -> dict[str, Any]:
    return {"model": r.model, "sample": r.sample, **r.score}


def select(index: int, prompt: Any, sources: list[list[Response]], target: list[Response] | None,
           rules: Rules) -> Outcome:
    """SFT record, DPO pairs and WRPO triple of one prompt (see the module doc)."""
    out = Outcome()
    salt = f"{index}"
    every = [r for rs in sources for r in rs]
    passing = [r for r in every if r.passes]
    if not passing:
        out.dropped["sft"] = "all_fail"
    else:
        best, tied = pick(passing, rules, salt + "/sft")
        out.sft = {"prompt": prompt, "chosen": best.text, "source": best.model, "tied": tied,
                   "scores": {"chosen": _scores(best)}}
    if not passing:
        out.dropped["dpo"] = "all_fail"
    else:
        cands = []
        for rs in sources:
            if not rs:
                continue
            pair, why = source_pair(rs, rules, f"{salt}/{rs[0].model}")
            if pair is None:
                out.source_drops[rs[0].model] = why
            else:
                cands.append(pair)
        if not cands:
            out.dropped["dpo"] = "no_pair"
        else:
            chosen = [c for c, _ in cands]
            keep = cands if rules.pairs == "all" else [cands[chosen.index(pick(chosen, rules, salt + "/pair")[0])]]
            for ch, rj in keep:
                rec = {"prompt": prompt, "chosen": ch.text, "rejected": rj.text, "source": ch.model,
                       "scores": {"chosen": _scores(ch), "rejected": _scores(rj)}}
                m = _margin(ch, rj)
                if m is not None:
                    rec["margin"] = m
                out.pairs.append(rec)
            for ch, _ in cands:
                if not any(k[0] is ch for k in keep):
                    out.source_drops[ch.model] = "other_source_chosen"
    if target is not None:
        out.wrpo, why = wrpo_triple(prompt, out.sft, passing, target, rules, salt)
        if out.wrpo is None:
            out.dropped["wrpo"] = why
    return out


def wrpo_triple(prompt: Any, sft: dict[str, Any] | None, passing: list[Response], target: list[Response],
                rules: Rules, salt: str) -> tuple[dict[str, Any] | None, str]:
    """(y_ws, y_wt, y_l) of one prompt as a record, or (None, reason)."""
    if sft is None or not passing:
        return None, "no_source_pass"
    if not target:
        return None, "no_target_sample"
    wt, _ = pick(target, rules, salt + "/wt")
    lo, _ = pick(target, rules, salt + "/l", worst=True)
    if not wt.key() > lo.key():
        return None, ("target_all_pass" if wt.passes and "verifier" in wt.score else
                      "target_all_fail" if "verifier" in wt.score else "target_tie")
    ws = next(r for r in passing if r.model == sft["source"] and r.text == sft["chosen"])
    return {"prompt": prompt, "source_chosen": ws.text, "chosen": wt.text, "rejected": lo.text, "source": ws.model,
            "scores": {"source_chosen": _scores(ws), "chosen": _scores(wt), "rejected": _scores(lo)}}, ""
