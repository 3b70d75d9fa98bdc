"""Whether TP groups fit into nodes, counted without placing them.

A TP group lives inside one node. Where a TP degree divides the node's device count, a
pool's device count is all a choice of options has to respect: any mix of such groups packs.
Where it does not (a degree 2 on nodes of 3 devices, 4 on nodes of 6), a node holds at most
``t·⌊g/t⌋`` devices' worth of groups of ``t`` or more devices, and a pool of ``n`` nodes
``n·t·⌊g/t⌋`` — a *slot* limit, one per such pool and degree.

For degrees that divide one another (1, 2, 4, 8) the device count and the slot limits together
are exact: largest groups first, every node's used devices stay a multiple of the next size,
so the room left for groups of ``t`` is exactly the slot limit less the larger groups
(first-fit decreasing is optimal for divisible sizes). ``placement``'s ``compact`` strategy
packs in that order. For degrees that do not divide one another the limits are necessary
only, and placement is the final check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autosplit.search.groups import Pool
from autosplit.search.options import StageOption, max_groups

__all__ = ["SlotLimit", "slot_limits", "slot_demand"]


@dataclass(frozen=True)
class SlotLimit:
    """Devices of ``pool`` in TP groups of at least ``tp`` devices: at most ``capacity``."""

    pool: int
    tp: int
    capacity: int


def slot_limits(pools: Sequence[Pool], tp_degrees: Sequence[int]) -> tuple[SlotLimit, ...]:
    """The slot limits of every pool and allowed degree that does not divide its nodes."""
    out = []
    for p in pools:
        g = p.devices_per_node
        for t in sorted(set(tp_degrees)):
            if 1 < t <= g and g % t:
                out.append(SlotLimit(pool=p.index, tp=t, capacity=t * max_groups(p, t)))
    return tuple(out)


def slot_demand(options: Sequence[StageOption], limits: Sequence[SlotLimit]) -> np.ndarray:
    """``[option, limit]``: the devices each option puts under each slot limit."""
    out = np.zeros((len(options), len(limits)), dtype=np.int64)
    for k, lim in enumerate(limits):
        for o, opt in enumerate(options):
            if opt.tp >= lim.tp:
                out[o, k] = opt.devices_of(lim.pool)
    return out
