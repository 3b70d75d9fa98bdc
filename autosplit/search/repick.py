"""Level 3 where it is coupled: re-choose every stage's option at once, under pool capacity.

The dynamic programme prices devices instead of counting them, so the pipeline it returns at
a given price can take a few devices more than a pool has, or leave some idle that another
stage could use. With the stages' units and groups fixed, choosing one option per stage so
that the pools' capacities hold and ``(m − 1)·max u + Σ u`` is least is a multiple-choice
knapsack with a max — a small integer programme that OR-Tools CP-SAT solves exactly (one
worker, fixed seed, a deterministic time limit: the same answer on every machine).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autosplit.search.menu import Menu
from autosplit.search.pipeline_dp import Stage

__all__ = ["Hop", "PipelineEstimate", "repick_options", "upgrade_options"]

_SCALE = 1e9  # seconds → integer nanoseconds for CP-SAT
#: Candidates compared at once in the dominance filter (bounds its memory).
_DOMINANCE_BLOCK = 256


def _candidates(menu: Menu, stage: Stage, in_flight: int, *, any_group: bool) -> np.ndarray:
    r = int(menu.ranges.of[stage.start, stage.end])
    ok = menu.kmax[:, r] >= in_flight
    if not any_group:
        ok &= menu.group == stage.group
    return np.flatnonzero(ok & np.isfinite(menu.busy[:, r]))


def _undominated(menu: Menu, stage: Stage, cands: np.ndarray, *, use_all: bool) -> np.ndarray:
    """``cands`` without the options another candidate dominates: no slower, no larger a tail
    where one counts, and no more devices of any pool or slot limit (``use_all``: the same
    devices, since every device must then be spent). Swapping a dominated option for its
    dominator keeps a choice feasible and its objective no worse, so the optimum is kept
    while the integer programme shrinks (hundreds of options per stage on large clusters, a
    handful left). Ties keep the lowest index; the stage's current option is kept for the
    solver's hint."""
    r = int(menu.ranges.of[stage.start, stage.end])
    busy = menu.busy[cands, r]
    extra = menu.tail[cands, r] if stage.start == 0 else np.zeros(cands.size)
    dev = menu.demand[cands]
    pools = menu.devices.shape[1]
    order = np.lexsort((cands, dev[:, :pools].sum(axis=1), extra, busy))
    rank = np.empty(cands.size, dtype=np.int64)
    rank[order] = np.arange(cands.size)
    dominated = np.zeros(cands.size, dtype=bool)
    for lo in range(0, cands.size, _DOMINANCE_BLOCK):  # blocks of b: memory O(C · block)
        b = slice(lo, lo + _DOMINANCE_BLOCK)
        devices_ok = (dev[:, None, :] <= dev[None, b, :]).all(axis=2)
        if use_all:
            devices_ok &= (dev[:, None, :pools] == dev[None, b, :pools]).all(axis=2)
        # [a, b]: a dominates b (no worse anywhere, and earlier in the order)
        dominates = (devices_ok & (busy[:, None] <= busy[None, b])
                     & (extra[:, None] <= extra[None, b]) & (rank[:, None] < rank[None, b]))
        dominated[b] = dominates.any(axis=0)
    keep = ~dominated | (cands == stage.option)
    return cands[keep]


