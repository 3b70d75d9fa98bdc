"""Level 3 where it is coupled: re-choose every stage's option at once, under pool capacity.

The dynamic programme prices devices instead of counting them, so the pipeline it returns at
a given price can take a few devices more than a pool has, or leave some idle that another
stage could use. With the stages' units and groups fixed, choosing one option per stage so
that the pools' capacities hold and ``(m − 1)·max u + Σ u`` is least is a multiple-choice
knapsack with a max — a small integer programme that OR-Tools CP-SAT solves exactly (one
worker, fixed seed, a deterministic time limit: the same answer on every machine).
"""

from __future__ import annotations

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
    neighbours only, so every candidate is valued from prefix and suffix aggregates."""

    def __init__(self, busy: np.ndarray, share: np.ndarray, tail: np.ndarray,
                 hops: Sequence[Hop], window: np.ndarray, m: int) -> None:
        self.busy, self.share = busy.astype(float), share.astype(float)
        self.tail, self.hops, self.m = tail.astype(float), list(hops), m
        self.window = np.maximum(window.astype(float), 1.0)
        self.one_way = np.zeros(max(busy.size - 1, 0))
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
        step = self.eff + 2.0 * self.fill
        self.trip = np.cumsum(step[::-1])[::-1]  # R_s
        ratio = self.trip / self.window
        self.trip_after = np.maximum.accumulate(ratio[::-1])[::-1]  # max over s' ≥ s

    def value(self) -> float:
        period = max(float(self.eff.max()), float(self.trip_after[0]))
        return float(self.eff.sum() + (self.m - 1) * period + 2.0 * self.fill.sum()
                     + self.tail.max())

    def moves(self, s: int, busy: np.ndarray, share: np.ndarray, tail: np.ndarray
              ) -> np.ndarray:
        """The closed form with stage ``s`` on each candidate (arrays over candidates)."""
        n, k = self.busy.size, busy.size
        lo, hi = max(s - 1, 0), min(s + 2, n)  # the stages a move at s can change
        eff = {t: np.full(k, self.busy[t]) for t in range(lo, hi)}
        eff[s] = busy.astype(float)
        fill = {t: np.zeros(k) for t in range(lo, hi)}
        for b in (s - 1, s):
            if not 0 <= b < n - 1:
                continue
            way = self._hop(b, share if b == s else self.share[b],
                            share if b + 1 == s else self.share[b + 1])
            if self.hops[b].blocking:
                eff[b] = eff[b] + 2.0 * way
                eff[b + 1] = eff[b + 1] + 2.0 * way
            else:
                fill[b] = fill[b] + way
        for t in range(lo, hi):  # the window's other transfers stay as they are
            for b in (t - 1, t):
                if b in (s - 1, s) or not 0 <= b < n - 1:
                    continue
                if self.hops[b].blocking:
                    eff[t] = eff[t] + 2.0 * self.one_way[b]
                elif b == t:
                    fill[t] = fill[t] + self.one_way[b]
        rest = np.concatenate([self.eff[:lo], self.eff[hi:]])
        top = np.max([eff[t] for t in range(lo, hi)], axis=0)
        top = np.maximum(top, rest.max(initial=0.0))
        total = rest.sum() + np.sum([eff[t] for t in range(lo, hi)], axis=0)
        fills = (np.concatenate([self.fill[:lo], self.fill[hi:]]).sum()
                 + np.sum([fill[t] for t in range(lo, hi)], axis=0))
        # Round trips: behind the window unchanged, inside it recomputed, in front shifted.
        after = self.trip[hi] if hi < n else 0.0
        trip = np.full(k, 0.0)
        running = np.full(k, after)
        for t in range(hi - 1, lo - 1, -1):
            running = running + eff[t] + 2.0 * fill[t]
            trip = np.maximum(trip, running / self.window[t])
        if hi < n:
            trip = np.maximum(trip, self.trip_after[hi])
        if lo > 0:
            shift = running - self.trip[lo]
            front = (self.trip[:lo, None] + shift[None, :]) / self.window[:lo, None]
            trip = np.maximum(trip, front.max(axis=0))
        period = np.maximum(top, trip)
        rest_tail = np.delete(self.tail, s).max(initial=0.0)
        return total + (self.m - 1) * period + 2.0 * fills + np.maximum(rest_tail, tail)

    def take(self, s: int, busy: float, share: float, tail: float) -> None:
        self.busy[s], self.share[s], self.tail[s] = busy, share, tail
        self._refresh()


def upgrade_options(menu: Menu, stages: Sequence[Stage], *, in_flight: np.ndarray,
                    capacity: np.ndarray, micro_batches: int,
                    any_group: bool = False, use_all: bool = False,
                    hops: Sequence[Hop] = ()) -> tuple[list[int] | None, float]:
    """Spend the devices a pipeline leaves idle where they shorten the iteration most
    (``use_all``: then keep spending them, the least harmful move first, until none is idle
    or no move takes more).

    Greedy and exact in its step: each round tries every stage's other options that still
    fit its position and the pools' spare devices, and keeps the one move that lowers
    ``(m − 1)·max u + Σ u + 2·Σ p2p + max tail`` most (the menu's times of the stage's own
    units; the transfers at the boundaries ``hops``, one per pair of neighbours — a stage's
    share sets what it sends, so more replicas also shorten them, and blocking ones add to
    both stages' busy time; the tail — all-reduce and optimizer step — of the
    slowest-to-finish stage, without the backward it may hide behind). Stops when no move
    helps. Returns the options and that estimate of the pipeline's time (without ``hops``, no
    transfers: the exact pricing adds them, and may hide part of the tail); ``None`` if the
    pipeline cannot be made to fit at its stages' true positions. ``capacity`` is
    ``Menu.limits_of`` the pools' device counts."""
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
    chain = PipelineEstimate(np.array([b[k] for b, k in zip(busy_c, chosen, strict=True)]),
                   np.array([q[k] for q, k in zip(share_c, chosen, strict=True)]),
                   np.array([t[k] for t, k in zip(tail_c, chosen, strict=True)]), hops,
                   np.array([min(int(in_flight[st.position]), m) for st in stages]), m)
    width = [d[:, :pools].sum(axis=1) for d in dev_c]
    filling = False
    while True:
        current = chain.value()
        best: tuple[float, int, int] | None = None
        for s in range(len(stages)):
            spare = capacity - used + dev_c[s][chosen[s]]
            ok = (dev_c[s] <= spare).all(axis=1)
            if filling:  # only moves that take more devices
                ok &= width[s] > width[s][chosen[s]]
            value = np.where(ok, chain.moves(s, busy_c[s], share_c[s], tail_c[s]), np.inf)
            k = int(np.argmin(value))
            limit = np.inf if filling else current - 1e-12
            if value[k] < limit and (best is None or value[k] < best[0]):
                best = (float(value[k]), s, k)
        if best is None and use_all and not filling and (used[:pools] < capacity[:pools]).any():
            filling = True
            continue
        if best is None:
            return [int(c[k]) for c, k in zip(cands, chosen, strict=True)], current
        _, s, k = best
        used = used - dev_c[s][chosen[s]] + dev_c[s][k]
        chosen[s] = k
        chain.take(s, float(busy_c[s][k]), float(share_c[s][k]), float(tail_c[s][k]))
