"""How far an import is: files read, rows made, profile files written.

Why: a Metis folder holds one file per (GPU, TP, batch) — hundreds on a large study — and a
terminal that shows nothing while they are read looks hung. The importers send this event
after each file they read or write; the CLI draws it (``autosplit.cli.progress_lines``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ImportProgress", "ImportSink"]


@dataclass(frozen=True)
class ImportProgress:
    """Files of the other tool read so far (of all there are), the rows they gave, and the
    store files written (of all there will be; both 0 until writing starts)."""

    files_read: int
    files_total: int
    rows_read: int
    profiles_written: int = 0
    profiles_total: int = 0


#: Receives one event per file read or written.
ImportSink = Callable[[ImportProgress], None]