def repick_options(menu: Menu, stages: Sequence[Stage], *, in_flight: np.ndarray,
                   capacity: np.ndarray, micro_batches: int, use_all: bool,
                   deterministic_time: float, wall_limit_s: float = math.inf,
                   any_group: bool = True) -> list[int] | None:
    """Option indices (one per stage, same order) minimising the pipeline objective under
    ``capacity`` — the pools' device counts, then the slot limits (``Menu.limits_of``) —
    (``use_all``: every device used), or ``None`` if no choice fits. With
    ``any_group`` a stage may also move to another device group (its units and position
    stay): where prices left one pool overused, its stages spill to the others.
    ``deterministic_time`` decides the answer; ``wall_limit_s`` only cuts it short when the
    search's clock runs out (the caller then reports the time limit as what stopped it)."""
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    choice: list[list[tuple[int, object]]] = []
    rows = []
    for st in stages:
        cands = _candidates(menu, st, int(in_flight[st.position]), any_group=any_group)
        if cands.size == 0:
            return None
        rows.append(_undominated(menu, st, cands, use_all=use_all))
    top = max(float(menu.busy[c, int(menu.ranges.of[st.start, st.end])].max())
              for c, st in zip(rows, stages, strict=True))
    slowest = model.new_int_var(0, int(round(top * _SCALE)) + 1, "slowest")
    objective = []
    for s, (st, cands) in enumerate(zip(stages, rows, strict=True)):
        r = int(menu.ranges.of[st.start, st.end])
        row = []
        for o in cands:
            x = model.new_bool_var(f"x{s}_{o}")
            row.append((int(o), x))
            busy = int(round(float(menu.busy[o, r]) * _SCALE))
            model.add(slowest >= busy).only_enforce_if(x)
            extra = float(menu.tail[o, r]) if st.start == 0 else 0.0
            objective.append((busy + int(round(extra * _SCALE))) * x)
        model.add_exactly_one(x for _, x in row)
        choice.append(row)
    demand = menu.demand
    pools = menu.devices.shape[1]
    for p, cap in enumerate(capacity):
        terms = [int(demand[o, p]) * x for row in choice for o, x in row if demand[o, p]]
        exact = use_all and p < pools  # slot limits are upper limits only
        if not terms:
            if exact and cap > 0:
                return None
            continue
        used = sum(terms)
        if exact:
            model.add(used == int(cap))
        else:
            model.add(used <= int(cap))
    model.minimize(sum(objective) + (micro_batches - 1) * slowest)
    for st, row in zip(stages, choice, strict=True):
        for o, x in row:
            model.add_hint(x, o == st.option)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    solver.parameters.max_deterministic_time = deterministic_time
    if math.isfinite(wall_limit_s):
        solver.parameters.max_time_in_seconds = max(wall_limit_s, 1e-3)
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return [next(o for o, x in row if solver.boolean_value(x)) for row in choice]


@dataclass(frozen=True)
class Hop:
    """A boundary between neighbouring stages as level 3's estimate sees it: the bytes per
    sample of the activation crossing it, the link's latency and bandwidth, and whether its
    transfers block compute on both sides (the CPU relay). One way takes
    ``latency + bytes · share / bandwidth`` for the larger share of the two stages, as the
    cost model charges it (``cost.stage.boundary_p2p``)."""

    bytes_per_sample: float
    latency_s: float
    bytes_per_s: float
    blocking: bool

    def one_way(self, share: np.ndarray) -> np.ndarray:
        if self.bytes_per_sample <= 0:
            return np.zeros_like(share, dtype=float)
        return self.latency_s + self.bytes_per_sample * share / self.bytes_per_s


