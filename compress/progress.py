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
    if not _quiet:
        console.print(message, highlight=False)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
