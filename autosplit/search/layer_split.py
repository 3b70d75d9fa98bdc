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
from dataclasses import dataclass

import numpy as np

from autosplit.cost.stage import StageContext, boundary_p2p, range_busy, range_memory

__all__ = ["SplitResult", "StageMatrices", "stage_matrices", "solve_split"]

_INF = float("inf")


@dataclass(frozen=True)
class StageMatrices:
    """Cost of every range ``[i, j)`` for one stage at its position (``inf`` = infeasible)."""

    busy: np.ndarray  # (L+1, L+1)
    recompute: np.ndarray  # bool (L+1, L+1)
    extra: np.ndarray  # (L+1,) fill cost charged once for a boundary at j


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
    return StageMatrices(busy=np.asarray(out, dtype=float), recompute=np.asarray(rec),
                         extra=extra)


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


def _evaluate(mats: Sequence[StageMatrices], bounds: list[int], m: int) -> tuple[float, float]:
    busy = [mt.busy[bounds[s], bounds[s + 1]] for s, mt in enumerate(mats)]
    extra = sum(mt.extra[bounds[s + 1]] for s, mt in enumerate(mats))
    return float(sum(busy) + extra + (m - 1) * max(busy)), float(max(busy))


def solve_split(mats: Sequence[StageMatrices], *, micro_batches: int,
                max_thresholds: int = 48, upper_bound: float = _INF) -> SplitResult | None:
    """Exact split of the units over the stages (see module docstring).

    ``upper_bound`` lets the caller stop early: if even the relaxed bound cannot beat it, the
    function returns ``None``. Returns ``None`` when no split fits in memory.
    """
    m = micro_batches
    values = np.unique(np.concatenate([mt.busy[np.isfinite(mt.busy)] for mt in mats]))
    if values.size == 0:
        return None
    s_inf, b_inf = _dp(mats, _INF)
    if b_inf is None:
        return None
    # Smallest feasible threshold (binary search over the finite values).
    lo, hi = 0, values.size - 1
    while lo < hi:
        mid = (lo + hi) // 2
        val, _ = _dp(mats, float(values[mid]))
        if np.isfinite(val):
            hi = mid
        else:
            lo = mid + 1
    m_min = float(values[lo])
    if m == 1:  # no max term: the unconstrained shortest path is optimal
        obj, _ = _evaluate(mats, b_inf, m)
        rec = tuple(bool(mt.recompute[b_inf[s], b_inf[s + 1]]) for s, mt in enumerate(mats))
        return SplitResult(bounds=tuple(b_inf), recompute=rec, objective=obj,
                           lower_bound=obj, thresholds_tried=1, exact=True)
    relaxed = s_inf + (m - 1) * m_min
    if relaxed >= upper_bound:
        return None
    best_obj, best_bounds = _INF, None
    tried = 0
    k = lo
    exact = True
    lower = relaxed
    while k < values.size:
        thr = float(values[k])
        if m > 1 and s_inf + (m - 1) * thr >= best_obj:
            break
        if tried >= max_thresholds:
            exact = False
            lower = min(best_obj, s_inf + (m - 1) * thr)
            break
        val, bounds = _dp(mats, thr)
        tried += 1
        if bounds is not None:
            obj, actual_max = _evaluate(mats, bounds, m)
            if obj < best_obj - 1e-15:
                best_obj, best_bounds = obj, bounds
            # Thresholds between actual_max and thr give the same partition: skip them.
            k = max(k + 1, int(np.searchsorted(values, thr, side="right")))
        else:
            k += 1
    if best_bounds is None:
        return None
    if exact:
        lower = best_obj
    rec = tuple(bool(mt.recompute[best_bounds[s], best_bounds[s + 1]])
                for s, mt in enumerate(mats))
    return SplitResult(bounds=tuple(best_bounds), recompute=rec, objective=best_obj,
                       lower_bound=lower, thresholds_tried=tried, exact=exact)
