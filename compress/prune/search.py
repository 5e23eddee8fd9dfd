"""Greedy block search: BlockPruner (Zhong et al., arXiv 2406.10594, Algorithm 1; official
`block_search_by_ppl`), its exact speed-ups, and an approximate lazy variant.

Each step scores every remaining candidate c by the calibration loss L(S ∪ {c}) (equivalently the
perplexity exp(L / tokens), see `score.py`), commits c* = argmin over the key (L, candidate index)
- ties go to the first candidate in the official order (attention blocks of layers 0..L-1, then MLP
blocks) - and repeats. One run yields the whole nested removal sequence.

Searches (`--search`):
- `naive`: the faithful loop; every candidate masks S ∪ {c} in the model (mask.py) and re-runs the
  whole model on every calibration window.
- `fast` (default, exact): the residual stream of the current pruned model is kept at every block
  boundary, so candidate b_p is scored by running only the blocks after p (spec §6.2); candidates
  are scored best-first in the order of the previous step's scores, and a candidate is abandoned
  as soon as its running loss sum (windows in a fixed order) is strictly above the best complete
  candidate of the step (spec §6.3). Both are exact: the chosen sequence equals naive's.
- `--offload` (exact, `offload.py`): the weights are streamed layer by layer from the checkpoint
  and a step scores all candidates in one layer-major pass (no early abandoning); same sequence.
- `lazy` (approximate): only the M best candidates of the previous scores are re-scored, with a
  full re-score every R steps (both with the fast search's caching and early abandoning; an
  abandoned candidate keeps its partial score, a lower bound, as its stale score); steps where an unscored candidate's stale score beat the choice are
  reported as places where the exact search could differ.

Criteria: `ppl` (the paper's) or `ppl-per-param` (beyond the paper: the perplexity increase per
parameter removed, (PPL(S ∪ {c}) − PPL(S)) / params(c)). Both are non-decreasing in the partial
loss, so early abandoning stays exact for both.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from compress.arch.families import ATTN, MLP
from compress.errors import CompressError
from compress.progress import progress_bar
from compress.prune.mask import remove_block, restore_block
from compress.prune.score import (
    Block,
    BlockRunner,
    batch_loss,
    block_at,
    block_name,
    check_finite,
    loss_to_ppl,
    position,
)

SEARCHES = ("fast", "naive", "lazy")
CRITERIA = ("ppl", "ppl-per-param")


@dataclass(frozen=True)
class Unit:
    """What one step removes: one block (BlockPruner) or the remaining blocks of one layer."""

    name: str
    blocks: tuple[Block, ...]
    index: int  # position in the official candidate order: the tie-break
    params: int

    @property
    def positions(self) -> frozenset[int]:
        return frozenset(position(b) for b in self.blocks)

    @property
    def first(self) -> int:
        return min(self.positions)


def block_units(n_layers: int, block_type: str, present: set[int], params: dict[Block, int]) -> list[Unit]:
    """Candidates in the official order: ('mha', i) for all i, then ('mlp', i) (spec §4)."""
    kinds = {"mix": (ATTN, MLP), "attn": (ATTN,), "mlp": (MLP,)}[block_type]
    units = []
    for kind in kinds:
        for i in range(n_layers):
            if position((i, kind)) in present:
                units.append(Unit(block_name((i, kind)), ((i, kind),), len(units), params.get((i, kind), 0)))
    return units


def layer_units(n_layers: int, present: set[int], params: dict[Block, int], barriers: tuple[int, int] = (0, 0)) -> list[Unit]:
    """Whole-layer candidates (the blocks a layer still has); `barriers` excludes the first/last layers (SLEB)."""
    units = []
    for i in range(barriers[0], n_layers - barriers[1]):
        blocks = tuple(b for b in ((i, ATTN), (i, MLP)) if position(b) in present)
        if blocks:
            units.append(Unit(f"layer {i}", blocks, len(units), sum(params.get(b, 0) for b in blocks)))
    return units


# ---------------------------------------------------------------------------------------------
# Evaluators: the loss of (committed set S) ∪ (one candidate) on all calibration windows.


class NaiveEvaluator:
    """The faithful loop: mask S ∪ {c} in the model and run the whole model on every window."""

    exact_bound = False

    def __init__(self, runner: BlockRunner, windows: torch.Tensor, batch_size: int):
        self.runner = runner
        self.batches = [windows[i:i + batch_size] for i in range(0, windows.shape[0], batch_size)]
        self.tokens = windows.shape[0] * (windows.shape[1] - 1)
        self.removed: set[int] = set()
        self._saved: list[tuple[torch.nn.Module, dict]] = []
        self.forwards = 0  # block forwards, for the benchmark

    def _mask(self, blocks: Sequence[Block]) -> list[tuple[torch.nn.Module, dict]]:
        out = []
        for layer, kind in blocks:
            mod = self.runner.layers[layer]
            out.append((mod, remove_block(mod, self.runner.family, kind)))
        return out

    @torch.no_grad()
    def _loss(self, what: str) -> float:
        total = 0.0
        r = self.runner
        for ids in self.batches:
            ids = ids.to(r.device)
            hidden = r.body(input_ids=ids, use_cache=False).last_hidden_state
            total += batch_loss(r.model, hidden, ids)
            check_finite(total, what)
        return total

    def score(self, unit: Unit, bound: Callable[[float], bool] | None = None) -> tuple[float, bool]:
        saved = self._mask(unit.blocks)
        try:
            return self._loss(f"with {unit.name} removed"), True
        finally:
            for mod, s in reversed(saved):
                restore_block(mod, s)

    def current_loss(self) -> float:
        try:
            return self._loss("of the model before this step")
        except CompressError:
            # Name the block: run the blocks one at a time and find the first non-finite output.
            FastEvaluator(self.runner, torch.cat(self.batches), self.batches[0].shape[0], removed=self.removed)
            raise

    def commit(self, units: Sequence[Unit]) -> None:
        for u in units:
            self._saved.extend(self._mask(u.blocks))
            self.removed |= u.positions

    def close(self) -> None:
        for mod, s in reversed(self._saved):
            restore_block(mod, s)
        self._saved.clear()


class FastEvaluator:
    """Exact prefix caching: the residual stream of S at every block boundary, per batch (§6.2).

    `states[b][p]` is the input of block p for batch b under the committed set S (p = 2L: the
    output of the last block). A candidate starting at p runs only blocks p+1.. (minus S).
    """

    exact_bound = True

    def __init__(self, runner: BlockRunner, windows: torch.Tensor, batch_size: int, removed: set[int] | None = None,
                 progress: Callable[[int], None] | None = None):
        self.runner = runner
        self.batches = [windows[i:i + batch_size].to(runner.device) for i in range(0, windows.shape[0], batch_size)]
        self.tokens = windows.shape[0] * (windows.shape[1] - 1)
        self.removed: set[int] = set(removed or ())
        self.states: list[list[torch.Tensor]] = []
        with torch.no_grad():
            for ids in self.batches:
                h0, _ = runner.embed(ids)
                self.states.append([h0] + [h0] * runner.n_positions)
                self._advance(len(self.states) - 1, 0)
                if progress is not None:
                    progress(ids.shape[0])

    def _advance(self, b: int, start: int) -> None:
        st = self.states[b]
        for p in range(start, self.runner.n_positions):
            st[p + 1] = st[p] if p in self.removed else self.runner.block(st[p], p)
            if p not in self.removed and not bool(torch.isfinite(st[p + 1]).all()):
                raise CompressError(
                    f"the calibration loss is not finite: the output of block {block_name(block_at(p))} has "
                    "NaN/inf values (the model overflows in this dtype - try --dtype fp32 - or its weights are broken)"
                )

    @torch.no_grad()
    def score(self, unit: Unit, bound: Callable[[float], bool] | None = None) -> tuple[float, bool]:
        p0 = unit.first
        skip = self.removed | unit.positions
        total = 0.0
        last = len(self.batches) - 1
        for b, ids in enumerate(self.batches):
            h = self.runner.run(self.states[b][p0], p0, skip)
            total += self.runner.loss(h, ids)
            check_finite(total, f"with {unit.name} removed")
            if bound is not None and b < last and bound(total):
                return total, False
        return total, True

    @torch.no_grad()
    def current_loss(self) -> float:
        total = 0.0
        for b, ids in enumerate(self.batches):
            total += self.runner.loss(self.states[b][-1], ids)
        check_finite(total, "of the model before this step")
        return total

    def commit(self, units: Sequence[Unit]) -> None:
        if not units:
            return
        for u in units:
            self.removed |= u.positions
        start = min(u.first for u in units)
        with torch.no_grad():
            for b in range(len(self.batches)):
                self._advance(b, start)

    def close(self) -> None:
        self.states = []


# ---------------------------------------------------------------------------------------------
# The greedy loop.


@dataclass
class StopRule:
    """Stop after `blocks` steps, once the removed share reaches `ratio`, or before `max_ppl` is exceeded."""

    blocks: int | None = None
    ratio: float | None = None
    max_ppl: float | None = None

    def reached(self, steps: int, ratio: float) -> str | None:
        if self.blocks is not None and steps >= self.blocks:
            return f"{steps} removed"
        if self.ratio is not None and ratio >= self.ratio:
            return f"ratio {ratio:.4f} >= {self.ratio}"
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


def _key_fn(criterion: str, tokens: int, ppl_s: float) -> Callable[[Unit, float], float]:
    if criterion == "ppl":
        return lambda u, loss: loss
    if criterion == "ppl-per-param":
        return lambda u, loss: (loss_to_ppl(loss, tokens) - ppl_s) / max(u.params, 1)
    raise CompressError(f"unknown criterion {criterion!r}: choose one of {', '.join(CRITERIA)}")


class GreedySearch:
    """Iterative greedy removal over `units` (resumable: `restore` replays committed steps)."""

    def __init__(self, evaluator, units: list[Unit], *, stop: StopRule, total_params: int,
                 criterion: str = "ppl", search: str = "fast", lazy_m: int = 8, lazy_every: int = 0,
                 fixed_order: list[Unit] | None = None,
                 on_step: Callable[[GreedySearch], None] | None = None):
        if search not in SEARCHES:
            raise CompressError(f"unknown search {search!r}: choose one of {', '.join(SEARCHES)}")
        _key_fn(criterion, 1, 1.0)
        self.ev = evaluator
        self.units = units
        self.stop = stop
        self.total_params = total_params
        self.criterion = criterion
        self.search = search
        self.lazy_m = lazy_m
        self.lazy_every = lazy_every
        self.fixed_order = fixed_order  # one-shot methods: the ranking, scored one unit per step
        self.on_step = on_step
        self.steps: list[StepRecord] = []
        self.prev_keys: dict[str, float] = {}
        self.stale: dict[str, float] = {}  # lazy: latest complete key of each unit
        self.removed_names: set[str] = set()
        self.dense_loss: float | None = None
        self.seconds = 0.0

    # -- state for resume
    def state(self) -> dict:
        return {"dense_loss": self.dense_loss, "steps": [s.as_dict() for s in self.steps],
                "prev_keys": self.prev_keys, "stale": self.stale, "seconds": self.seconds}

    def restore(self, state: dict) -> None:
        self.dense_loss = state["dense_loss"]
        self.steps = [StepRecord.from_dict(s) for s in state["steps"]]
        self.prev_keys = {k: float(v) for k, v in state.get("prev_keys", {}).items()}
        self.stale = {k: float(v) for k, v in state.get("stale", {}).items()}
        self.seconds = float(state.get("seconds", 0.0))
        by_name = {u.name: u for u in self.units}
        done = []
        for s in self.steps:
            if s.unit not in by_name:
                raise CompressError(f"the resume file removes {s.unit!r}, which is not a candidate here")
            done.append(by_name[s.unit])
        self.ev.commit(done)
        self.removed_names = {u.name for u in done}

    # -- the loop
    def run(self) -> SearchResult:
        tokens = self.ev.tokens
        if self.dense_loss is None:
            self.dense_loss = self.ev.current_loss()
        stopped = None
        while True:
            removed_params = self.steps[-1].params_removed if self.steps else 0
            ratio = removed_params / self.total_params
            stopped = self.stop.reached(len(self.steps), ratio)
            if stopped:
                break
            remaining = [u for u in self.units if u.name not in self.removed_names]
            if self.fixed_order is not None:
                remaining = [u for u in self.fixed_order if u.name not in self.removed_names][:1]
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
        return SearchResult(dense_loss=dense, dense_ppl=loss_to_ppl(dense, tokens), tokens=tokens,
                            steps=self.steps, stopped=stopped, seconds=self.seconds,
                            total_params=self.total_params)

    def _order(self, remaining: list[Unit], k: int) -> list[Unit]:
        if self.search == "naive" or self.fixed_order is not None:
            return remaining
        if self.prev_keys:
            inf = math.inf
            return sorted(remaining, key=lambda u: (self.prev_keys.get(u.name, inf), u.index))
        # First step: deep blocks first - they are cheap to score from the cache and usually the
        # least important (spec §4's example sequence), so the bound is tight early.
        return sorted(remaining, key=lambda u: (-u.first, u.index))

    def _step(self, remaining: list[Unit], removed_params: int) -> StepRecord | None:
        t0 = time.perf_counter()
        k = len(self.steps) + 1
        tokens = self.ev.tokens
        ppl_s = loss_to_ppl(self.steps[-1].loss if self.steps else self.dense_loss, tokens)
        key = _key_fn(self.criterion, tokens, ppl_s)
        lazy_info = None
        abandon = self.search in ("fast", "lazy") and self.fixed_order is None
        if self.search == "lazy" and self.fixed_order is None:
            full = (k == 1 or not self.stale or (self.lazy_every > 0 and (k - 1) % self.lazy_every == 0)
                    or len(remaining) <= self.lazy_m)
            if full:
                todo = self._order(remaining, k)
            else:
                todo = sorted(remaining, key=lambda u: (self.stale.get(u.name, -math.inf), u.index))[: self.lazy_m]
            lazy_info = {"full": full, "rescored": [u.name for u in todo]}
        else:
            todo = self._order(remaining, k)
        scores: dict[str, dict] = {}
        best: Unit | None = None
        best_key = math.inf
        best_loss = math.nan
        evaluated = abandoned = 0
        # A layer-major evaluator (offload.py) scores every candidate of the step in one pass over
        # the layers: all scores are complete, nothing is abandoned, the choice is the same argmin.
        pre = (self.ev.score_all(todo, f"step {k}: {len(todo)} candidates, layer by layer")
               if getattr(self.ev, "layer_major", False) else None)
        bar = (progress_bar(f"step {k}: {len(todo)} candidates", len(todo)) if pre is None
               else contextlib.nullcontext(lambda n=1: None))
        with bar as advance:
            for u in todo:
                bound = None
                if abandon and best is not None and pre is None:
                    bk = best_key

                    def bound(partial: float, u=u, bk=bk) -> bool:
                        return key(u, partial) > bk
                loss, complete = (pre[u.name], True) if pre is not None else self.ev.score(u, bound)
                advance(1)
                scores[u.name] = {"ppl": loss_to_ppl(loss, tokens), "complete": complete}
                if not complete:
                    abandoned += 1
                    self.prev_keys[u.name] = key(u, loss)  # a lower bound: orders the next step
                    if lazy_info is not None:
                        self.stale[u.name] = key(u, loss)
                    continue
                evaluated += 1
                kv = key(u, loss)
                self.prev_keys[u.name] = kv
                if lazy_info is not None:
                    self.stale[u.name] = kv
                if best is None or (kv, u.index) < (best_key, best.index):
                    best, best_key, best_loss = u, kv, loss
        assert best is not None
        if lazy_info is not None and not lazy_info["full"]:
            lazy_info["could_differ"] = sorted(
                (u.name for u in remaining
                 if u.name not in scores and (self.stale.get(u.name, math.inf), u.index) < (best_key, best.index)),
            )
        elif lazy_info is not None:
            lazy_info["could_differ"] = []
        ppl = loss_to_ppl(best_loss, tokens)
        if self.stop.max_ppl is not None and ppl > self.stop.max_ppl:
            return None
        self.ev.commit([best])
        self.removed_names.add(best.name)
        self.prev_keys.pop(best.name, None)
        self.stale.pop(best.name, None)
        removed_total = removed_params + best.params
        return StepRecord(step=k, unit=best.name, blocks=list(best.blocks), loss=best_loss, ppl=ppl,
                          params_removed=removed_total, params_left=self.total_params - removed_total,
                          ratio=removed_total / self.total_params, evaluated=evaluated, abandoned=abandoned,
                          seconds=time.perf_counter() - t0, scores=scores, lazy=lazy_info)
