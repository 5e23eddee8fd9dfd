"""Messages and progress bars of the library.

Messages go through the standard `logging` logger "compress" (`info`, `warn`): a Python user sees
its warnings on stderr by Python's default and configures the rest as for any library
(`logging.basicConfig(level=logging.INFO)`); the CLI installs `ConsoleHandler`, which renders them on
stderr with rich (stdout stays for `--json`). Progress bars are drawn on stderr with rich, on the same
console, unless `set_quiet(True)`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)
logger = logging.getLogger("compress")
_quiet = False


def set_quiet(value: bool) -> None:
    global _quiet
    _quiet = value


def _progress(status: bool) -> Progress:
    """A bar: description, bar, done/total, [a status text field,] elapsed, remaining."""
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if status:
        cols.append(TextColumn("{task.fields[status]}"))
    return Progress(*cols, TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator:
    """Yield `advance(n)`; draws a bar on stderr unless quiet."""
    if _quiet or not sys.stderr:
        yield lambda n=1: None
        return
    with _progress(status=False) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


@contextmanager
def status_bar(description: str, total: int, completed: int = 0) -> Iterator:
    """Yield `update(completed, status)`: a bar with a status text (e.g. the loss); silent when quiet."""
    if _quiet or not sys.stderr:
        yield lambda completed, status="": None
        return
    with _progress(status=True) as prog:
        task = prog.add_task(description, total=total, completed=completed, status="")
        yield lambda completed, status="": prog.update(task, completed=completed, status=status)


def info(message: str) -> None:
    logger.info(message)


def warn(message: str) -> None:
    logger.warning(message)


class ConsoleHandler(logging.Handler):
    """Log records on the rich stderr console (so they interleave with live progress bars): the
    message as written (no markup), warnings and errors prefixed `warning:` / `error:` in colour."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = Text(self.format(record))
            if record.levelno >= logging.WARNING:
                label = "warning" if record.levelno < logging.ERROR else "error"
                text = Text.assemble((f"{label}: ", "yellow" if label == "warning" else "red"), text)
            console.print(text, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging's own contract: never raise from a handler
            self.handleError(record)


def use_console_handler(level: int = logging.INFO) -> None:
    """The CLI's logging: records of the "compress" logger at `level` and above on stderr (once)."""
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.setLevel(level)