class PipelineEstimate:
    """The cost model's closed form (``cost.pipeline.pipeline_time`` plus the largest tail)
    of a pipeline of chosen options, and its value for every candidate move of one stage.

    ``e_s`` is a stage's busy time plus both directions of its blocking transfers; ``f_s``
    the one-way time of its overlapping transfer out (the fill); the period is the slowest
    stage or the round trip ``R_s = Σ_{t≥s} (e_t + 2·f_t)`` a stage waits for when it holds
    only ``w_s`` micro-batches. A move at ``s`` changes ``e`` and ``f`` of ``s`` and its two
    neighbours only, so every candidate is valued from prefix and suffix aggregates; the
    round trips of the stages in front shift by one amount per candidate, and are looked at
    one by one only where a bound says they can set the period."""

    def __init__(self, busy: np.ndarray, share: np.ndarray, tail: np.ndarray,
                 hops: Sequence[Hop], window: np.ndarray, m: int) -> None:
        self.busy, self.share = busy.astype(float), share.astype(float)
        self.tail, self.hops, self.m = tail.astype(float), list(hops), m
        self.window = np.maximum(window.astype(float), 1.0)
        self.one_way = np.zeros(max(busy.size - 1, 0))
        inv = 1.0 / self.window
        self._inv_max = np.concatenate([[0.0], np.maximum.accumulate(inv)])
        self._inv_min = np.concatenate([[np.inf], np.minimum.accumulate(inv)])
        self._refresh()

    def _hop(self, b: int, left: np.ndarray | float, right: np.ndarray | float) -> np.ndarray:
        return self.hops[b].one_way(np.maximum(left, right))

    def _refresh(self) -> None:
        n = self.busy.size
        for b in range(n - 1):
            self.one_way[b] = float(self._hop(b, self.share[b], self.share[b + 1]))
        self.eff = self.busy.copy()
        self.fill = np.zeros(n)
        for b, h in enumerate(self.hops):
            if h.blocking:
                self.eff[b] += 2.0 * self.one_way[b]
                self.eff[b + 1] += 2.0 * self.one_way[b]
            else:
                self.fill[b] = self.one_way[b]
        #: a stage's busy time with its blocking transfer in (not out) / out (not in)
        self._inner = self.busy.copy()
        self._outer = self.busy.copy()
        for b, h in enumerate(self.hops):
            if h.blocking:
                self._inner[b + 1] += 2.0 * self.one_way[b]
                self._outer[b] += 2.0 * self.one_way[b]
        step = self.eff + 2.0 * self.fill
        self.trip = np.cumsum(step[::-1])[::-1]  # R_s
        ratio = self.trip / self.window
        self.trip_after = np.maximum.accumulate(ratio[::-1])[::-1]  # max over s' ≥ s
        self._ratio_before = np.concatenate([[-np.inf], np.maximum.accumulate(ratio)])
        self._eff_before = np.concatenate([[0.0], np.maximum.accumulate(self.eff)])
        self._eff_after = np.concatenate([np.maximum.accumulate(self.eff[::-1])[::-1], [0.0]])
        self._eff_sum = np.concatenate([[0.0], np.cumsum(self.eff)])
        self._fill_sum = np.concatenate([[0.0], np.cumsum(self.fill)])
        self._tail_top = _top_two(self.tail)

    def value(self) -> float:
        period = max(float(self.eff.max()), float(self.trip_after[0]))
        return float(self.eff.sum() + (self.m - 1) * period + 2.0 * self.fill.sum()
                     + self.tail.max())

    def moves(self, s: int, busy: np.ndarray, share: np.ndarray, tail: np.ndarray
              ) -> np.ndarray:
        """The closed form with stage ``s`` on each candidate (arrays over candidates)."""
        n = self.busy.size
        lo, hi = max(s - 1, 0), min(s + 2, n)  # the stages a move at s can change
        # The two boundaries beside s, per candidate; a blocking one adds both ways to both
        # of its stages, an overlapping one is the fill of the stage in front of it.
        left = self._hop(s - 1, self.share[s - 1], share) if s > 0 else 0.0
        right = self._hop(s, share, self.share[s + 1]) if s < n - 1 else 0.0
        blk_l = s > 0 and self.hops[s - 1].blocking
        blk_r = s < n - 1 and self.hops[s].blocking
        e_s = busy + (2.0 * left if blk_l else 0.0) + (2.0 * right if blk_r else 0.0)
        f_s = 0.0 if blk_r else right
        window_e, window_f = [], []  # front to back: (s − 1), s, (s + 1)
        if s > 0:
            e = self._inner[s - 1] + (2.0 * left if blk_l else 0.0)
            window_e.append(e)
            window_f.append(0.0 if blk_l else left)
        window_e.append(e_s)
        window_f.append(f_s)
        if s < n - 1:
            e = self._outer[s + 1] + (2.0 * right if blk_r else 0.0)
            window_e.append(e)
            window_f.append(self.fill[s + 1])
        top = functools.reduce(np.maximum, window_e,
                               max(self._eff_before[lo], self._eff_after[hi]))
        total = self._eff_sum[n] - (self._eff_sum[hi] - self._eff_sum[lo]) + sum(window_e)
        fills = self._fill_sum[n] - (self._fill_sum[hi] - self._fill_sum[lo]) + sum(window_f)
        # Round trips: behind the window unchanged, inside it recomputed, in front shifted.
        running = self.trip[hi] if hi < n else 0.0
        trip = self.trip_after[hi] if hi < n else 0.0
        for t, e, f in zip(range(hi - 1, lo - 1, -1), reversed(window_e), reversed(window_f),
                           strict=True):
            running = running + e + 2.0 * f
            trip = np.maximum(trip, running / self.window[t])
        period = np.maximum(top, trip)
        if lo > 0:
            shift = running - self.trip[lo]
            bound = self._ratio_before[lo] + np.maximum(shift * self._inv_max[lo],
                                                        shift * self._inv_min[lo])
            if np.any(bound > period):  # the stages in front may set the period
                front = (self.trip[:lo, None] + np.atleast_1d(shift)[None, :]
                         ) / self.window[:lo, None]
                period = np.maximum(period, front.max(axis=0))
        return (total + (self.m - 1) * period + 2.0 * fills
                + np.maximum(_other(self._tail_top, s), tail))

    def take(self, s: int, busy: float, share: float, tail: float) -> None:
        self.busy[s], self.share[s], self.tail[s] = busy, share, tail
        self._refresh()


