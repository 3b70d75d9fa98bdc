"""Level 2 of the search tree: split the units over an ordered list of stages.

The objective is the whole iteration, not just the slowest stage:
``J = Σ_s u_s + (m − 1)·max_s u_s + fill``, with ``u_s`` a stage's busy time per micro-batch.
Each stage's recompute choice is local (recomputation only adds time and only saves memory,
so a stage recomputes exactly when its layers do not fit otherwise), which makes every
``(stage, range)`` pair have one fixed cost ``U_s[i, j]`` (``inf`` when it cannot fit).

The only coupling is the ``max``. We solve it exactly by parametric dynamic programming:
for a threshold ``M``, ``S(M) = min Σ u_s`` subject to ``u_s ≤ M`` is a shortest path over
(stage, boundary) solved with numpy; ``J* = min_M S(M) + (m − 1)·M`` over the finite set of
values ``U`` takes. ``S`` is non-increasing, so only thresholds in
``[M_min, (J_best − S(∞)) / (m − 1))`` can improve, a window that is narrow whenever ``m`` is
large. When the window holds more thresholds than ``max_thresholds``, the solver stops and
reports the bound it can still prove (``lower_bound``), so the optimality gap is honest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from autosplit.cost.stage import (
    StageContext,
    boundary_p2p,
    range_busy,
    range_memory,
    range_tail,
)

__all__ = ["SplitResult", "StageMatrices", "stage_matrices", "solve_split"]

_INF = float("inf")


@dataclass(frozen=True)
class StageMatrices:
    """Cost of every range ``[i, j)`` for one stage at its position (``inf`` = infeasible)."""

    busy: np.ndarray  # (L+1, L+1)
    recompute: np.ndarray  # bool (L+1, L+1)
    extra: np.ndarray  # (L+1,) fill cost charged once for a boundary at j
    tail: np.ndarray  # (L+1, L+1) DP all-reduce + optimizer step after the pipeline drains
    bwd: np.ndarray  # (L+1, L+1) backward part of busy (the slack later stages' tails hide in)


@dataclass(frozen=True)
class SplitResult:
    """Best contiguous split found: ``bounds[s]..bounds[s+1]`` for stage ``s``."""

    bounds: tuple[int, ...]
    recompute: tuple[bool, ...]
    objective: float  # pipeline time (without the post-pipeline tail)
    lower_bound: float
    thresholds_tried: int
    exact: bool


def stage_matrices(ctx: StageContext, num_units: int, *, allow_recompute: bool) -> StageMatrices:
    """Evaluate the stage's busy time and memory on all ranges at once."""
    idx = np.arange(num_units + 1)
    i = idx[:, None]
    j = idx[None, :]
    valid = j > i
    busy0 = range_busy(ctx, i, j, False)
    s0, a0 = range_memory(ctx, i, j, False)
    fit0 = (s0 + a0) <= ctx.capacity
    out = np.where(valid & fit0, busy0, _INF)
    rec = np.zeros_like(valid)
    if allow_recompute:
        busy1 = range_busy(ctx, i, j, True)
        s1, a1 = range_memory(ctx, i, j, True)
        fit1 = (s1 + a1) <= ctx.capacity
        use1 = valid & ~fit0 & fit1
        out = np.where(use1, busy1, out)
        rec = use1
    extra = np.zeros(num_units + 1)
    if ctx.link_out is not None and not StageContext.blocking(ctx.link_out):
        extra = 2.0 * np.asarray(boundary_p2p(ctx, idx), dtype=float)
    t = ctx.tables
    dp_t, opt_t = range_tail(ctx, i + 0 * j, j + 0 * i)
    bwd = (t.bwd[j] - t.bwd[i]) + (t.tpc[j] - t.tpc[i]) / 2 + np.where(rec, t.rec[j] - t.rec[i],
                                                                      0.0)
    return StageMatrices(busy=np.asarray(out, dtype=float), recompute=np.asarray(rec),
                         extra=extra, tail=np.asarray(dp_t + opt_t, dtype=float),
                         bwd=np.asarray(bwd, dtype=float))


