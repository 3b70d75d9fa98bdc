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
from functools import cached_property

import numpy as np

from autosplit.cost.pipeline import pipeline_period
from autosplit.cost.stage import (
    StageContext,
    boundary_p2p,
    drain_time,
    range_busy,
    range_memory,
    range_tail,
)

__all__ = ["SplitResult", "StageMatrices", "stage_matrices", "solve_split"]

_INF = float("inf")
#: Thresholds of the scan solved together (``_dp_batch``).
_CHUNK = 8


@dataclass(frozen=True)
class StageMatrices:
    """Cost of every range ``[i, j)`` for one stage at its position (``inf`` = infeasible)."""

    busy: np.ndarray  # (L+1, L+1)
    recompute: np.ndarray  # bool (L+1, L+1)
    extra: np.ndarray  # (L+1,) fill cost charged once for a boundary at j
    tail: np.ndarray  # (L+1, L+1) DP all-reduce + optimizer step after the pipeline drains
    drain: np.ndarray  # (L+1, L+1) what later stages' tails hide behind (cost.stage.drain_time)
    hop: np.ndarray  # (L+1,) one-way transfer out over an overlapping link, boundary at j
    in_flight: int  # micro-batches the stage may hold (cost.pipeline.pipeline_period)

    @cached_property
    def levels(self) -> np.ndarray:
        """The distinct finite busy times, ascending: the thresholds this stage can set.
        Kept with the matrices (which the search caches), so a split does not sort them
        again."""
        return np.unique(self.busy[np.isfinite(self.busy)])

    @cached_property
    def scan_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """``(busy + extra)ᵀ`` and ``busyᵀ``, indexed ``[j, i]``: the shortest-path pass
        reduces over the start ``i``, fastest along the last axis."""
        return ((self.busy + self.extra[None, :]).T.copy(), self.busy.T.copy())


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
    hop = np.zeros(num_units + 1)
    if ctx.link_out is not None and not StageContext.blocking(ctx.link_out):
        hop = np.asarray(boundary_p2p(ctx, idx), dtype=float)
    extra = 2.0 * hop
    dp_t, opt_t = range_tail(ctx, i + 0 * j, j + 0 * i)
    drain = np.broadcast_to(drain_time(ctx, i, j, rec), out.shape)
    return StageMatrices(busy=np.asarray(out, dtype=float), recompute=np.asarray(rec),
                         extra=extra, tail=np.asarray(dp_t + opt_t, dtype=float),
                         drain=np.asarray(drain, dtype=float), hop=hop, in_flight=ctx.in_flight)


def _dp(mats: Sequence[StageMatrices], threshold: float
        ) -> tuple[float, list[int] | None]:
    """Min Σ (u_s + extra) with every u_s ≤ threshold; returns (value, bounds)."""
    (value,), (bounds,) = _dp_batch(mats, np.array([threshold]))
    return value, bounds


def _dp_batch(mats: Sequence[StageMatrices], thresholds: np.ndarray
              ) -> tuple[list[float], list[list[int] | None]]:
    """``_dp`` for several thresholds in one pass (one array axis per threshold): the scan
    solves its thresholds in chunks, so numpy's per-call cost is paid once per chunk."""
    n = mats[0].busy.shape[0]
    t = thresholds.size
    f = np.full((t, n), _INF)
    f[:, 0] = 0.0
    over = thresholds[:, None, None]
    choices: list[np.ndarray] = []
    for m in mats:
        cost_t, busy_t = m.scan_terms
        # (T, j, i): the split's value so far plus this stage, where it meets the threshold
        tot = np.where(busy_t[None] > over, _INF, f[:, None, :] + cost_t[None])
        arg = np.argmin(tot, axis=2)
        f = np.take_along_axis(tot, arg[..., None], axis=2)[..., 0]
        choices.append(arg)
    values: list[float] = []
    paths: list[list[int] | None] = []
    for k in range(t):
        if not np.isfinite(f[k, -1]):
            values.append(_INF)
            paths.append(None)
            continue
        bounds = [n - 1]
        for arg in reversed(choices):
            bounds.append(int(arg[k, bounds[-1]]))
        bounds.reverse()
        values.append(float(f[k, -1]))
        paths.append(bounds)
    return values, paths