def upgrade_options(menu: Menu, stages: Sequence[Stage], *, in_flight: np.ndarray,
                    capacity: np.ndarray, micro_batches: int,
                    any_group: bool = False, use_all: bool = False,
                    hops: Sequence[Hop] = (), as_is: bool = False
                    ) -> tuple[list[int] | None, float]:
    """Spend the devices a pipeline leaves idle where they shorten the iteration most
    (``use_all``: then keep spending them, the least harmful move first, until none is idle
    or no move takes more).

    Greedy and exact in its step: each round tries every stage's other options that still
    fit its position and the pools' spare devices, and keeps the one move that lowers the
    estimate most, until none does. Two passes: first ``(m − 1)·max u + Σ u + max tail``
    (the menu's times of the stages' own units; the tail — all-reduce and optimizer step —
    of the slowest-to-finish stage, without the backward it may hide behind), whose rounds
    are cheap; then, from where it stopped, the cost model's closed form
    (``PipelineEstimate``) with the transfers at the boundaries ``hops`` — a stage's share
    sets what it sends, so more replicas also shorten them, and blocking ones add to both
    stages' busy time — and the in-flight round trip. Returns the options and that estimate
    of the pipeline's time (without ``hops``, no transfers: the exact pricing adds them, and
    may hide part of the tail); ``None`` if the
    pipeline cannot be made to fit at its stages' true positions. ``capacity`` is
    ``Menu.limits_of`` the pools' device counts; ``as_is``: no moves, the pipeline
    as it is, valued."""
    m = micro_batches
    ranges = [int(menu.ranges.of[st.start, st.end]) for st in stages]
    cands = [_candidates(menu, st, int(in_flight[st.position]), any_group=any_group)
             for st in stages]
    if any(c.size == 0 for c in cands):
        return None, math.inf  # a stage fits no option at its true position
    busy_c = [menu.busy[c, r] for c, r in zip(cands, ranges, strict=True)]
    tail_c = [menu.tail[c, r] for c, r in zip(cands, ranges, strict=True)]
    share_c = [menu.share[c].astype(float) for c in cands]
    dev_c = [menu.demand[c] for c in cands]
    pools = menu.devices.shape[1]
    # A stage priced deeper than its true position may not fit its option there: start it
    # from its fewest-device option that does.
    chosen = [int(hit[0]) if (hit := np.flatnonzero(c == st.option)).size
              else int(np.lexsort((b, d[:, :pools].sum(axis=1)))[0])
              for c, st, b, d in zip(cands, stages, busy_c, dev_c, strict=True)]
    used = sum(d[k] for d, k in zip(dev_c, chosen, strict=True))
    if (used > capacity).any():
        return None, math.inf
    start = (np.array([b[k] for b, k in zip(busy_c, chosen, strict=True)]),
             np.array([q[k] for q, k in zip(share_c, chosen, strict=True)]),
             np.array([t[k] for t, k in zip(tail_c, chosen, strict=True)]))
    chain = PipelineEstimate(*start, hops,
                             np.array([min(int(in_flight[st.position]), m) for st in stages]), m)
    if as_is:
        return [int(c[k]) for c, k in zip(cands, chosen, strict=True)], chain.value()
    width = [d[:, :pools].sum(axis=1) for d in dev_c]
    moves = _Moves(busy_c, share_c, tail_c, dev_c, width, capacity, pools)
    # First the compute-only greedy, whose rounds are cheap (most of the moves on a large
    # cluster), then the closed form's from where it stopped.
    chosen, used = moves.greedy(_ComputeOnly(*start, m), chosen, used, use_all=False)
    chain = PipelineEstimate(*(np.array([a[k] for a, k in zip(x, chosen, strict=True)])
                               for x in (busy_c, share_c, tail_c)), hops,
                             np.array([min(int(in_flight[st.position]), m) for st in stages]), m)
    chosen, used = moves.greedy(chain, chosen, used, use_all=use_all)
    return [int(c[k]) for c, k in zip(cands, chosen, strict=True)], chain.value()


