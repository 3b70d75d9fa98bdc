"""Level 2 with OR-Tools CP-SAT: the same split problem as ``layer_split``, as an integer model.

Why both: the parametric DP is exact and fast while only the ``max`` couples the stages. The
CP-SAT model states the problem declaratively — a boolean per (stage, unit range), flow
constraints for contiguity, ``T ≥ u_s`` for the slowest stage — so new couplings (shared
memory budgets, cross-stage constraints) can be added as constraints, and its proven bound
cross-checks the DP (``--solver cpsat``). It also models the post-pipeline tail
(gradient all-reduce and optimizer step, hidden in the slack of earlier stages' backward) as
linear constraints, so it is exact for the full objective where the DP is exact for the
pipeline part and polishes the tail. Times are scaled to integer nanoseconds; the rounding
error is at most a few nanoseconds, far below anything we report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autosplit.search.layer_split import (
    SplitResult,
    StageMatrices,
    _finish,
    solve_split,
)

__all__ = ["solve_split_cpsat"]

_SCALE = 1e9  # seconds → integer nanoseconds


def solve_split_cpsat(mats: Sequence[StageMatrices], *, micro_batches: int,
                      time_limit_s: float = 10.0, hint: bool = True,
                      max_busy: float | None = None) -> SplitResult | None:
    """Solve the split with CP-SAT (single worker and a deterministic time limit, so the
    answer does not depend on the machine).

    ``max_busy`` drops every stage range busier than that: used to certify a candidate
    against a known plan, since no split with a slower stage can beat it. ``None`` is
    returned when nothing is feasible under the limit."""
    from ortools.sat.python import cp_model

    n = mats[0].busy.shape[0]  # number of boundaries = units + 1
    last = n - 1
    p = len(mats)
    model = cp_model.CpModel()
    x: list[dict[tuple[int, int], object]] = []
    busy_max = 0
    for s, mt in enumerate(mats):
        vars_s = {}
        for i in range(n):
            if s == 0 and i != 0:
                continue
            for j in range(i + 1, n):
                if s == p - 1 and j != last:
                    continue
                if not np.isfinite(mt.busy[i, j]):
                    continue
                if max_busy is not None and mt.busy[i, j] > max_busy:
                    continue
                vars_s[(i, j)] = model.new_bool_var(f"x_{s}_{i}_{j}")
                busy_max = max(busy_max, int(round(mt.busy[i, j] * _SCALE)))
        if not vars_s:
            return None
        model.add_exactly_one(vars_s.values())
        x.append(vars_s)
    for s in range(p - 1):
        for b in range(1, last):
            into = [v for (i, j), v in x[s].items() if j == b]
            out = [v for (i, j), v in x[s + 1].items() if i == b]
            model.add(sum(into) == sum(out))
    t_max = model.new_int_var(0, busy_max, "slowest_stage")
    total = []
    for s, mt in enumerate(mats):
        u_s = sum(int(round(mt.busy[i, j] * _SCALE)) * v for (i, j), v in x[s].items())
        model.add(t_max >= u_s)
        total.append(sum(int(round((mt.busy[i, j] + mt.extra[j]) * _SCALE)) * v
                         for (i, j), v in x[s].items()))
    # The post-pipeline tail: tail ≥ tail_s − Σ_{s'<s} drain_s' for every stage, tail ≥ 0 —
    # linear in the range booleans, so CP-SAT optimises the full objective exactly.
    tail_hi = int(max(float(np.nanmax(np.where(np.isfinite(mt.busy), mt.tail, 0.0)))
                      for mt in mats) * _SCALE) + 1
    tail = model.new_int_var(0, tail_hi, "tail")
    slack = 0
    for s, mt in enumerate(mats):
        model.add(tail >= sum(int(round(mt.tail[i, j] * _SCALE)) * v
                              for (i, j), v in x[s].items()) - slack)
        slack = slack + sum(int(round(mt.drain[i, j] * _SCALE)) * v for (i, j), v in x[s].items())
    model.minimize(sum(total) + (micro_batches - 1) * t_max + tail)
    if hint:
        ref = solve_split(mats, micro_batches=micro_batches)
        if ref is not None:
            for s in range(p):
                key = (ref.bounds[s], ref.bounds[s + 1])
                for k, v in x[s].items():
                    model.add_hint(v, k == key)
    solver = cp_model.CpSolver()
    solver.parameters.max_deterministic_time = time_limit_s
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    bounds = [0]
    for s in range(p):
        for (i, j), v in x[s].items():
            if i == bounds[-1] and solver.value(v):
                bounds.append(j)
                break
    bound = float(solver.best_objective_bound) / _SCALE
    if status == cp_model.OPTIMAL:
        # Proven optimal for the integer model: the float objective differs from its bound
        # only by the nanosecond rounding of the coefficients.
        bound = float("inf")
    return _finish(mats, [bounds], micro_batches, pipe_lb=bound, tail_lb=0.0, tried=0,
                   scan_complete=status == cp_model.OPTIMAL, polish=False)
