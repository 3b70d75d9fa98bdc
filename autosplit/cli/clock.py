"""The whole process's wall time, for the "whole command" line a command prints last.

Why: a timer started inside the command leaves out the interpreter's start and the imports
(PyTorch alone takes seconds), so "whole command: 3.9 s" was printed for a process that took
8.3 s. On Linux the process's start time is read from ``/proc``; elsewhere the figure starts
when autosplit's command line was imported, and the label says so.
"""

from __future__ import annotations

import os
import time

__all__ = ["Elapsed", "process_elapsed"]

_IMPORTED = time.monotonic()


class Elapsed:
    """Seconds since the process started (``covers`` names what the figure covers)."""

    def __init__(self, seconds: float, covers: str) -> None:
        self.seconds = seconds
        self.covers = covers

    def __str__(self) -> str:
        return f"{self.covers}: {self.seconds:.1f} s"


def _since_process_start() -> float | None:
    """Seconds since this process started, from ``/proc`` (``None`` where unavailable)."""
    try:
        with open("/proc/self/stat") as fh:
            # The command name (field 2) may contain spaces: fields after its ')' are fixed.
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        start_ticks = int(fields[19])  # field 22 of stat(5): starttime, in clock ticks
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def process_elapsed() -> Elapsed:
    """The whole process's wall time so far, or the time since autosplit's CLI was imported."""
    seconds = _since_process_start()
    if seconds is not None:
        return Elapsed(seconds, "whole process")
    return Elapsed(time.monotonic() - _IMPORTED, "since the command line started")