class _ComputeOnly:
    """``(m − 1)·max u + Σ u + max tail`` of the menu's times: the upgrade's first, cheap
    estimate (no transfers, no round trips), with the interface of ``PipelineEstimate``."""

    def __init__(self, busy: np.ndarray, _share: np.ndarray, tail: np.ndarray,
                 m: int) -> None:
        self.busy, self.tail, self.m = busy.astype(float), tail.astype(float), m
        self._refresh()

    def _refresh(self) -> None:
        self._total = float(self.busy.sum())
        self._busy_top = _top_two(self.busy)
        self._tail_top = _top_two(self.tail)

    def value(self) -> float:
        return float((self.m - 1) * self.busy.max() + self._total + self.tail.max())

    def moves(self, s: int, busy: np.ndarray, _share: np.ndarray, tail: np.ndarray
              ) -> np.ndarray:
        return ((self.m - 1) * np.maximum(_other(self._busy_top, s), busy) + self._total
                - self.busy[s] + busy + np.maximum(_other(self._tail_top, s), tail))

    def take(self, s: int, busy: float, _share: float, tail: float) -> None:
        self.busy[s], self.tail[s] = busy, tail
        self._refresh()


def _top_two(values: np.ndarray) -> tuple[int, float, float]:
    """Where the largest value is, it, and the largest of the others (0 when none)."""
    first = int(np.argmax(values))
    second = float(np.max(np.delete(values, first))) if values.size > 1 else 0.0
    return first, max(0.0, float(values[first])), max(0.0, second)


def _other(top: tuple[int, float, float], s: int) -> float:
    """The largest value but the one at ``s``, from ``_top_two``."""
    first, best, second = top
    return second if s == first else best


@dataclass
class _Moves:
    """The candidates of every stage, and the greedy that moves one stage per round."""

    busy: list[np.ndarray]
    share: list[np.ndarray]
    tail: list[np.ndarray]
    demand: list[np.ndarray]
    width: list[np.ndarray]
    capacity: np.ndarray
    pools: int

    def greedy(self, est: PipelineEstimate | _ComputeOnly, chosen: list[int], used: np.ndarray,
               *, use_all: bool) -> tuple[list[int], np.ndarray]:
        """Take the move that lowers ``est`` most until none does (``use_all``: then the least
        harmful of those that take more devices, until none is idle or none takes more)."""
        chosen = list(chosen)
        filling = False
        pools, capacity = self.pools, self.capacity
        while True:
            current = est.value()
            best: tuple[float, int, int] | None = None
            for s in range(len(chosen)):
                spare = capacity - used + self.demand[s][chosen[s]]
                ok = (self.demand[s] <= spare).all(axis=1)
                if filling:  # only moves that take more devices
                    ok &= self.width[s] > self.width[s][chosen[s]]
                value = np.where(ok, est.moves(s, self.busy[s], self.share[s], self.tail[s]),
                                 np.inf)
                k = int(np.argmin(value))
                limit = np.inf if filling else current - 1e-12
                if value[k] < limit and (best is None or value[k] < best[0]):
                    best = (float(value[k]), s, k)
            if (best is None and use_all and not filling
                    and (used[:pools] < capacity[:pools]).any()):
                filling = True
                continue
            if best is None:
                return chosen, used
            _, s, k = best
            used = used - self.demand[s][chosen[s]] + self.demand[s][k]
            chosen[s] = k
            est.take(s, float(self.busy[s][k]), float(self.share[s][k]), float(self.tail[s][k]))
