"""A local search on the best plans, every move priced exactly.

The programme (``pipeline_dp``) searches pipelines whose device groups hold contiguous runs
and whose options are chosen by fewest devices; the exact price of a pipeline
(``assemble``) also sees transfers, the tail, placement and the exact unit split. A few moves
around the best plans, each priced exactly, close what the two disagree on:

- **re-choose every option at once** under exact capacity (CP-SAT, ``repick``);
- **change one stage's option** (any group, any TP and replica count that fits its position
  and the spare devices) — the best few by their compute-only estimate;
- **swap two neighbouring stages** (a pool may then hold two runs: a slow chip at both ends of
  the pipeline, say);
- **drop a stage** (its units go to its neighbours in the exact split);
- **split a stage** (its first or last unit on the fewest spare devices of its group; the
  pipeline's first and last unit also on any other group's);
- each structural move also **with its devices re-spent** by the upgrade
  (``repick.upgrade_options``): a dropped stage's devices go to the stages left, swapped
  options may want other replica counts.

First improvement wins; rounds repeat until none improves or the budget is spent.
Deterministic: moves are tried in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from autosplit.search.assemble import Solution
from autosplit.search.menu import Menu
from autosplit.search.options import StageOption
from autosplit.search.pipeline_dp import Stage
from autosplit.search.repick import repick_options

__all__ = ["polish"]

#: Option changes tried per stage and round (best compute-only estimates first).
_PER_STAGE = 4
#: Re-spent structural moves whose estimate is more than this above the plan are not priced.
_ESTIMATE_SLACK = 1.3
#: Structural moves priced per round by estimate (best first), besides swaps and drops.
_RESPENT = 6

#: ``upgrade(stages, as_is)``: the options and estimate of a pipeline of stages.
_Upgrade = Callable[[Sequence[Stage], bool], tuple[list[int] | None, float]]


def _stages(menu: Menu, sol: Solution) -> list[Stage] | None:
    index = {o: k for k, o in enumerate(menu.options)}
    n = len(sol.stages)
    if not all(o in index for o in sol.options):
        return None
    return [Stage(start=st.start, end=st.end, group=opt.group, option=index[opt],
                  position=n - k)
            for k, (st, opt) in enumerate(zip(sol.stages, sol.options, strict=True))]


def _option_moves(menu: Menu, sol: Solution, stages: list[Stage], in_flight: np.ndarray,
                  capacity: np.ndarray, m: int) -> list[list[StageOption]]:
    """One stage's option changed, the most promising first (compute-only estimate)."""
    demand = menu.demand
    used = demand[[st.option for st in stages]].sum(axis=0)
    busy = np.array([menu.busy[st.option, menu.ranges.of[st.start, st.end]]
                     for st in stages])
    moves: list[tuple[float, int, int]] = []
    for s, st in enumerate(stages):
        r = int(menu.ranges.of[st.start, st.end])
        ok = menu.kmax[:, r] >= in_flight[st.position]
        spare = capacity - used + demand[st.option]
        ok &= (demand <= spare[None, :]).all(axis=1)
        ok[st.option] = False
        cand = np.flatnonzero(ok & np.isfinite(menu.busy[:, r]))
        if cand.size == 0:
            continue
        rest = np.delete(busy, s)
        top = np.maximum(rest.max(initial=0.0), menu.busy[cand, r])
        est = (m - 1) * top + rest.sum() + menu.busy[cand, r]
        for k in np.argsort(est, kind="stable")[:_PER_STAGE]:
            moves.append((float(est[k]), s, int(cand[k])))
    moves.sort()
    out = []
    for _, s, o in moves:
        opts = list(sol.options)
        opts[s] = menu.options[o]
        out.append(opts)
    return out


def _respent(menu: Menu, moves: list[list[Stage]], plain: int, upgrade: _Upgrade, *,
             limit: float) -> list[tuple[list[StageOption], list[tuple[int, int]] | None]]:
    """Structural moves as they stand and with their devices re-spent (a dropped stage
    frees devices its neighbours can take; swapped options may want other replica counts; a
    split-off stage may take more): the ``_RESPENT`` best of both by estimate, none
    estimated above ``limit``; then the first ``plain`` moves as they stand (the estimate
    takes a stage that fits in a node to stay in one, which the exact price may not)."""
    ranked: list[tuple[float, int, tuple[StageOption, ...], list[tuple[int, int]]]] = []
    for k, stages in enumerate(moves):
        picked, estimate = upgrade(stages, True)
        if picked is not None:
            ranked.append((estimate, k, tuple(menu.options[o] for o in picked),
                           [(st.start, st.end) for st in stages]))
    ranked.sort(key=lambda x: (x[0], x[1]))
    # Re-spending costs a greedy upgrade each: only the moves that start best get one.
    for _, k, _, spans in ranked[:2 * _RESPENT]:
        picked, estimate = upgrade(moves[k], False)
        if picked is not None:
            ranked.append((estimate, k, tuple(menu.options[o] for o in picked), spans))
    ranked = sorted((r for r in ranked if r[0] <= limit), key=lambda x: (x[0], x[1]))
    out: list[tuple[list[StageOption], list[tuple[int, int]] | None]] = []
    seen: set[tuple[StageOption, ...]] = set()
    for _, _, opts, spans in ranked:
        if opts not in seen and len(out) < _RESPENT:
            seen.add(opts)
            out.append((list(opts), spans))
    return out + [([menu.options[st.option] for st in stages],
                   [(st.start, st.end) for st in stages]) for stages in moves[:plain]]