def _least_threshold(mats: Sequence[StageMatrices]) -> float:
    """The least threshold any split meets: a bottleneck (min-max) shortest path over the
    same stages and boundaries, ``g_s[j] = min_i max(g_{s−1}[i], u_s[i, j])`` — exactly the
    least ``M`` for which ``_dp(mats, M)`` is finite, found in one pass instead of a search
    over thresholds."""
    n = mats[0].busy.shape[0]
    g = np.full(n, _INF)
    g[0] = -_INF
    for m in mats:
        g = np.maximum(g[:, None], m.busy).min(axis=0)
    return float(g[-1])


def _evaluate(mats: Sequence[StageMatrices], bounds: Sequence[int], m: int
              ) -> tuple[float, float]:
    """Full objective (pipeline + tail, as ``cost.predict.iteration_time``) and max busy."""
    tail = 0.0
    slack = 0.0
    for s, mt in enumerate(mats):
        i, j = bounds[s], bounds[s + 1]
        tail = max(tail, mt.tail[i, j] - slack)
        slack += mt.drain[i, j]
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


def _pipeline_floor(mats: Sequence[StageMatrices], bounds: Sequence[int], m: int) -> float:
    """``Σ u + fill + (m − 1)·max u``: what the threshold scan minimises exactly, a lower bound
    on ``_pipeline_part``."""
    busy = [mt.busy[bounds[s], bounds[s + 1]] for s, mt in enumerate(mats)]
    extra = sum(mt.extra[bounds[s + 1]] for s, mt in enumerate(mats))
    return float(sum(busy) + extra + (m - 1) * max(busy))


def _pipeline_part(mats: Sequence[StageMatrices], bounds: Sequence[int], m: int) -> float:
    """Pipeline time of a split, with the period of ``cost.pipeline.pipeline_period`` (the
    threshold scan orders splits by ``max u``; a binding in-flight limit only adds to it, so
    every bound the scan proves still holds)."""
    busy = [float(mt.busy[bounds[s], bounds[s + 1]]) for s, mt in enumerate(mats)]
    extra = sum(mt.extra[bounds[s + 1]] for s, mt in enumerate(mats))
    period = pipeline_period(busy, micro_batches=m,
                             p2p=[float(mt.hop[bounds[s + 1]]) for s, mt in enumerate(mats)],
                             in_flight=[mt.in_flight for mt in mats])
    return float(sum(busy) + extra + (m - 1) * period)


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
    levels = [mt.levels for mt in mats]
    if all(lv.size == 0 for lv in levels):
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
    # Smallest feasible threshold: the bottleneck path's, or the caller's proven bound on
    # the slowest stage if that is higher.
    least = _least_threshold(mats)
    values = _scan_values(levels, max(min_threshold * (1 - 1e-9), least), max_thresholds + 1)
    relaxed = s_inf + (m - 1) * float(values[0])
    if relaxed + tail_lb >= upper_bound:
        return None
    splits: list[list[int]] = []
    best_full = _INF
    best_pipe = _INF
    tried = 0
    complete = True
    chunk: dict[int, list[int] | None] = {}
    for k in range(values.size):
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
        if k not in chunk:  # the next thresholds in one pass (some may go unused)
            ahead = np.arange(k, min(k + _CHUNK, values.size, k + max_thresholds - tried))
            chunk = dict(zip(ahead.tolist(), _dp_batch(mats, values[ahead])[1], strict=True))
        bounds = chunk[k]
        tried += 1
        if bounds is None:
            continue
        splits.append(bounds)
        best_pipe = min(best_pipe, _pipeline_floor(mats, bounds, m))
        best_full = min(best_full, _evaluate(full_mats, bounds, m)[0])
    if not splits:
        return None
    return _finish(full_mats, splits, m, pipe_lb=best_pipe, tail_lb=tail_lb, tried=tried,
                   scan_complete=complete)


def _scan_values(levels: Sequence[np.ndarray], start: float, count: int) -> np.ndarray:
    """The first ``count`` distinct busy times of any stage that are ``≥ start``, ascending
    (the scan visits no more); the largest of all when none reaches ``start``. Each stage's
    own first ``count`` hold the union's, so only those are merged."""
    parts = [lv[int(np.searchsorted(lv, start)):][:count] for lv in levels]
    values = np.unique(np.concatenate(parts))[:count]
    if values.size == 0:
        values = np.array([max(float(lv[-1]) for lv in levels if lv.size)])
    return values


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
