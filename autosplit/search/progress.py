"""What the search tells a progress display while it runs: one typed event per piece of news.

Why: a display (the CLI's progress line) needs the best plan so far, the lower bound it is
measured against and how much was explored — not the search's internals. The engine sends a
``SearchProgress`` whenever its best plan improves or its bound tightens; the display only
formats it, so the search can change how it works without the display following it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autosplit.search.assemble import Solution

__all__ = ["SearchProgress", "search_progress"]


@dataclass(frozen=True)
class SearchProgress:
    """How far the search is: what it searches over, what it found, what it can prove."""

    #: Pools of interchangeable nodes and device groups of the pass being searched.
    pools: int
    device_groups: int
    #: Pipelines priced exactly so far, over every pass (the plan's ``search.explored`` counts
    #: the winning pass's).
    candidates: int
    #: The best plan's iteration time under the closed form the bound holds for (``None``
    #: before any pipeline fitted), with its micro-batch count and stage count.
    best_s: float | None = None
    micro_batches: int | None = None
    stages: int | None = None
    #: The least iteration time any plan of the search space can have, as proven so far
    #: (``None`` while no finite bound is known).
    lower_bound_s: float | None = None

    @property
    def gap(self) -> float | None:
        """``(best − bound) / best``, the plan's ``optimality_gap`` so far; ``None`` unless
        both are known."""
        if self.best_s is None or self.lower_bound_s is None or not self.best_s > 0:
            return None
        return max(0.0, (self.best_s - self.lower_bound_s) / self.best_s)


def search_progress(best: Iterable[Solution | None], *, lower_bound_s: float, pools: int,
                    device_groups: int, candidates: int) -> SearchProgress:
    """The event for the best of ``best`` (one per search pass; ``None``: nothing found)
    against ``lower_bound_s`` (``inf`` or NaN: no bound known yet)."""
    found = [s for s in best if s is not None]
    top = min(found, key=lambda s: (s.iteration_s, s.key)) if found else None
    bound = float(lower_bound_s) if math.isfinite(lower_bound_s) else None
    if top is None:
        return SearchProgress(pools=pools, device_groups=device_groups, candidates=candidates,
                              lower_bound_s=bound)
    return SearchProgress(pools=pools, device_groups=device_groups, candidates=candidates,
                          best_s=float(top.iteration_s), micro_batches=top.micro_batches,
                          stages=len(top.stages), lower_bound_s=bound)
