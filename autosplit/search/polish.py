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
- **drop a stage** (its units go to its neighbours in the exact split).

First improvement wins; rounds repeat until none improves or the budget is spent.
Deterministic: moves are tried in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from autosplit.search.assemble import Solution
from autosplit.search.menu import Menu
from autosplit.search.options import StageOption
from autosplit.search.pipeline_dp import Stage
from autosplit.search.repick import repick_options

__all__ = ["polish"]

#: Option changes tried per stage and round (best compute-only estimates first).
_PER_STAGE = 4


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
    used = menu.devices[[st.option for st in stages]].sum(axis=0)
    busy = np.array([menu.busy[st.option, menu.ranges.of[st.start, st.end]]
                     for st in stages])
    moves: list[tuple[float, int, int]] = []
    for s, st in enumerate(stages):
        r = int(menu.ranges.of[st.start, st.end])
        ok = menu.kmax[:, r] >= in_flight[st.position]
        spare = capacity - used + menu.devices[st.option]
        ok &= (menu.devices <= spare[None, :]).all(axis=1)
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


def _structure_moves(sol: Solution) -> list[list[StageOption]]:
    """Neighbouring stages swapped (where their options differ), and each stage dropped."""
    opts = list(sol.options)
    out = []
    for s in range(len(opts) - 1):
        if opts[s] != opts[s + 1]:
            out.append(opts[:s] + [opts[s + 1], opts[s]] + opts[s + 2:])
    if len(opts) > 1:
        out.extend(opts[:s] + opts[s + 1:] for s in range(len(opts)))
    return out


def polish(sol: Solution, *, menu: Menu, in_flight: np.ndarray, capacity: np.ndarray,
           use_all: bool, price: Callable[[Sequence[StageOption], Sequence[tuple[int, int]]],
                                          Solution | None],
           exhausted: Callable[[], bool], repick_time: float,
           seconds_left: Callable[[], float] = lambda: math.inf, rounds: int = 3) -> Solution:
    """``sol`` improved by exact-priced moves (see module docstring). ``price`` prices a
    pipeline of options (with the stages' units as a placement hint) or returns ``None``.
    ``repick_time`` is CP-SAT's deterministic time per re-choice (the same on any machine);
    ``seconds_left`` the wall clock it may not pass."""
    m = sol.micro_batches
    for _ in range(rounds):
        stages = _stages(menu, sol)
        if stages is None:
            return sol
        spans = [(st.start, st.end) for st in sol.stages]
        candidates: list[list[StageOption]] = []
        picked = repick_options(menu, stages, in_flight=in_flight, capacity=capacity,
                                micro_batches=m, use_all=use_all,
                                deterministic_time=repick_time,
                                wall_limit_s=seconds_left())
        if exhausted():  # the clock cut the re-choice short: its answer is not the budget's
            return sol
        if picked is not None:
            candidates.append([menu.options[o] for o in picked])
        candidates += _option_moves(menu, sol, stages, in_flight, capacity, m)
        candidates += _structure_moves(sol)
        improved = False
        for opts in candidates:
            if exhausted():
                return sol
            hint = spans if len(opts) == len(spans) else None
            new = price(opts, hint)
            if new is not None and new.iteration_s < sol.iteration_s * (1 - 1e-9):
                sol, improved = new, True
                break
        if not improved:
            return sol
    return sol