def _dp(mats: Sequence[StageMatrices], threshold: float
        ) -> tuple[float, list[int] | None]:
    """Min Σ (u_s + extra) with every u_s ≤ threshold; returns (value, bounds)."""
    n = mats[0].busy.shape[0]
    f = np.full(n, _INF)
    f[0] = 0.0
    choices: list[np.ndarray] = []
    for m in mats:
        cost = np.where(m.busy <= threshold, m.busy + m.extra[None, :], _INF)
        tot = f[:, None] + cost
        arg = np.argmin(tot, axis=0)
        f = tot[arg, np.arange(n)]
        choices.append(arg)
    if not np.isfinite(f[-1]):
        return _INF, None
    bounds = [n - 1]
    for arg in reversed(choices):
        bounds.append(int(arg[bounds[-1]]))
    bounds.reverse()
    return float(f[-1]), bounds


def _evaluate(mats: Sequence[StageMatrices], bounds: Sequence[int], m: int
              ) -> tuple[float, float]:
    """Full objective (pipeline + tail, as ``cost.predict.iteration_time``) and max busy."""
    tail = 0.0
    slack = 0.0
    for s, mt in enumerate(mats):
        i, j = bounds[s], bounds[s + 1]
        tail = max(tail, mt.tail[i, j] - slack)
        slack += mt.bwd[i, j]
    slowest = max(mt.busy[bounds[s], bounds[s + 1]] for s, mt in enumerate(mats))
    return _pipeline_part(mats, bounds, m) + float(tail), float(slowest)


def _polish(mats: Sequence[StageMatrices], bounds: list[int], m: int, obj: float,
            max_passes: int = 4) -> tuple[float, list[int]]:
    """Move single boundaries by one unit while that lowers the full objective.

    The parametric DP is exact for the pipeline part; the post-pipeline tail (gradient
    all-reduce, optimizer step) is a second, path-dependent max it cannot see. Neighbouring
    splits differ from the DP's choice mostly in that tail, so a short local search recovers
    it; the reported lower bound stays the proven one.
    """
    n = len(bounds)
    for _ in range(max_passes):
        improved = False
        for k in range(1, n - 1):
            for delta in (-1, 1):
                cand = list(bounds)
                cand[k] += delta
                if not cand[k - 1] < cand[k] < cand[k + 1]:
                    continue
                if any(not np.isfinite(mats[s].busy[cand[s], cand[s + 1]])
                       for s in (k - 1, k)):
                    continue
                val, _ = _evaluate(mats, cand, m)
                if val < obj - 1e-15:
                    obj, bounds, improved = val, cand, True
        if not improved:
            break
    return obj, bounds


def _pipeline_part(mats: Sequence[StageMatrices], bounds: Sequence[int], m: int) -> float:
    busy = [mt.busy[bounds[s], bounds[s + 1]] for s, mt in enumerate(mats)]
    extra = sum(mt.extra[bounds[s + 1]] for s, mt in enumerate(mats))
    return float(sum(busy) + extra + (m - 1) * max(busy))


