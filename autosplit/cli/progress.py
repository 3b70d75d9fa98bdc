"""Progress of long work on a terminal: the phase, its elapsed time and the latest news.

Why: a search of several minutes that prints nothing between the model line and the result
looks hung. On a terminal each phase (ingesting, searching, benchmarking) shows a spinner,
the seconds spent and the last thing the work reported (the best plan so far, the case being
run, how many were done); with ``-q``, or when standard error is not a terminal (a log file,
a pipe, CI), nothing is drawn, so logs stay clean and output is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

__all__ = ["Reporter", "reporter"]


class Reporter:
    """Shows one phase at a time; ``update`` replaces the phase's detail line."""

    def __init__(self, console: Console, *, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: int | None = None
        self._phase = ""
        self.updates = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[Reporter]:
        """Show ``name`` with a spinner and the elapsed time while the block runs."""
        self._phase = name
        if not self.enabled:
            yield self
            return
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            self._progress = progress
            self._task = progress.add_task(name, total=None)
            try:
                yield self
            finally:
                self._progress = None
                self._task = None

    def update(self, detail: str) -> None:
        """Report news of the current phase (shown after the phase's name)."""
        self.updates += 1
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=f"{self._phase}: {detail}")


def reporter(*, quiet: bool, console: Console | None = None) -> Reporter:
    """A reporter on standard error, drawing only on a terminal and without ``-q``."""
    console = console or Console(stderr=True)
    return Reporter(console, enabled=not quiet and console.is_terminal)
