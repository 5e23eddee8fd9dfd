"""Progress bars on stderr (rich), silent when asked or when stderr is not a terminal in --json mode."""

from __future__ import annotations

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

console = Console(stderr=True)
_quiet = False


def set_quiet(value: bool) -> None:
    global _quiet
    _quiet = value


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator:
    """Yield `advance(n)`; draws a bar on stderr unless quiet."""
    if _quiet or not sys.stderr:
        yield lambda n=1: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def info(message: str) -> None:
    if not _quiet:
        console.print(message, highlight=False)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
