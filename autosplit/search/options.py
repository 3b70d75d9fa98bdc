"""Level 3 of the search tree: how one stage uses the devices of its group.

A *stage option* fixes everything about a stage except the units it owns: its device group,
TP degree, the number of data-parallel replicas of each chip and the largest share of every
micro-batch a replica of that chip processes, and whether the stage recomputes activations.

Only options that can matter are generated. For replicas of one chip, an even split of the
``B`` samples of a micro-batch over ``d`` replicas gives the largest share ``⌈B/d⌉``, and a
stage is as busy as its busiest replica, so among the replica counts with the same largest
share only the smallest can be optimal (fewer devices, the same time, a smaller all-reduce):
the counts worth trying are ``⌈B/q⌉`` for every allowed share ``q``. A stage mixing two chips
gives each chip's replicas their own share (the faster chip more), the uneven data-parallel
split; which pairs of shares balance the two chips is decided where their speeds are known
(``menu``), from the candidates generated here.
"""

from __future__ import annotations

from dataclasses import dataclass

from autosplit.config import SearchConfig
from autosplit.search.groups import DeviceGroup, Pool

__all__ = ["LaneOption", "StageOption", "plain_options", "mixed_lane_counts",
           "share_pairs", "max_groups", "MIXED_MAX_REPLICAS"]

#: Replicas of each chip a mixed stage may hold. Mixed stages pay off where a pool is too
#: small to form good stages alone; beyond this the single-chip stages of each pool do as well,
#: and the menu stays small enough for the search's per-threshold work to stay flat.
MIXED_MAX_REPLICAS = 8


@dataclass(frozen=True, order=True)
class LaneOption:
    """The replicas of one pool inside a stage: how many, and their largest batch share."""

    pool: int
    replicas: int
    share: int


@dataclass(frozen=True, order=True)
class StageOption:
    """Everything about a stage but its units: group, TP, replicas per chip, recompute."""

    group: int
    tp: int
    lanes: tuple[LaneOption, ...]
    recompute: bool

    @property
    def replicas(self) -> int:
        return sum(lane.replicas for lane in self.lanes)

    @property
    def max_share(self) -> int:
        return max(lane.share for lane in self.lanes)

    def devices_of(self, pool: int) -> int:
        return sum(self.tp * lane.replicas for lane in self.lanes if lane.pool == pool)

    @property
    def num_devices(self) -> int:
        return self.tp * self.replicas


def _tp_degrees(pool: Pool, search: SearchConfig) -> list[int]:
    """Every allowed degree that fits in a node; one that does not divide the node leaves
    devices a smaller group can use (``packing``)."""
    return [t for t in sorted(set(search.tp_degrees)) if t <= pool.devices_per_node]


def max_groups(pool: Pool, tp: int) -> int:
    """TP groups of ``tp`` devices the pool's nodes hold at once."""
    return len(pool.nodes) * (pool.devices_per_node // tp)


def _recompute_choices(search: SearchConfig) -> tuple[bool, ...]:
    return (False, True) if search.allow_recompute else (False,)


def _max_share(search: SearchConfig) -> int:
    return max(search.micro_batch_sizes)


def plain_options(group: DeviceGroup, pool: Pool, *, micro_batch_samples: int,
                  search: SearchConfig) -> list[StageOption]:
    """Options of a one-pool group: every TP degree that fits a node, every replica count
    ``⌈B/q⌉`` for the allowed shares ``q`` that the pool holds, both recompute choices."""
    b = micro_batch_samples
    counts = sorted({-(-b // q) for q in range(1, _max_share(search) + 1)})
    out: list[StageOption] = []
    for t in _tp_degrees(pool, search):
        for d in counts:
            if d > b or d > max_groups(pool, t):
                continue
            share = -(-b // d)
            if share > _max_share(search):
                continue
            for rc in _recompute_choices(search):
                out.append(StageOption(group=group.index, tp=t,
                                       lanes=(LaneOption(pool.index, d, share),),
                                       recompute=rc))
    return out


def mixed_lane_counts(pool_a: Pool, pool_b: Pool, *, tp: int,
                      micro_batch_samples: int) -> list[tuple[int, int]]:
    """Replica counts ``(d_a, d_b)`` of a mixed stage: at least one of each, each pool
    holding its replicas, and at least one sample per replica."""
    out = []
    for da in range(1, MIXED_MAX_REPLICAS + 1):
        for db in range(1, MIXED_MAX_REPLICAS + 1):
            if da > max_groups(pool_a, tp) or db > max_groups(pool_b, tp):
                continue
            if da + db > micro_batch_samples:
                continue
            out.append((da, db))
    return out


def share_pairs(da: int, db: int, *, micro_batch_samples: int,
                search: SearchConfig) -> list[tuple[int, int]]:
    """Pareto-minimal largest shares ``(q_a, q_b)`` that cover a micro-batch with ``d_a`` and
    ``d_b`` replicas: ``d_a·q_a + d_b·q_b ≥ B``, neither can shrink without the other growing."""
    b = micro_batch_samples
    qmax = _max_share(search)
    out = []
    for qa in range(1, qmax + 1):
        rest = b - da * qa
        qb = max(1, -(-rest // db)) if rest > 0 else 1
        if qb > qmax:
            continue
        if da * qa + db * qb < b or da + db > b:
            continue
        if out and out[-1][1] == qb:
            continue  # a larger q_a for the same q_b is dominated
        out.append((qa, qb))
    return out
