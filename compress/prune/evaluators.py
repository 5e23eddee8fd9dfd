"""Evaluators: the calibration loss of the committed set S plus one candidate, for the greedy search.

Every evaluator follows the `Evaluator` protocol; the search never asks which kind it has:

- `NaiveEvaluator`: BlockPruner's own loop. Each candidate masks S ∪ {c} in the model (mask.py) and
  re-runs the whole model on every calibration window.
- `FastEvaluator` (exact): the residual stream of the current pruned model is kept at every block
  boundary, so candidate b_p is scored by running only the blocks after p: removing b_p leaves every
  hidden state before it unchanged. A candidate is abandoned as soon as its running loss sum
  (windows in a fixed order) loses to the best complete candidate of the step: every window's NLL is
  ≥ 0, so partial sums only grow and the choice is the same as scoring everything.
- `compress.prune.offload.OffloadEvaluator` (exact): weights streamed layer by layer; a step scores
  all candidates in one layer-major pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch

from compress.errors import CompressError
from compress.progress import progress_bar
from compress.prune.mask import remove_block, restore_block
from compress.prune.score import Block, BlockRunner, batch_loss, block_at, block_name, check_finite
from compress.prune.units import Unit

__all__ = ["Bound", "Evaluator", "FastEvaluator", "NaiveEvaluator", "fast_state_bytes", "one_by_one"]

# bound(unit, partial loss) -> True when the unit already loses to the best complete candidate of the step.
Bound = Callable[[Unit, float], bool]
Scores = Iterator[tuple[Unit, float, bool]]  # (unit, loss, complete); an incomplete loss is a lower bound


@runtime_checkable
class Evaluator(Protocol):
    """What the greedy search needs from a way of running the model."""

    tokens: int  # scored calibration tokens: PPL = exp(loss / tokens)

    def current_loss(self) -> float:
        """Summed calibration NLL of the model with the committed set S removed."""

    def scores(self, units: Sequence[Unit], bound: Bound | None, desc: str) -> Scores:
        """Loss of S ∪ {u} for each unit, in the given order; may stop a unit early where `bound` says."""

    def commit(self, units: Sequence[Unit]) -> None:
        """Add units to S."""

    def close(self) -> None:
        """Release what the evaluator holds (masks, cached states)."""


def one_by_one(score: Callable[[Unit, Callable[[float], bool] | None], tuple[float, bool]], units: Sequence[Unit],
               bound: Bound | None, desc: str) -> Scores:
    """`scores` of an evaluator that scores one unit at a time, with a progress bar."""
    with progress_bar(desc, len(units)) as advance:
        for u in units:
            loss, complete = score(u, None if bound is None else (lambda partial, u=u: bound(u, partial)))
            advance(1)
            yield u, loss, complete


def _non_finite_block(p: int) -> CompressError:
    return CompressError(
        f"the calibration loss is not finite: the output of block {block_name(block_at(p))} has "
        "NaN/inf values (the model overflows in this dtype - try --dtype fp32 - or its weights are broken)"
    )


def check_finite_output(h: torch.Tensor, p: int) -> None:
    """Refuse a non-finite output of block `p`, naming the block."""
    if not bool(torch.isfinite(h).all()):
        raise _non_finite_block(p)


class NaiveEvaluator:
    """The faithful loop: mask S ∪ {c} in the model and run the whole model on every window."""

    def __init__(self, runner: BlockRunner, windows: torch.Tensor, batch_size: int, removed: set[int] | None = None):
        self.runner = runner
        self.batches = [windows[i:i + batch_size] for i in range(0, windows.shape[0], batch_size)]
        self.tokens = windows.shape[0] * (windows.shape[1] - 1)
        self.removed: set[int] = set(removed or ())  # positions S (and blocks the model already lacks)
        self._saved: list[tuple[torch.nn.Module, dict]] = []

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
        """Loss of S ∪ {unit}, always complete (the faithful loop abandons nothing)."""
        saved = self._mask(unit.blocks)
        try:
            return self._loss(f"with {unit.name} removed"), True
        finally:
            for mod, s in reversed(saved):
                restore_block(mod, s)

    def scores(self, units: Sequence[Unit], bound: Bound | None, desc: str) -> Scores:
        return one_by_one(self.score, units, bound, desc)

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


def fast_state_bytes(n_positions: int, removed: int, tokens: int, hidden: int, element_size: int) -> int:
    """Memory of `FastEvaluator`'s cache: one residual stream (tokens x hidden) per block boundary that
    a block still computes, plus the embedding output: (n_positions - removed + 1) streams."""
    return (n_positions - removed + 1) * tokens * hidden * element_size


class FastEvaluator:
    """Exact prefix caching: the residual stream of S at every block boundary, per batch.

    `states[b][p]` is the input of block p for batch b under the committed set S (p = 2L: the
    output of the last block). A candidate starting at p runs only blocks p+1.. (minus S).
    """

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
            if p not in self.removed:
                check_finite_output(st[p + 1], p)

    @torch.no_grad()
    def score(self, unit: Unit, bound: Callable[[float], bool] | None = None) -> tuple[float, bool]:
        """Loss of S ∪ {unit} from the cached stream before the unit; stops once `bound(partial)` is True."""
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

    def scores(self, units: Sequence[Unit], bound: Bound | None, desc: str) -> Scores:
        return one_by_one(self.score, units, bound, desc)

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
