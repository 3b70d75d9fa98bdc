"""The words of the progress line each long command draws (``progress.Reporter`` draws them).

Why a module of its own: the work sends typed events (``SearchProgress``, ``ImportProgress``)
and the line is how a user reads them — times with the report's units, the gap as the plan's
summary writes it — so the search and the importers never format text for a terminal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autosplit.report.fmt import fmt_pct, fmt_seconds

if TYPE_CHECKING:  # the commands import this module at start-up: no search or profiler yet
    from autosplit.profiler.importers.progress import ImportProgress
    from autosplit.search.progress import SearchProgress

__all__ = ["import_line", "search_line"]


def search_line(event: SearchProgress) -> str:
    """``best so far 12.3 ms (m=8, 4 stages), gap 1.52% to the bound 12.1 ms, 57 candidates
    explored``; before the first plan, what is searched and the bound so far."""
    explored = f"{event.candidates:,} candidate{'' if event.candidates == 1 else 's'} explored"
    bound = event.lower_bound_s
    if event.best_s is None:
        known = f", bound {fmt_seconds(bound)}" if bound is not None else ""
        return (f"{event.pools} pools, {event.device_groups} device groups, no plan yet"
                f"{known}, {explored}")
    best = (f"best so far {fmt_seconds(event.best_s)} (m={event.micro_batches}, "
            f"{event.stages} stages)")
    gap = event.gap
    if gap is None or bound is None:
        return f"{best}, {explored}"
    return f"{best}, gap {fmt_pct(gap, 2)} to the bound {fmt_seconds(bound)}, {explored}"


def import_line(event: ImportProgress) -> str:
    """``3 of 40 files read, 120 rows`` while reading; ``… , 1 of 2 profiles written`` after."""
    line = f"{event.files_read} of {event.files_total} files read, {event.rows_read:,} rows"
    if event.profiles_total:
        line += f", {event.profiles_written} of {event.profiles_total} profiles written"
    return line