def solve_split(mats: Sequence[StageMatrices], *, micro_batches: int,
                max_thresholds: int = 48, upper_bound: float = _INF,
                min_threshold: float = 0.0) -> SplitResult | None:
    """Best split of the units over the stages (see module docstring).

    The threshold scan is exact for the pipeline part; the tail is added by evaluating every
    split the scan produces with the full objective and polishing the best one. The lower
    bound is ``min pipeline part + a bound on the tail``, so the gap stays provable.
    ``upper_bound`` lets the caller stop early: returns ``None`` if even the relaxed bound
    cannot beat it, or if no split fits in memory.
    """
    m = micro_batches
    values = np.unique(np.concatenate([mt.busy[np.isfinite(mt.busy)] for mt in mats]))
    if values.size == 0:
        return None
    full_mats = mats
    # The first stage has no slack to hide its gradient all-reduce and optimizer step in, so
    # the tail is at least its own tail. Charging it to the first stage's additive cost keeps
    # the scan exact for ``pipeline + tail_0`` — a tight lower bound on the full objective.
    first = mats[0]
    mats = [replace(first, extra=first.extra + np.where(np.isfinite(first.busy[0]),
                                                          first.tail[0], 0.0)), *mats[1:]]
    s_inf, b_inf = _dp(mats, _INF)
    if b_inf is None:
        return None
    tail_lb = 0.0  # already inside the scanned objective (see above)
    if m == 1:  # no max term: the unconstrained shortest path is optimal for the pipeline
        return _finish(full_mats, [b_inf], m, pipe_lb=s_inf, tail_lb=tail_lb, tried=1,
                       scan_complete=True)
    # Smallest feasible threshold (binary search over the finite values, starting at a
    # proven lower bound on the slowest stage when the caller has one).
    lo = int(np.searchsorted(values, min_threshold * (1 - 1e-9)))
    hi = values.size - 1
    lo = min(lo, hi)
    # The proven bound is usually within a few values of the answer: gallop up from it
    # before bisecting.
    step = 1
    while lo < hi:
        probe = min(lo + step - 1, hi)
        if np.isfinite(_dp(mats, float(values[probe]))[0]):
            hi = probe
            break
        lo = probe + 1
        step *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        val, _ = _dp(mats, float(values[mid]))
        if np.isfinite(val):
            hi = mid
        else:
            lo = mid + 1
    relaxed = s_inf + (m - 1) * float(values[lo])
    if relaxed + tail_lb >= upper_bound:
        return None
    splits: list[list[int]] = []
    best_full = _INF
    best_pipe = _INF
    tried = 0
    complete = True
    for k in range(lo, values.size):
        thr = float(values[k])
        floor = s_inf + (m - 1) * thr
        if floor >= best_pipe and floor + tail_lb >= best_full:
            break
        if floor + tail_lb >= upper_bound:
            # Every split not scanned yet is at least ``floor``: none can beat the caller's
            # best plan, so the bound below (min of the two) is all the caller needs.
            best_pipe = min(best_pipe, floor)
            break
        if tried >= max_thresholds:
            complete = False
            best_pipe = min(best_pipe, floor)
            break
        _, bounds = _dp(mats, thr)
        tried += 1
        if bounds is None:
            continue
        splits.append(bounds)
        best_pipe = min(best_pipe, _pipeline_part(mats, bounds, m))
        best_full = min(best_full, _evaluate(full_mats, bounds, m)[0])
    if not splits:
        return None
    return _finish(full_mats, splits, m, pipe_lb=best_pipe, tail_lb=tail_lb, tried=tried,
                   scan_complete=complete)


def _finish(mats: Sequence[StageMatrices], splits: list[list[int]], m: int, *, pipe_lb: float,
            tail_lb: float, tried: int, scan_complete: bool, polish: bool = True
            ) -> SplitResult:
    scored = sorted(((_evaluate(mats, b, m)[0], b) for b in splits), key=lambda x: x[0])
    best_obj, best_bounds = scored[0]
    if polish:
        best_obj, best_bounds = _polish(mats, list(best_bounds), m, best_obj)
    lower = min(best_obj, pipe_lb + tail_lb)
    rec = tuple(bool(mt.recompute[best_bounds[s], best_bounds[s + 1]])
                for s, mt in enumerate(mats))
    return SplitResult(bounds=tuple(best_bounds), recompute=rec, objective=best_obj,
                       lower_bound=lower, thresholds_tried=tried,
                       exact=scan_complete and lower >= best_obj - 1e-12)