def _structure_moves(stages: list[Stage]) -> list[list[Stage]]:
    """Neighbouring stages swapped (where their options differ: each takes the other's
    option and unit count), and each stage dropped (its units to the stage in front, or
    behind for the first)."""
    n = len(stages)
    out = []
    for s in range(n - 1):
        a, b = stages[s], stages[s + 1]
        if a.option != b.option:
            cut = a.start + (b.end - b.start)
            out.append(stages[:s] + [replace(a, option=b.option, group=b.group, end=cut),
                                     replace(b, option=a.option, group=a.group, start=cut)]
                       + stages[s + 2:])
    for s in range(n if n > 1 else 0):
        kept = [replace(st) for k, st in enumerate(stages) if k != s]
        if s > 0:
            kept[s - 1] = replace(kept[s - 1], end=stages[s].end)
        else:
            kept[0] = replace(kept[0], start=0)
        out.append([replace(st, position=n - 1 - k) for k, st in enumerate(kept)])
    return out


def _split_moves(menu: Menu, stages: list[Stage], in_flight: np.ndarray,
                 capacity: np.ndarray) -> list[list[Stage]]:
    """Each stage of two or more units with its first or its last unit split off into a
    stage of its own, on the fewest spare devices of its group that hold it — and the
    pipeline's first and last unit also onto any other group's (the upgrade then spends what
    is left). The programme's pipelines take as few devices as their threshold allows, so a
    stage worth its own devices — an embedding that should not share a wide stage's
    all-reduce, or that idle devices of another chip can carry, say — may never appear in
    them."""
    n = len(stages)
    if n + 1 >= in_flight.size:
        return []
    demand = menu.demand
    spare = capacity - demand[[st.option for st in stages]].sum(axis=0)
    width = menu.devices.sum(axis=1)
    groups = np.unique(menu.group)
    out = []
    for s, st in enumerate(stages):
        if st.end - st.start < 2:
            continue
        for front in (True, False):
            cut = st.start + 1 if front else st.end - 1
            lo, hi = (st.start, cut) if front else (cut, st.end)
            k = s if front else s + 1  # the new stage's index in the longer pipeline
            r = int(menu.ranges.of[lo, hi])
            fits = ((menu.kmax[:, r] >= in_flight[n + 1 - k]) & np.isfinite(menu.busy[:, r])
                    & (demand <= spare[None, :]).all(axis=1))
            end_unit = (front and s == 0) or (not front and s == n - 1)
            for g in (groups if end_unit else [st.group]):
                for o in _fewest(menu, np.flatnonzero(fits & (menu.group == g)), r, width):
                    new = Stage(start=lo, end=hi, group=int(g), option=o, position=0)
                    rest = replace(st, start=cut) if front else replace(st, end=cut)
                    seq = (stages[:s] + ([new, rest] if front else [rest, new])
                           + stages[s + 1:])
                    out.append([replace(x, position=n + 1 - j) for j, x in enumerate(seq)])
    return out


def _fewest(menu: Menu, cand: np.ndarray, r: int, width: np.ndarray) -> list[int]:
    """Of the options ``cand`` for range class ``r``: per TP degree the one of fewest
    devices (then least busy, lowest index). A one-unit stage's best degree depends on what
    its unit is — TP shards an embedding's weights and its gradient all-reduce with them,
    DP does not — which the upgrade's estimate (its largest tail) cannot tell apart."""
    out = []
    tps = np.array([menu.options[o].tp for o in cand], dtype=int)
    for tp in np.unique(tps):
        own = cand[tps == tp]
        out.append(int(own[np.lexsort((own, menu.busy[own, r], width[own]))[0]]))
    return out


def polish(sol: Solution, *, menu: Menu, in_flight: np.ndarray, capacity: np.ndarray,
           use_all: bool, price: Callable[[Sequence[StageOption], Sequence[tuple[int, int]]],
                                          Solution | None],
           upgrade: _Upgrade,
           exhausted: Callable[[], bool], repick_time: float,
           seconds_left: Callable[[], float] = lambda: math.inf, rounds: int = 3) -> Solution:
    """``sol`` improved by exact-priced moves (see module docstring). ``price`` prices a
    pipeline of options (with the stages' units as a placement hint) or returns ``None``;
    ``upgrade(stages, as_is)`` re-spends the devices of a pipeline of stages
    (``repick.upgrade_options``; ``as_is``: valued as it stands) and gives its estimate.
    ``repick_time`` is CP-SAT's deterministic time per re-choice (the same on any machine);
    ``seconds_left`` the wall clock it may not pass."""
    m = sol.micro_batches
    for _ in range(rounds):
        stages = _stages(menu, sol)
        if stages is None:
            return sol
        spans = [(st.start, st.end) for st in sol.stages]
        candidates: list[tuple[list[StageOption], list[tuple[int, int]] | None]] = []
        picked = repick_options(menu, stages, in_flight=in_flight, capacity=capacity,
                                micro_batches=m, use_all=use_all,
                                deterministic_time=repick_time,
                                wall_limit_s=seconds_left())
        if exhausted():  # the clock cut the re-choice short: its answer is not the budget's
            return sol
        if picked is not None:
            candidates.append(([menu.options[o] for o in picked], spans))
        candidates += [(o, spans) for o in _option_moves(menu, sol, stages, in_flight,
                                                         capacity, m)]
        structure = _structure_moves(stages)
        moves = structure + _split_moves(menu, stages, in_flight, capacity)
        candidates += _respent(menu, moves, len(structure), upgrade,
                               limit=sol.iteration_s * _ESTIMATE_SLACK)
        improved = False
        for opts, hint in candidates:
            if exhausted():
                return sol
            new = price(opts, hint)
            if new is not None and new.iteration_s < sol.iteration_s * (1 - 1e-9):
                sol, improved = new, True
                break
        if not improved:
            return sol
    return sol
