"""Level 3 where it is coupled: re-choose every stage's option at once, under pool capacity.

The dynamic programme prices devices instead of counting them, so the pipeline it returns at
a given price can take a few devices more than a pool has, or leave some idle that another
stage could use. With the stages' units and groups fixed, choosing one option per stage so
that the pools' capacities hold and ``(m − 1)·max u + Σ u`` is least is a multiple-choice
knapsack with a max — a small integer programme that OR-Tools CP-SAT solves exactly (one
worker, fixed seed, a deterministic time limit: the same answer on every machine).

The greedy upgrade (``upgrade_options``) is the cheap counterpart used on every pipeline the
programme returns: one move at a time, valued by ``estimate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autosplit.search.estimate import ComputeOnlyEstimate, Hop, PipelineEstimate
from autosplit.search.menu import Menu
from autosplit.search.pipeline_dp import Stage

__all__ = ["repick_options", "upgrade_options"]

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
    estimate most, until none does. Two passes: first ``(m − 1)·max u + Σ u + tail``
    (the menu's times of the stages' own units; the tail — all-reduce and optimizer step —
    of the slowest-to-finish stage, less the backward of the stages in front it hides
    behind), whose rounds are cheap; then, from where it stopped, the cost model's closed
    form (``PipelineEstimate``) with the transfers at the boundaries ``hops`` — a stage's
    share sets what it sends, so more replicas also shorten them, and blocking ones add to
    both stages' busy time — and the in-flight round trip. Returns the options and that
    estimate of the pipeline's time (without ``hops``, no transfers: the exact pricing adds
    them); ``None`` if the
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
    back_c = [menu.backward[c, r] for c, r in zip(cands, ranges, strict=True)]
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
             np.array([t[k] for t, k in zip(tail_c, chosen, strict=True)]),
             np.array([w[k] for w, k in zip(back_c, chosen, strict=True)]))
    chain = PipelineEstimate(*start, hops,
                             np.array([min(int(in_flight[st.position]), m) for st in stages]), m)
    if as_is:
        return [int(c[k]) for c, k in zip(cands, chosen, strict=True)], chain.value()
    width = [d[:, :pools].sum(axis=1) for d in dev_c]
    moves = _Moves(busy_c, share_c, tail_c, back_c, dev_c, width, capacity, pools)
    # First the compute-only greedy, whose rounds are cheap (most of the moves on a large
    # cluster), then the closed form's from where it stopped.
    chosen, used = moves.greedy(ComputeOnlyEstimate(*start, m), chosen, used, use_all=False)
    chain = PipelineEstimate(*(np.array([a[k] for a, k in zip(x, chosen, strict=True)])
                               for x in (busy_c, share_c, tail_c, back_c)), hops,
                             np.array([min(int(in_flight[st.position]), m) for st in stages]), m)
    chosen, used = moves.greedy(chain, chosen, used, use_all=use_all)
    return [int(c[k]) for c, k in zip(cands, chosen, strict=True)], chain.value()


@dataclass
class _Moves:
    """The candidates of every stage, and the greedy that moves one stage per round."""

    busy: list[np.ndarray]
    share: list[np.ndarray]
    tail: list[np.ndarray]
    backward: list[np.ndarray]
    demand: list[np.ndarray]
    width: list[np.ndarray]
    capacity: np.ndarray
    pools: int

    def greedy(self, est: PipelineEstimate | ComputeOnlyEstimate, chosen: list[int],
               used: np.ndarray, *, use_all: bool) -> tuple[list[int], np.ndarray]:
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
                value = np.where(ok, est.moves(s, self.busy[s], self.share[s], self.tail[s],
                                           self.backward[s]),
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
            est.take(s, float(self.busy[s][k]), float(self.share[s][k]), float(self.tail[s][k]),
                     float(self.backward[s][k]))
