"""How long the search may work: a deterministic budget, and a wall-clock limit that only
cuts it short.

The result must not depend on the machine or its load, so the search's progress is counted in
work units — array elements its dynamic programmes touch and exact splits it solves — and
stops when the budget is spent. The wall-clock limit is a safety net: every phase checks it,
often (between thresholds, between positions of the programme), so the command returns on
time with the best plan found, and the plan says which of the two stopped the search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Budget", "OutOfTime", "STOP_COMPLETE", "STOP_BUDGET", "STOP_TIME"]

#: Why a search stopped (recorded in the plan's search statistics).
STOP_COMPLETE = "complete"
STOP_BUDGET = "budget"
STOP_TIME = "time_limit"


class OutOfTime(Exception):
    """Raised inside a phase when the wall-clock limit has passed."""


@dataclass
class Budget:
    """Work units left and the wall-clock deadline.

    ``work`` is in millions of elementary steps (see ``stage_dp.envelope_cells``); the default
    of the CLI lets searches of ordinary clusters finish and bounds the largest.
    """

    work: float
    time_limit_s: float
    started: float = field(default_factory=time.perf_counter)
    spent: float = 0.0
    stopped_by: str = STOP_COMPLETE

    def charge(self, cells: float) -> None:
        """Count work (in elementary steps)."""
        self.spent += cells / 1e6

    @property
    def exhausted(self) -> bool:
        """Work budget spent (deterministic) or time up (not)."""
        if self.spent >= self.work:
            self.stopped_by = STOP_BUDGET
            return True
        return self.out_of_time()

    def out_of_time(self) -> bool:
        if time.perf_counter() - self.started > self.time_limit_s:
            self.stopped_by = STOP_TIME
            return True
        return False

    def check(self) -> None:
        """Raise ``OutOfTime`` if the wall clock has passed the limit (inner loops call this)."""
        if self.out_of_time():
            raise OutOfTime

    def seconds_left(self) -> float:
        return max(0.0, self.time_limit_s - (time.perf_counter() - self.started))

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started
