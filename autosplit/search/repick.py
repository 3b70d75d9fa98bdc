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

import numpy as np

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
    where one counts, and no more devices of any pool (``use_all``: the same devices, since
    every device must then be spent). Swapping a dominated option for its dominator keeps a
    choice feasible and its objective no worse, so the optimum is kept while the integer
    programme shrinks (hundreds of options per stage on large clusters, a handful left).
    Ties keep the lowest index; the stage's current option is kept for the solver's hint."""
    r = int(menu.ranges.of[stage.start, stage.end])
    busy = menu.busy[cands, r]
    extra = menu.tail[cands, r] if stage.start == 0 else np.zeros(cands.size)
    dev = menu.devices[cands]
    order = np.lexsort((cands, dev.sum(axis=1), extra, busy))
    rank = np.empty(cands.size, dtype=np.int64)
    rank[order] = np.arange(cands.size)
    dominated = np.zeros(cands.size, dtype=bool)
    for lo in range(0, cands.size, _DOMINANCE_BLOCK):  # blocks of b: memory O(C · block)
        b = slice(lo, lo + _DOMINANCE_BLOCK)
        if use_all:
            devices_ok = (dev[:, None, :] == dev[None, b, :]).all(axis=2)
        else:
            devices_ok = (dev[:, None, :] <= dev[None, b, :]).all(axis=2)
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
    capacity (``use_all``: every device used), or ``None`` if no choice fits. With
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
    for p, cap in enumerate(capacity):
        terms = [int(menu.devices[o, p]) * x for row in choice for o, x in row
                 if menu.devices[o, p]]
        if not terms:
            if use_all and cap > 0:
                return None
            continue
        used = sum(terms)
        if use_all:
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


def _max_without_each(values: np.ndarray) -> list[float]:
    """For each position, the largest of the other values (0 when there are none): the top
    two once, instead of a copy of the array per position."""
    if values.size < 2:
        return [0.0] * values.size
    first = int(np.argmax(values))
    top = max(0.0, float(values[first]))
    second = max(0.0, float(np.max(np.delete(values, first))))
    return [second if k == first else top for k in range(values.size)]


def upgrade_options(menu: Menu, stages: Sequence[Stage], *, in_flight: np.ndarray,
                    capacity: np.ndarray, micro_batches: int,
                    any_group: bool = False, use_all: bool = False
                    ) -> tuple[list[int] | None, float]:
    """Spend the devices a pipeline leaves idle where they shorten the iteration most
    (``use_all``: then keep spending them, the least harmful move first, until none is idle
    or no move takes more).

    Greedy and exact in its step: each round tries every stage's other options that still
    fit its position and the pools' spare devices, and keeps the one move that lowers
    ``(m − 1)·max u + Σ u + max tail`` most (the menu's times of the stage's own units; the
    tail — all-reduce and optimizer step — of the slowest-to-finish stage, without the
    backward it may hide behind). Stops when no move helps. Returns the options and that
    estimate of the pipeline's time (no transfers: the exact pricing adds them, and may hide
    part of the tail); ``None`` if the pipeline cannot be made to fit at its stages' true
    positions."""
    m = micro_batches
    ranges = [int(menu.ranges.of[st.start, st.end]) for st in stages]
    cands = [_candidates(menu, st, int(in_flight[st.position]), any_group=any_group)
             for st in stages]
    if any(c.size == 0 for c in cands):
        return None, math.inf  # a stage fits no option at its true position
    busy_c = [menu.busy[c, r] for c, r in zip(cands, ranges, strict=True)]
    tail_c = [menu.tail[c, r] for c, r in zip(cands, ranges, strict=True)]
    dev_c = [menu.devices[c] for c in cands]
    # A stage priced deeper than its true position may not fit its option there: start it
    # from its fewest-device option that does.
    chosen = [int(hit[0]) if (hit := np.flatnonzero(c == st.option)).size
              else int(np.lexsort((b, d.sum(axis=1)))[0])
              for c, st, b, d in zip(cands, stages, busy_c, dev_c, strict=True)]
    busy = np.array([b[k] for b, k in zip(busy_c, chosen, strict=True)])
    tail = np.array([t[k] for t, k in zip(tail_c, chosen, strict=True)])
    used = sum(d[k] for d, k in zip(dev_c, chosen, strict=True))
    if (used > capacity).any():
        return None, math.inf
    width = [d.sum(axis=1) for d in dev_c]
    filling = False
    while True:
        total, top = float(busy.sum()), float(busy.max())
        current = (m - 1) * top + total + float(tail.max())
        best: tuple[float, int, int] | None = None
        busy_rest, tail_rest = _max_without_each(busy), _max_without_each(tail)
        for s in range(len(stages)):
            rest_max, rest_tail = busy_rest[s], tail_rest[s]
            spare = capacity - used + dev_c[s][chosen[s]]
            ok = (dev_c[s] <= spare).all(axis=1)
            if filling:  # only moves that take more devices
                ok &= width[s] > width[s][chosen[s]]
            value = ((m - 1) * np.maximum(rest_max, busy_c[s]) + total - busy[s] + busy_c[s]
                     + np.maximum(rest_tail, tail_c[s]))
            value = np.where(ok, value, np.inf)
            k = int(np.argmin(value))
            limit = np.inf if filling else current - 1e-12
            if value[k] < limit and (best is None or value[k] < best[0]):
                best = (float(value[k]), s, k)
        if best is None and use_all and not filling and (used < capacity).any():
            filling = True
            continue
        if best is None:
            return [int(c[k]) for c, k in zip(cands, chosen, strict=True)], current
        _, s, k = best
        used = used - dev_c[s][chosen[s]] + dev_c[s][k]
        chosen[s] = k
        busy[s] = busy_c[s][k]
        tail[s] = tail_c[s][k]
