"""Progress of long phases (scoring a split, building a coreset, checking an export), shown by
whoever runs them: the library reports to the reporter of the current context, the command
line installs one (a bar on a terminal, plain lines in a file or pipe), and a plain Python
caller sees nothing unless it installs its own.

    for batch in progress.track(batches, "scoring the test split", total=n, size=len): ...
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_reporter: contextvars.ContextVar = contextvars.ContextVar("defectkit_progress", default=None)


@contextlib.contextmanager
def reporting(reporter) -> Iterator[None]:
    """Send the phases run inside to ``reporter`` (an object with ``phase(description, total)``
    returning a context manager with ``advance(n)``)."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


def track(items: Iterable[T], description: str, total: int | None = None, size: Callable[[T], int] | None = None) -> Iterator[T]:
    """``items``, reported as one phase of ``total`` units (``size(item)`` units each, else 1)."""
    reporter = _reporter.get()
    if reporter is None:
        yield from items
        return
    with reporter.phase(description, total) as phase:
        for item in items:
            yield item
            phase.advance(size(item) if size else 1)


class BarReporter:
    """A transient rich bar per phase, on a terminal."""

    def __init__(self, console):
        self.console = console

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None):
        from rich.errors import LiveError
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                       console=self.console, transient=True)
        task = bar.add_task(description, total=total)
        try:
            bar.start()
        except LiveError:  # another display (a status line) is live: this phase goes unshown
            yield _Quiet()
            return

        try:
            yield _BarPhase(bar, task)
        finally:
            bar.stop()


class _BarPhase:
    def __init__(self, bar, task):
        self.bar, self.task = bar, task

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task, n)


class _Quiet:
    def advance(self, n: int = 1) -> None:
        pass


class TaskReporter:
    """Phases as extra rows of a bar that is already live (training's epoch bar): a terminal
    has one live display at a time."""

    def __init__(self, bar, **fields):
        self.bar, self.fields = bar, fields

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None):
        bar = self.bar
        task = bar.add_task(description, total=total, **self.fields)
        try:
            yield _BarPhase(bar, task)
        finally:
            bar.remove_task(task)


class LineReporter:
    """Whole lines, for a file or a pipe: the phase's start, a line at most every ``every_s``
    seconds while it runs (done / total, elapsed), and its end."""

    def __init__(self, write: Callable[[str], None] | None = None, every_s: float = 30.0):
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.every_s = every_s

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None):
        started = last = time.monotonic()
        of = f" of {total}" if total is not None else ""
        self.write(f"{description}: 0{of}")
        reporter = self

        class Phase:
            done = 0

            def advance(self, n: int = 1) -> None:
                nonlocal last
                self.done += n
                now = time.monotonic()
                if now - last >= reporter.every_s:
                    last = now
                    reporter.write(f"{description}: {self.done}{of} ({now - started:.0f} s)")

        phase = Phase()
        yield phase
        self.write(f"{description}: {phase.done}{of} done in {time.monotonic() - started:.1f} s")


def for_console(console):
    """The reporter a command uses on ``console``: a bar on a terminal, else plain lines."""
    if console.is_terminal:
        return BarReporter(console)
    return LineReporter(lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
