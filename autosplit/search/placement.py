"""The last step of level 3: which concrete devices each stage gets.

The search decides only how many devices of each pool a stage takes (pools are
interchangeable). This module turns counts into devices, in one of two ways — the caller
prices both and keeps the better (``assemble``):

- ``tape``: each pool's devices in node order, taken by its stages in pipeline order, so a
  stage boundary inside a pool falls inside a node wherever it can (the intra-node link) and
  at most one stage per node boundary spans two nodes;
- ``compact``: the largest tensor-parallel groups first, and a stage that fits in one node
  on one node (its all-reduce stays inside), first fit.

Tensor-parallel groups never cross a node. ``compact`` takes the largest groups first, which
packs every choice the search's slot limits admit (``packing``); ``tape`` may not, and then
raises ``PlacementError`` and the other strategy is priced.
Deterministic: node order, then pipeline order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autosplit.plan.schema import Replica
from autosplit.search.groups import Pool
from autosplit.search.options import StageOption

__all__ = ["PlacementError", "place", "lane_shares", "STRATEGIES"]

#: Placement strategies, in the order they are tried.
STRATEGIES: tuple[str, ...] = ("tape", "compact")


class PlacementError(ValueError):
    """The counts fit the pools' capacities but not their nodes (fragmentation)."""


@dataclass
class _Free:
    """A pool's free devices. Each node's devices are taken from its front, so its free
    devices are always ``used[k]`` up to the node's size: one count per node, no lists."""

    names: list[str]
    size: int
    used: list[int]
    #: Nodes before this one are full (where the tape resumes).
    start: int = 0

    def room(self, k: int) -> int:
        return self.size - self.used[k]

    def grab(self, k: int, tp: int) -> tuple[str, tuple[int, ...]]:
        u = self.used[k]
        self.used[k] = u + tp
        return self.names[k], tuple(range(u, u + tp))


def lane_shares(option: StageOption, micro_batch_samples: int) -> list[list[int]]:
    """Per-replica shares of a micro-batch, lane by lane: each lane at most its share, the
    total exactly the micro-batch, at least one sample per replica. Shares are trimmed from
    the last lane first (the slower chip of a mixed stage), evenly within a lane."""
    shares = [[lane.share] * lane.replicas for lane in option.lanes]
    excess = sum(sum(s) for s in shares) - micro_batch_samples
    for lane in reversed(shares):
        while excess > 0 and max(lane) > 1:
            k = max(range(len(lane)), key=lambda r: (lane[r], r))
            lane[k] -= 1
            excess -= 1
    if excess != 0:
        raise PlacementError(f"shares of {option} cannot sum to {micro_batch_samples}")
    return shares


def _take(free: _Free, tp: int, count: int, *,
          small: bool) -> list[tuple[str, tuple[int, ...]]]:
    """``count`` TP groups of ``tp`` devices, each inside one node. A small stage goes to the
    first node that holds all of it; a large one takes whole free nodes first."""
    out: list[tuple[str, tuple[int, ...]]] = []
    nodes = range(len(free.used))
    if small:
        for k in nodes:
            if free.room(k) >= tp * count:
                return [free.grab(k, tp) for _ in range(count)]
    whole = [k for k in nodes if free.used[k] == 0]
    for k in whole + [k for k in nodes if 0 < free.used[k] < free.size]:
        while len(out) < count and free.room(k) >= tp:
            out.append(free.grab(k, tp))
        if len(out) == count:
            return out
    raise PlacementError("not enough free devices in whole TP groups")


def _tape(free: _Free, tp: int, count: int) -> list[tuple[str, tuple[int, ...]]]:
    """``count`` TP groups from the first nodes with room, in node order (a node with too
    few devices left for a group keeps them for later, smaller groups). Each call resumes
    after the nodes already full instead of walking them again."""
    out: list[tuple[str, tuple[int, ...]]] = []
    n = len(free.used)
    while free.start < n and free.used[free.start] == free.size:
        free.start += 1
    for k in range(free.start, n):
        while len(out) < count and free.room(k) >= tp:
            out.append(free.grab(k, tp))
        if len(out) == count:
            return out
    raise PlacementError("not enough free devices in whole TP groups")


def place(options: Sequence[StageOption], pools: Sequence[Pool], micro_batch_samples: int,
          strategy: str = "tape") -> list[tuple[Replica, ...]]:
    """Replicas (node, devices, share, chip) of every stage, in pipeline order."""
    used = {lane.pool for opt in options for lane in opt.lanes}
    free = {p.index: _Free(names=[n.name for n in p.nodes], size=p.devices_per_node,
                           used=[0] * len(p.nodes))
            for p in pools if p.index in used}
    picked: dict[tuple[int, int], list[tuple[str, tuple[int, ...]]]] = {}
    lanes = [(s, k, opt.tp, lane) for s, opt in enumerate(options)
             for k, lane in enumerate(opt.lanes)]
    if strategy == "tape":
        # Pipeline order; a TP degree that does not divide the ones before it could leave
        # gaps, so degrees are taken largest first only where they differ within a pool.
        for s, k, tp, lane in sorted(lanes, key=lambda x: (x[0], x[1])):
            picked[(s, k)] = _tape(free[lane.pool], tp, lane.replicas)
    else:
        # Largest TP groups first (no gaps), then larger stages, then pipeline order.
        for s, k, tp, lane in sorted(lanes, key=lambda x: (-x[2], -x[2] * x[3].replicas,
                                                           x[0], x[1])):
            pool = pools[lane.pool]
            small = tp * lane.replicas <= pool.devices_per_node
            picked[(s, k)] = _take(free[lane.pool], tp, lane.replicas, small=small)
    out: list[tuple[Replica, ...]] = []
    for s, opt in enumerate(options):
        shares = lane_shares(opt, micro_batch_samples)
        reps: list[Replica] = []
        for k, lane in enumerate(opt.lanes):
            chip = pools[lane.pool].chip
            for (node, idx), share in zip(picked[(s, k)], shares[k], strict=True):
                reps.append(Replica(node=node, local_indices=idx, batch_share=share, chip=chip))
        out.append(tuple(reps))
    return _aligned(out, [len(opt.lanes) == 1 for opt in options])


def _aligned(stages: list[tuple[Replica, ...]], movable: list[bool]
             ) -> list[tuple[Replica, ...]]:
    """Replicas reordered so that each boundary stays inside a node where the devices allow:
    a stage's activations leave from its last replica's node to the next stage's first
    (``cluster.link_between``), so a one-chip stage starts on the node the stage before
    ends on and ends on a node the stage after uses. Which devices a stage holds is
    unchanged; only the order of its replicas. Mixed-chip stages keep their lanes' order."""
    out = [list(reps) for reps in stages]
    for s, reps in enumerate(out):
        if not movable[s]:
            continue
        if s > 0:
            k = next((k for k, r in enumerate(reps) if r.node == out[s - 1][-1].node), 0)
            reps.insert(0, reps.pop(k))
        if s + 1 < len(out) and len(reps) > 1:
            ahead = {r.node for r in out[s + 1]}
            k = next((k for k in range(len(reps) - 1, 0, -1) if reps[k].node in ahead), None)
            if k is not None:
                reps.append(reps.pop(k))
    return [tuple(reps) for reps in out]
