"""Greedy block search: BlockPruner (Zhong et al., arXiv 2406.10594, Algorithm 1; official
`block_search_by_ppl`), its exact speed-ups, and an approximate lazy variant.

Each step scores every remaining candidate c by the calibration loss L(S ∪ {c}) (equivalently the
perplexity exp(L / tokens), see `score.py`), commits c* = argmin over the key (criterion(L), candidate
index) - ties go to the first candidate in the official order (attention blocks of layers 0..L-1,
then MLP blocks) - and repeats. One run yields the whole nested removal sequence.

Searches (`--search`), all over an `Evaluator` (evaluators.py):
- `naive`: the faithful loop; every candidate scored in the official order, none abandoned.
- `fast` (default, exact): candidates are scored best-first in the order of the previous step's
  scores (first step: deepest first, since deep blocks are cheap to score from the cache and are
  usually the least important), and a candidate whose running loss is strictly above the best
  complete candidate of the step is abandoned (exact: partial sums only grow). Same sequence as naive.
- `lazy` (approximate): only the M best candidates of the previous scores are re-scored, with a full
  re-score every R steps; an abandoned candidate keeps its partial score, a lower bound, as its stale
  score. Steps where an unscored candidate's stale score beat the choice are reported as places
  where the exact search could differ.

Criteria (`--criterion`, registry.py): `ppl` (the paper's) or `ppl-per-param`. Both keys are
non-decreasing in the partial loss, so early abandoning stays exact for both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from compress.errors import CompressError
from compress.prune.evaluators import Evaluator
from compress.prune.registry import CRITERIA, SEARCHES, ppl_of_loss
from compress.prune.score import Block
from compress.prune.units import Unit

__all__ = ["GreedySearch", "SearchResult", "StepRecord", "StopRule"]


@dataclass
class StopRule:
    """Stop after `blocks` steps, once the removed share reaches `ratio`, before `max_ppl` is exceeded,
    or after `limit` steps (the most the model allows: one block must stay)."""

    blocks: int | None = None
    ratio: float | None = None
    max_ppl: float | None = None
    limit: int | None = None

    def reached(self, steps: int, ratio: float) -> str | None:
        if self.blocks is not None and steps >= self.blocks:
            return f"{steps} removed"
        if self.ratio is not None and ratio >= self.ratio:
            return f"ratio {ratio:.4f} >= {self.ratio}"
        if self.limit is not None and steps >= self.limit:
            return "one block left: the model keeps at least one"
        return None


@dataclass
class StepRecord:
    step: int
    unit: str
    blocks: list[Block]
    loss: float
    ppl: float
    params_removed: int  # cumulative, this search
    params_left: int
    ratio: float
    evaluated: int  # candidates scored to completion
    abandoned: int  # candidates stopped early (exact bound)
    seconds: float
    scores: dict[str, dict] = field(default_factory=dict)  # name -> {"ppl", "complete"}
    lazy: dict | None = None  # {"rescored": [...], "could_differ": [...], "full": bool}

    def as_dict(self) -> dict:
        d = asdict(self)
        d["blocks"] = [list(b) for b in self.blocks]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StepRecord:
        d = dict(d)
        d["blocks"] = [tuple(b) for b in d["blocks"]]
        return cls(**d)


@dataclass
class SearchResult:
    dense_loss: float
    dense_ppl: float
    tokens: int
    steps: list[StepRecord]
    stopped: str
    seconds: float
    total_params: int

    @property
    def removed(self) -> list[Block]:
        return [b for s in self.steps for b in s.blocks]

    @property
    def sequence(self) -> list[str]:
        return [s.unit for s in self.steps]

    @property
    def could_differ(self) -> list[int]:
        return [s.step for s in self.steps if s.lazy and s.lazy.get("could_differ")]


def select_prefix(steps: list[StepRecord], stop: StopRule) -> list[StepRecord]:
    """The removals the stop rule asks for: one greedy run gives the whole nested sequence."""
    out = []
    for s in steps:
        if stop.max_ppl is not None and s.ppl > stop.max_ppl:
            break
        out.append(s)
        if stop.reached(len(out), s.ratio):
            break
    return out


@dataclass
class _Best:
    """The best complete candidate of a step so far, by (key, candidate index)."""

    unit: Unit | None = None
    key: float = math.inf
    loss: float = math.nan

    def offer(self, unit: Unit, key: float, loss: float) -> None:
        if self.unit is None or (key, unit.index) < (self.key, self.unit.index):
            self.unit, self.key, self.loss = unit, key, loss


class GreedySearch:
    """Iterative greedy removal over `units` (resumable: `restore` replays committed steps)."""

    def __init__(self, evaluator: Evaluator, units: list[Unit], *, stop: StopRule, total_params: int,
                 criterion: str = "ppl", search: str = "fast", lazy_m: int = 8, lazy_every: int = 0,
                 fixed_order: list[Unit] | None = None,
                 on_step: Callable[[GreedySearch], None] | None = None):
        if search not in SEARCHES:
            raise CompressError(f"unknown search {search!r}: choose one of {', '.join(SEARCHES)}")
        if criterion not in CRITERIA:
            raise CompressError(f"unknown criterion {criterion!r}: choose one of {', '.join(CRITERIA)}")
        self.ev = evaluator
        self.units = units
        self.stop = stop
        self.total_params = total_params
        self.criterion = CRITERIA[criterion]
        self.search = search
        self.lazy_m = lazy_m
        self.lazy_every = lazy_every
        self.fixed_order = fixed_order  # one-shot methods: the ranking, scored one unit per step
        self.on_step = on_step
        self.steps: list[StepRecord] = []
        self.prev_keys: dict[str, float] = {}
        self.stale: dict[str, float] = {}  # lazy: latest key of each unit
        self.removed_names: set[str] = set()
        self.dense_loss: float | None = None
        self.seconds = 0.0

    # -- state for resume
    def state(self) -> dict:
        return {"dense_loss": self.dense_loss, "steps": [s.as_dict() for s in self.steps],
                "prev_keys": self.prev_keys, "stale": self.stale, "seconds": self.seconds}

    def restore(self, state: dict) -> None:
        try:
            self.dense_loss = float(state["dense_loss"])
            self.steps = [StepRecord.from_dict(s) for s in state["steps"]]
            self.prev_keys = {k: float(v) for k, v in state.get("prev_keys", {}).items()}
            self.stale = {k: float(v) for k, v in state.get("stale", {}).items()}
            self.seconds = float(state.get("seconds", 0.0))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CompressError("the resume file's search state is malformed: delete it and start again") from None
        by_name = {u.name: u for u in self.units}
        done = []
        for s in self.steps:
            if s.unit not in by_name or s.unit in {u.name for u in done}:
                raise CompressError(f"the resume file removes {s.unit!r}, which is not a candidate here")
            done.append(by_name[s.unit])
        self.ev.commit(done)
        self.removed_names = {u.name for u in done}

    # -- the loop
    def run(self) -> SearchResult:
        tokens = self.ev.tokens
        if self.dense_loss is None:
            self.dense_loss = self.ev.current_loss()
        while True:
            removed_params = self.steps[-1].params_removed if self.steps else 0
            stopped = self.stop.reached(len(self.steps), removed_params / self.total_params)
            if stopped:
                break
            pool = self.fixed_order if self.fixed_order is not None else self.units
            remaining = [u for u in pool if u.name not in self.removed_names]
            if self.fixed_order is not None:
                remaining = remaining[:1]
            if not remaining:
                stopped = "no candidates left"
                break
            rec = self._step(remaining, removed_params)
            if rec is None:
                stopped = f"next removal would exceed --max-ppl {self.stop.max_ppl}"
                break
            self.steps.append(rec)
            self.seconds += rec.seconds
            if self.on_step is not None:
                self.on_step(self)
        dense = self.dense_loss
        return SearchResult(dense_loss=dense, dense_ppl=ppl_of_loss(dense, tokens), tokens=tokens,
                            steps=self.steps, stopped=stopped, seconds=self.seconds,
                            total_params=self.total_params)

    def _order(self, remaining: list[Unit]) -> list[Unit]:
        if self.search == "naive" or self.fixed_order is not None:
            return remaining
        if self.prev_keys:
            return sorted(remaining, key=lambda u: (self.prev_keys.get(u.name, math.inf), u.index))
        return sorted(remaining, key=lambda u: (-u.first, u.index))  # first step: deepest first

    def _todo(self, k: int, remaining: list[Unit]) -> tuple[list[Unit], dict | None]:
        """The candidates this step scores, and the lazy search's record of the step."""
        if self.search != "lazy" or self.fixed_order is not None:
            return self._order(remaining), None
        full = (k == 1 or not self.stale or (self.lazy_every > 0 and (k - 1) % self.lazy_every == 0)
                or len(remaining) <= self.lazy_m)
        if full:
            todo = self._order(remaining)
        else:
            todo = sorted(remaining, key=lambda u: (self.stale.get(u.name, -math.inf), u.index))[: self.lazy_m]
        return todo, {"full": full, "rescored": [u.name for u in todo]}

    def _step(self, remaining: list[Unit], removed_params: int) -> StepRecord | None:
        t0 = time.perf_counter()
        k = len(self.steps) + 1
        tokens = self.ev.tokens
        ppl_s = ppl_of_loss(self.steps[-1].loss if self.steps else self.dense_loss, tokens)

        def key(u: Unit, loss: float) -> float:
            return self.criterion.key(loss, u.params, tokens, ppl_s)

        todo, lazy_info = self._todo(k, remaining)
        best = _Best()
        abandon = self.search != "naive" and self.fixed_order is None

        def bound(u: Unit, partial: float) -> bool:
            return best.unit is not None and key(u, partial) > best.key

        scores: dict[str, dict] = {}
        abandoned = 0
        for u, loss, complete in self.ev.scores(todo, bound if abandon else None, f"step {k}: {len(todo)} candidates"):
            scores[u.name] = {"ppl": ppl_of_loss(loss, tokens), "complete": complete}
            kv = key(u, loss)  # incomplete: a lower bound, which still orders the next step
            self.prev_keys[u.name] = kv
            if lazy_info is not None:
                self.stale[u.name] = kv
            if complete:
                best.offer(u, kv, loss)
            else:
                abandoned += 1
        if best.unit is None:
            raise CompressError(f"step {k}: no candidate was scored to completion")
        if lazy_info is not None:
            lazy_info["could_differ"] = [] if lazy_info["full"] else sorted(
                u.name for u in remaining
                if u.name not in scores and (self.stale.get(u.name, math.inf), u.index) < (best.key, best.unit.index))
        ppl = ppl_of_loss(best.loss, tokens)
        if self.stop.max_ppl is not None and ppl > self.stop.max_ppl:
            return None
        return self._commit(k, best, ppl, removed_params, len(scores) - abandoned, abandoned, t0, scores, lazy_info)

    def _commit(self, k: int, best: _Best, ppl: float, removed_params: int, evaluated: int, abandoned: int,
                t0: float, scores: dict, lazy_info: dict | None) -> StepRecord:
        u = best.unit
        assert u is not None
        self.ev.commit([u])
        self.removed_names.add(u.name)
        self.prev_keys.pop(u.name, None)
        self.stale.pop(u.name, None)
        removed_total = removed_params + u.params
        return StepRecord(step=k, unit=u.name, blocks=list(u.blocks), loss=best.loss, ppl=ppl,
                          params_removed=removed_total, params_left=self.total_params - removed_total,
                          ratio=removed_total / self.total_params, evaluated=evaluated, abandoned=abandoned,
                          seconds=time.perf_counter() - t0, scores=scores, lazy=lazy_info)
