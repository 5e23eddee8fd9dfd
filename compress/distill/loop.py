"""The training loop: epochs of micro-batches, gradient accumulation, NaN stop, side work per step.

Each optimizer step's record in the history holds its loss (averaged over the processes), learning
rate, the method's figures (this process), the tokens the student processed (all processes), and its
wall and CPU seconds (this process).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.distill.config import DistillConfig
from compress.distill.methods import batch_loss, batch_tokens
from compress.errors import CompressError


@dataclass
class Loop:
    """Where a run stands (`step`, `epoch`, `skip` batches of that epoch already done) and how to go on."""

    cfg: DistillConfig
    accelerator: Any
    model: torch.nn.Module  # prepared
    optimizer: Any  # prepared
    scheduler: Any
    loader: Any  # prepared
    generator: torch.Generator  # the loader's shuffling generator, re-seeded every epoch
    total: int  # optimizer steps of the run
    steps_per_epoch: int
    pad_id: int
    teacher: Any = None
    ref_logps: dict[str, torch.Tensor] | None = None
    evaluate: Callable[[], dict[str, float]] | None = None
    save: Callable[[int, dict[str, int]], Path] | None = None  # (step, position) -> checkpoint
    step: int = 0
    epoch: int = 0
    skip: int = 0
    last_checkpoint: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def run(self) -> list[dict[str, Any]]:
        """Train until `total` optimizer steps; returns the history (one record per step)."""
        from compress import progress

        epochs = math.ceil(self.total / self.steps_per_epoch)
        with contextlib.ExitStack() as bars:
            self._show = (bars.enter_context(progress.status_bar("distill", self.total, self.step))
                          if self.accelerator.is_main_process else lambda completed, status="": None)
            for epoch in range(self.epoch, epochs):
                if self._epoch(epoch):
                    break
        return self.history

    def _epoch(self, epoch: int) -> bool:
        """One pass over the loader (minus the batches a resumed run already did); True when the run is done."""
        acc = self.accelerator
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        self.generator.manual_seed(self.cfg.seed + epoch)
        batches = acc.skip_first_batches(self.loader, self.skip) if self.skip else self.loader
        done, self.skip = self.skip, 0
        losses, tokens = [], 0
        t0, c0 = time.perf_counter(), time.process_time()
        for examples in batches:
            done += 1
            if hasattr(self.teacher, "set_step"):  # a teacher signal with a schedule (fuse train --select progressive)
                self.teacher.set_step(self.step)
            loss, metrics = self._micro_step(examples)
            losses.append(loss)
            tokens += batch_tokens(examples, self.cfg.method)
            if not acc.sync_gradients:
                continue
            self.scheduler.step()
            self.step += 1
            loss, all_tokens = self._across_processes(sum(losses) / len(losses), tokens)
            rec = {"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0], **metrics,
                   "tokens": all_tokens, "time_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
            self._after_step(rec, epoch, done)
            losses, tokens = [], 0
            if self.step >= self.total:
                return True
            t0, c0 = time.perf_counter(), time.process_time()
        return False

    def _across_processes(self, loss: float, tokens: int) -> tuple[float, int]:
        """The step's loss averaged over the processes, and the tokens they processed together."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return loss, tokens
        both = acc.reduce(torch.tensor([loss, float(tokens)], dtype=torch.float64, device=acc.device), "sum")
        return float(both[0]) / acc.num_processes, int(both[1])

    def _micro_step(self, examples) -> tuple[float, dict[str, float]]:
        acc, cfg = self.accelerator, self.cfg
        with acc.accumulate(self.model):
            with acc.autocast():
                loss, metrics = batch_loss(cfg, self.model, examples, self.pad_id, self.teacher, self.ref_logps,
                                           (self.step, self.total))
            bad = acc.reduce(torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=acc.device), "sum")
            if float(bad) > 0:
                where = (f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                         else " (no checkpoint yet)")
                raise CompressError(f"the loss became {float(loss.detach())} at step {self.step + 1}: stopped{where}; "
                                    "lower --lr or use --precision fp32")
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
        return float(loss.detach()), metrics

    def _after_step(self, rec: dict[str, Any], epoch: int, done: int) -> None:
        """Evaluate, record, show, and write a step checkpoint when due."""
        cfg = self.cfg
        if cfg.eval_every and self.step % cfg.eval_every == 0 and self.evaluate is not None:
            rec.update({f"eval_{k}": v for k, v in self.evaluate().items()})
        self.history.append(rec)
        self._show(self.step, f"loss {rec['loss']:.4f}")
        if self.save is not None and cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total:
            self.last_checkpoint = self.save(self.step, {"epoch": epoch, "batches_in_epoch": done})
