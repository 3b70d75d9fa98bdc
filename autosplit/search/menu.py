"""Every stage option of one micro-batch size, priced on every class of unit ranges.

The search's inner loop needs, for each option and range, three numbers: the compute time
per micro-batch, the largest number of micro-batches in flight that still fits in memory, and
the gradient all-reduce plus optimizer step after the pipeline drains. They come from the cost
model's own functions (``cost.stage``) on the same per-unit tables ``evaluate`` uses, so the
search and a re-costed plan agree. Stacked into arrays (options × ranges), one threshold's
feasibility and price for all options is a single numpy expression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from autosplit.cluster.schema import Cluster, Link
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.memory import unusable_bytes
from autosplit.cost.stage import (
    StageTables,
    backward_time,
    build_tables,
    compute_time,
    memory_terms,
    overlap_window,
    tail_terms,
)
from autosplit.model.types import ModelProfile
from autosplit.protocols.cost import LayerCostProvider
from autosplit.search.groups import DeviceGroup, Pool
from autosplit.search.options import (
    LaneOption,
    StageOption,
    mixed_lane_counts,
    plain_options,
    share_pairs,
)
from autosplit.search.packing import SlotLimit, slot_demand, slot_limits
from autosplit.search.ranges import RangeIndex, blocks_identical, range_index

__all__ = ["Menu", "TableCache", "build_menu", "NEVER_FITS", "ALWAYS_FITS"]

#: ``kmax`` of a range that does not fit even with nothing in flight / that fits at any depth.
NEVER_FITS = -1
ALWAYS_FITS = 1 << 30


class TableCache:
    """Per-unit cost tables by (pool, TP, share): options and micro-batch sizes share them."""

    def __init__(self, *, model: ModelProfile, cluster: Cluster, pools: list[Pool],
                 costs: LayerCostProvider, training: TrainingConfig) -> None:
        self.model, self.cluster, self.pools = model, cluster, pools
        self.costs, self.training = costs, training
        self._tables: dict[tuple[int, int, int], StageTables] = {}
        self._identical: dict[tuple[int, int, int, int, int], bool] = {}
        #: Exact range-cost matrices of placed stages, shared by every pipeline priced
        #: (``assemble``), keyed by what determines them.
        self.matrices: dict[tuple, object] = {}

    def identical(self, pool: int, tp: int, share: int, first: int, end: int) -> bool:
        """Whether the blocks ``[first, end)`` cost the same in that table (cached)."""
        key = (pool, tp, share, first, end)
        if key not in self._identical:
            self._identical[key] = blocks_identical([self.tables(pool, tp, share)], first, end)
        return self._identical[key]

    def tables(self, pool: int, tp: int, share: int) -> StageTables:
        key = (pool, tp, share)
        hit = self._tables.get(key)
        if hit is None:
            p = self.pools[pool]
            hit = build_tables(model=self.model, chip=self.cluster.chips[p.chip], node=p.node,
                               tp=tp, share=share, costs=self.costs, dtype=self.training.dtype)
            self._tables[key] = hit
        return hit


@dataclass(frozen=True)
class Menu:
    """The options of one micro-batch size and their prices on every range class.

    Arrays are indexed ``[option]`` or ``[option, range class]``; ``devices[o, p]`` counts the
    devices option ``o`` takes from pool ``p``, ``slots[o, k]`` the devices it puts under
    the slot limit ``limits[k]`` (``packing``: TP degrees that do not divide a node).
    """

    micro_batch_samples: int
    options: tuple[StageOption, ...]
    group: np.ndarray
    devices: np.ndarray
    share: np.ndarray
    busy: np.ndarray
    kmax: np.ndarray
    tail: np.ndarray
    backward: np.ndarray  # the backward part of busy (what later stages' tails hide behind)
    ranges: RangeIndex
    limits: tuple[SlotLimit, ...] = ()
    slots: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.options)

    @cached_property
    def demand(self) -> np.ndarray:
        """``[option, pool + slot limit]``: what an option takes of every capacity that
        level 3 must respect (the programme respects the pools' device counts only); built
        once per menu, level 3 reads it on every move."""
        if not self.limits or self.slots is None:
            return self.devices
        return np.hstack([self.devices, self.slots])

    def limits_of(self, capacity: np.ndarray) -> np.ndarray:
        """The pools' device counts followed by the slot limits: the columns of ``demand``."""
        return np.concatenate([capacity, np.array([lim.capacity for lim in self.limits],
                                                  dtype=np.int64)])


def _dp_link(cluster: Cluster, pools: list[Pool], option: StageOption) -> Link:
    """The link a stage's gradient all-reduce runs over: inside one node when its devices fit
    in one (the placement keeps such stages on one node), else between nodes."""
    lanes = option.lanes
    first = pools[lanes[0].pool]
    if len(lanes) == 1 and option.num_devices <= first.devices_per_node:
        node = first.node
        return Link("intra_node", node.intra_bw_gbs, node.intra_latency_s)
    other = pools[lanes[-1].pool]
    if other.index == first.index:
        if len(first.nodes) < 2:
            node = first.node
            return Link("intra_node", node.intra_bw_gbs, node.intra_latency_s)
        return cluster.link_between(first.nodes[0], first.nodes[1])
    return cluster.link_between(first.node, other.node)


def _price(cache: TableCache, pools: list[Pool], option: StageOption, rng: RangeIndex,
           training: TrainingConfig
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(busy, kmax, tail, backward) of one option over the range representatives."""
    i, j = rng.start, rng.end
    busy = np.zeros(rng.size)
    backward = np.zeros(rng.size)
    kmax = np.full(rng.size, ALWAYS_FITS, dtype=np.int64)
    dp = option.replicas
    slowest_bw = min(cache.cluster.chips[pools[ln.pool].chip].achievable_bytes_per_s()
                     for ln in option.lanes)
    for lane in option.lanes:
        t = cache.tables(lane.pool, option.tp, lane.share)
        busy = np.maximum(busy, compute_time(t, i, j, option.recompute))
        backward = np.maximum(backward, backward_time(t, i, j, option.recompute))
        static, per, work = memory_terms(t, tp=option.tp, dp=dp, share=lane.share,
                                         training=training, i=i, j=j,
                                         recompute=option.recompute)
        usable = (pools[lane.pool].memory_bytes
                  - unusable_bytes(cache.cluster.chips[pools[lane.pool].chip], training))
        room = usable - static - work
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.where(per > 0, np.floor(room / np.where(per > 0, per, 1.0)), ALWAYS_FITS)
        k = np.where(room < 0, NEVER_FITS, np.minimum(k, ALWAYS_FITS)).astype(np.int64)
        # Floating-point guard: the count must satisfy the same test evaluate applies.
        over = (k > 0) & (k < ALWAYS_FITS) & (static + k * per + work
                                             > usable)
        k = np.where(over, k - 1, k)
        kmax = np.minimum(kmax, k)
    t0 = cache.tables(option.lanes[0].pool, option.tp, option.lanes[0].share)
    dp_s, opt_s = tail_terms(t0, tp=option.tp, dp=dp,
                             dp_link=_dp_link(cache.cluster, pools, option), training=training,
                             slowest_bytes_per_s=slowest_bw, i=i, j=j,
                             window_s=overlap_window(t0, i, j))
    return busy, kmax, np.asarray(dp_s + opt_s, dtype=float), backward


def _mixed_options(cache: TableCache, group: DeviceGroup, pools: list[Pool], *,
                   micro_batch_samples: int, search: SearchConfig) -> list[StageOption]:
    """Options of a two-pool group: for each TP degree and replica counts, the share pairs
    that best balance the two chips on a whole model (and their neighbours on the Pareto
    front of shares, since a stage's own units can shift the balance)."""
    pa, pb = (pools[p] for p in group.pools)
    n = cache.model.num_layers
    out: list[StageOption] = []
    rcs = (False, True) if search.allow_recompute else (False,)
    for t in sorted(set(search.tp_degrees)):
        if any(t > p.devices_per_node for p in (pa, pb)):
            continue
        for da, db in mixed_lane_counts(pa, pb, tp=t, micro_batch_samples=micro_batch_samples):
            pairs = share_pairs(da, db, micro_batch_samples=micro_batch_samples, search=search)
            if not pairs:
                continue
            spans = [max(float(compute_time(cache.tables(pa.index, t, qa), 0, n, False)),
                         float(compute_time(cache.tables(pb.index, t, qb), 0, n, False)))
                     for qa, qb in pairs]
            best = int(np.argmin(spans))
            for k in sorted({max(best - 1, 0), best, min(best + 1, len(pairs) - 1)}):
                qa, qb = pairs[k]
                lanes = (LaneOption(pa.index, da, qa), LaneOption(pb.index, db, qb))
                out.extend(StageOption(group=group.index, tp=t, lanes=lanes, recompute=rc)
                           for rc in rcs)
    return out


def build_menu(cache: TableCache, groups: list[DeviceGroup], *, micro_batch_samples: int,
               search: SearchConfig, check: Callable[[], None] = lambda: None) -> Menu:
    """All options of every group for micro-batches of ``micro_batch_samples`` samples.

    ``check`` is the search's clock, read before each option is priced: a large cluster's
    menu takes seconds on a loaded machine, longer than a short time limit."""
    pools = cache.pools
    options: list[StageOption] = []
    for grp in groups:
        if grp.mixed:
            options.extend(_mixed_options(cache, grp, pools,
                                          micro_batch_samples=micro_batch_samples,
                                          search=search))
        else:
            options.extend(plain_options(grp, pools[grp.pools[0]],
                                         micro_batch_samples=micro_batch_samples,
                                         search=search))
    model = cache.model
    blocks = [k for k, layer in enumerate(model.layers) if layer.kind == "block"]
    first, end = (blocks[0], blocks[-1] + 1) if blocks else (0, 0)
    contiguous = blocks == list(range(first, end))
    lanes = {(ln.pool, o.tp, ln.share) for o in options for ln in o.lanes}
    identical = contiguous and all(cache.identical(*lane, first, end) for lane in sorted(lanes))
    rng = range_index(model.num_layers, first_block=first, end_block=end, identical=identical)
    n_opt, n_rng, n_pool = len(options), rng.size, len(pools)
    busy = np.zeros((n_opt, n_rng))
    kmax = np.zeros((n_opt, n_rng), dtype=np.int64)
    tail = np.zeros((n_opt, n_rng))
    backward = np.zeros((n_opt, n_rng))
    devices = np.zeros((n_opt, n_pool), dtype=np.int64)
    for o, opt in enumerate(options):
        check()
        busy[o], kmax[o], tail[o], backward[o] = _price(cache, pools, opt, rng,
                                                         cache.training)
        for p in range(n_pool):
            devices[o, p] = opt.devices_of(p)
    limits = slot_limits(pools, search.tp_degrees)
    return Menu(micro_batch_samples=micro_batch_samples, options=tuple(options),
                group=np.array([o.group for o in options], dtype=np.int64), devices=devices,
                share=np.array([o.max_share for o in options], dtype=np.int64), busy=busy,
                kmax=kmax, tail=tail, backward=backward, ranges=rng, limits=limits,
                slots=slot_demand(options, limits))
