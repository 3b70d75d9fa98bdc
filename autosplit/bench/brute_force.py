"""The exhaustive optimum on small problems: the yardstick for the search's pruning.

The search prunes candidates by lower bounds, solves each layer split by a parametric dynamic
programme and picks recomputation per stage by a dominance argument. Each of those steps could
silently drop the best plan. This module trusts none of them: it enumerates every level-1
candidate the search space allows (the same pools, pool options, data-parallel degrees,
micro-batch counts and pool orders), every contiguous split of the units over the stages and
every memory-feasible recompute choice of every stage, and costs each one. Only feasible on
small problems (``MAX_DEVICES`` devices, ``MAX_UNITS`` units), which is where it is used.

For speed the ``(split, recompute)`` combinations of one candidate are costed together with
numpy, from the same cost-model functions ``iteration_time`` uses (``range_busy``,
``boundary_p2p``, ``range_tail``, ``pipeline_time``'s and ``tail_time``'s formulas); the winner
is then re-costed with ``autosplit.cost.predict.iteration_time`` itself and the two must
agree, so a drift between this module and the cost model fails loudly instead of silently.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from autosplit.cluster.schema import Cluster
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.cost.predict import StageAssignment, iteration_time
from autosplit.cost.stage import (
    StageContext,
    boundary_p2p,
    range_busy,
    range_memory,
    range_tail,
)
from autosplit.model.types import ModelProfile
from autosplit.protocols.cost import LayerCostProvider
from autosplit.search.candidates import divisors, find_pools, pool_options
from autosplit.search.engine import TableCache, _build_stages, _expressible

__all__ = ["MAX_DEVICES", "MAX_UNITS", "BruteForceResult", "small_enough", "brute_force",
           "brute_force_best"]

#: Largest problem the exhaustive search accepts (it grows exponentially beyond).
MAX_DEVICES = 8
MAX_UNITS = 12

_REL_TOL = 1e-9


@dataclass(frozen=True)
class BruteForceResult:
    """The best iteration time found and how much was enumerated to find it."""

    iteration_s: float
    candidates: int  # ordered (pool options, micro-batch count) pipelines
    evaluated: int  # (split, recompute) combinations costed
    #: The optimum, for diagnosis: "m=8: SLOW×3[TP1·DP1] → FAST×6[TP1·DP1,recompute]".
    summary: str = ""


def small_enough(model: ModelProfile, cluster: Cluster) -> bool:
    """Whether ``brute_force`` accepts the problem."""
    return cluster.num_devices <= MAX_DEVICES and model.num_layers <= MAX_UNITS


def brute_force_best(model: ModelProfile, cluster: Cluster, training: TrainingConfig,
                     search: SearchConfig, costs: LayerCostProvider | None = None) -> float:
    """Best iteration time over the whole search space (``inf`` when nothing fits)."""
    return brute_force(model=model, cluster=cluster, training=training, search=search,
                       costs=costs).iteration_s


def brute_force(*, model: ModelProfile, cluster: Cluster, training: TrainingConfig,
                search: SearchConfig, costs: LayerCostProvider | None = None
                ) -> BruteForceResult:
    """Enumerate the search space (see module docstring)."""
    if not small_enough(model, cluster):
        raise ValueError(f"brute force is limited to {MAX_DEVICES} devices and {MAX_UNITS} "
                         f"units; got {cluster.num_devices} and {model.num_layers}")
    cache = TableCache(model=model, cluster=cluster, costs=costs or AnalyticCosts(),
                       training=training)
    pools = find_pools(cluster)
    n_units = model.num_layers
    max_stages = min(search.max_stages or n_units, n_units)
    per_pool = [pool_options(p, search, max_stages=max_stages) for p in pools]
    max_share = max(search.micro_batch_sizes)
    best = math.inf
    best_stages: list[StageAssignment] | None = None
    best_m = 0
    candidates = evaluated = 0
    for r in range(len(pools), 0, -1):
        if r < len(pools) and not search.allow_idle:
            break
        for subset in itertools.combinations(range(len(pools)), r):
            for dp in sorted({o.dp for i in subset for o in per_pool[i]}):
                choices = [[o for o in per_pool[i] if o.dp == dp] for i in subset]
                for combo in itertools.product(*choices):
                    if sum(o.num_stages for o in combo) > max_stages:
                        continue
                    for m in divisors(training.global_batch):
                        b_mb = training.global_batch // m
                        if b_mb < dp or math.ceil(b_mb / dp) > max_share:
                            continue
                        if not _expressible(combo, b_mb, search.target):
                            continue
                        for order in sorted(set(itertools.permutations(combo))):
                            ctxs = _build_stages(cache, pools, order, micro_batches=m,
                                                 micro_batch_samples=b_mb)
                            candidates += 1
                            value, stages, n = _best_split(
                                ctxs, n_units, m, allow_recompute=search.allow_recompute,
                                uniform_recompute=bool(search.target))
                            evaluated += n
                            if stages is not None and value < best:
                                best, best_stages, best_m = value, stages, m
    summary = ""
    if best_stages is not None:
        exact = iteration_time(best_stages, micro_batches=best_m)
        if abs(exact - best) > _REL_TOL * max(abs(exact), 1e-30):
            raise RuntimeError(f"brute force costed its best plan at {best!r} s but "
                               f"iteration_time says {exact!r} s: the two have drifted apart")
        best = exact
        summary = f"m={best_m}: " + " → ".join(
            f"{st.ctx.shape.chip}×{st.end - st.start}[TP{st.ctx.shape.tp}·DP{st.ctx.shape.dp}"
            f"{',recompute' if st.recompute else ''}]" for st in best_stages)
    return BruteForceResult(iteration_s=best, candidates=candidates, evaluated=evaluated,
                            summary=summary)


@dataclass(frozen=True)
class _StageTerms:
    busy: tuple[np.ndarray, np.ndarray]  # (L+1, L+1) per recompute choice; inf = infeasible
    bwd: tuple[np.ndarray, np.ndarray]
    tail: np.ndarray  # dp all-reduce + optimizer, (L+1, L+1)
    fill: np.ndarray  # (L+1,) non-blocking p2p at the stage's end boundary


def _terms(ctx: StageContext, n_units: int, *, allow_recompute: bool) -> _StageTerms:
    idx = np.arange(n_units + 1)
    i, j = idx[:, None], idx[None, :]
    valid = j > i
    t = ctx.tables
    busy, bwd = [], []
    for rec in (False, True):
        static, act = range_memory(ctx, i, j, rec)
        ok = valid & ((static + act) <= ctx.capacity)
        if rec and not allow_recompute:
            ok = np.zeros_like(valid)
        b = np.broadcast_to(np.asarray(range_busy(ctx, i, j, rec), dtype=float), valid.shape)
        busy.append(np.where(ok, b, math.inf))
        back = (t.bwd[j] - t.bwd[i]) + (t.tpc[j] - t.tpc[i]) / 2
        if rec:
            back = back + (t.rec[j] - t.rec[i])
        bwd.append(np.asarray(back, dtype=float))
    d, o = range_tail(ctx, np.broadcast_to(i, valid.shape), np.broadcast_to(j, valid.shape))
    fill = (np.zeros(n_units + 1) if StageContext.blocking(ctx.link_out)
            else np.asarray(boundary_p2p(ctx, idx), dtype=float))
    return _StageTerms(busy=(busy[0], busy[1]), bwd=(bwd[0], bwd[1]),
                       tail=np.asarray(d, dtype=float) + np.asarray(o, dtype=float), fill=fill)


def _best_split(ctxs: list[StageContext], n_units: int, m: int, *, allow_recompute: bool,
                uniform_recompute: bool) -> tuple[float, list[StageAssignment] | None, int]:
    p = len(ctxs)
    if p > n_units:
        return math.inf, None, 0
    terms = [_terms(c, n_units, allow_recompute=allow_recompute) for c in ctxs]
    combos = list(itertools.combinations(range(1, n_units), p - 1))
    inner = np.array(combos, dtype=int).reshape(len(combos), p - 1)
    bounds = np.hstack([np.zeros((len(inner), 1), dtype=int), inner,
                        np.full((len(inner), 1), n_units, dtype=int)])
    starts, ends = bounds[:, :-1], bounds[:, 1:]
    cols = np.arange(p)
    fill = np.stack([terms[s].fill[ends[:, s]] for s in cols], axis=1).sum(axis=1)
    tail = np.stack([terms[s].tail[starts[:, s], ends[:, s]] for s in cols], axis=1)
    recs = ([(False,) * p, (True,) * p] if uniform_recompute
            else list(itertools.product((False, True), repeat=p)))
    best, best_k, best_rec = math.inf, -1, None
    evaluated = 0
    for rec in recs:
        busy = np.stack([terms[s].busy[int(rec[s])][starts[:, s], ends[:, s]] for s in cols],
                        axis=1)
        feasible = np.isfinite(busy).all(axis=1)
        if not feasible.any():
            continue
        evaluated += int(feasible.sum())
        bwd = np.stack([terms[s].bwd[int(rec[s])][starts[:, s], ends[:, s]] for s in cols],
                       axis=1)
        slack = np.cumsum(bwd, axis=1) - bwd  # backward time of the stages before s
        tail_s = np.maximum((tail - slack).max(axis=1), 0.0)
        safe = np.where(feasible[:, None], busy, 0.0)
        total = safe.sum(axis=1) + (m - 1) * safe.max(axis=1) + 2.0 * fill + tail_s
        total = np.where(feasible, total, math.inf)
        k = int(np.argmin(total))
        if total[k] < best:
            best, best_k, best_rec = float(total[k]), k, rec
    if best_rec is None:
        return math.inf, None, evaluated
    stages = [StageAssignment(ctx=c, start=int(bounds[best_k, s]), end=int(bounds[best_k, s + 1]),
                              recompute=best_rec[s]) for s, c in enumerate(ctxs)]
    return best, stages, evaluated
