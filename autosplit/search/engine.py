"""The search: model → stages → layers → devices, pruned by bounds and solved exactly.

Level 1 (``candidates``): which pools form stages, how each pool is cut (stage size, TP), the
data-parallel degree and micro-batch count, and the order of the pools along the pipeline.
Level 2 (``layer_split``): the exact contiguous split of units over those stages, with memory
limits and per-stage recomputation. Level 3 is folded into level 1's shapes: TP/DP degrees,
replicas and micro-batch shares of each stage.

Candidates are visited best-first by a lower bound that ignores order, communication and
memory (a continuous relaxation of the split); a candidate whose bound cannot beat the best
plan so far is pruned without solving it. When every candidate has been solved or pruned the
result is optimal under the cost model for this search space, and the reported gap is 0.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from autosplit.cluster.schema import Cluster
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.cost.predict import StageAssignment, peak_flops_of, predict
from autosplit.cost.stage import (
    StageShape,
    StageTables,
    build_tables,
    lane_groups,
    make_context,
)
from autosplit.errors import NoFeasiblePlanError
from autosplit.model.types import ModelProfile
from autosplit.plan.schema import (
    Alternative,
    ClusterRef,
    ModelRef,
    Plan,
    SearchStats,
    StagePlan,
)
from autosplit.protocols.cost import LayerCostProvider
from autosplit.search.bounds import (
    bound_from_terms,
    memory_aware_bound,
    order_free_bound,
    shape_terms,
)
from autosplit.search.candidates import (
    Pool,
    PoolOption,
    divisors,
    find_pools,
    members,
    mixed_pools,
    mixed_replica_counts,
    pool_options,
    stage_shapes,
)
from autosplit.search.layer_split import solve_split, stage_matrices

__all__ = ["search_plan", "build_plan", "TableCache"]


class TableCache:
    """Per-unit cost tables keyed by (chip, node class, TP, micro-batch share).

    Many candidates share stage shapes; computing each table once keeps the search fast.
    """

    def __init__(self, *, model: ModelProfile, cluster: Cluster, costs: LayerCostProvider,
                 training: TrainingConfig) -> None:
        self.model, self.cluster, self.costs, self.training = model, cluster, costs, training
        self._tables: dict[tuple, StageTables] = {}
        self._unit: dict[tuple, np.ndarray] = {}
        self._matrices: dict[tuple, object] = {}
        self._shapes: dict[tuple, list[StageShape]] = {}
        self._contexts: dict[tuple, object] = {}
        self.bound_terms: dict[tuple, tuple] = {}

    def shapes(self, pool: Pool, option: PoolOption, micro_batch_samples: int
               ) -> list[StageShape]:
        key = (pool.index, option, micro_batch_samples)
        if key not in self._shapes:
            first = (self._mixed_first_share(pool, option, micro_batch_samples)
                     if pool.parts else None)
            self._shapes[key] = stage_shapes(pool, option, micro_batch_samples=micro_batch_samples,
                                             first_share=first)
        return self._shapes[key]

    def _mixed_first_share(self, pool: Pool, option: PoolOption, samples: int) -> int | None:
        """Level 3 for a stage mixing two chips: the per-replica share of the faster chip that
        balances the two lanes' whole-model busy time (the slower lane gets the rest)."""
        da, db = mixed_replica_counts(pool, option)
        best: tuple[float, int] | None = None
        for x in range(1, samples // max(da, 1) + 1):
            rest = samples - da * x
            if rest < db:
                break
            y = -(-rest // db)
            lanes = ((pool.parts[0][0], x), (pool.parts[1][0], y))
            t = max(float(self.lane_tables(node.chip, node, share, option.tp).fwd[-1]
                          + self.lane_tables(node.chip, node, share, option.tp).bwd[-1])
                    for node, share in lanes)
            if best is None or t < best[0] - 1e-15:
                best = (t, x)
        return None if best is None else best[1]

    def lane_tables(self, chip: str, node, share: int, tp: int) -> StageTables:
        key = (chip, node.intra_bw_gbs, tp, share)
        if key not in self._tables:
            self._tables[key] = build_tables(
                model=self.model, chip=self.cluster.chips[chip], node=node, tp=tp,
                share=share, costs=self.costs, dtype=self.training.dtype)
        return self._tables[key]

    def context(self, shapes: list[StageShape], s: int, micro_batches: int):
        """Stage ``s`` of the pipeline ``shapes``, bound to its position and neighbours."""
        prev = shapes[s - 1] if s > 0 else None
        nxt = shapes[s + 1] if s + 1 < len(shapes) else None
        # Shapes come from ``self.shapes`` and live as long as the cache: identity is enough.
        key = (id(shapes[s]), id(prev), id(nxt), s, len(shapes), micro_batches)
        ctx = self._contexts.get(key)
        if ctx is None:
            tp = shapes[s].tp
            ctx = make_context(cluster=self.cluster, shape=shapes[s],
                               tables=self.tables(shapes[s]), index=s, num_stages=len(shapes),
                               micro_batches=micro_batches, training=self.training,
                               prev=prev, nxt=nxt,
                               lane_tables=lambda c, n, sh: self.lane_tables(c, n, sh, tp))
            self._contexts[key] = ctx
        return ctx

    def matrices(self, ctx, *, allow_recompute: bool):
        """Range-cost matrices of a stage context; identical contexts (same tables, memory
        position and links) recur across stages and candidates, so they are built once."""
        key = (id(ctx.tables), tuple(id(ln.tables) for ln in ctx.lanes), ctx.in_flight,
               ctx.capacity, ctx.link_in, ctx.link_out, ctx.share_in, ctx.share_out,
               ctx.dp_link, ctx.shape.dp, ctx.shape.tp, ctx.shape.max_share, allow_recompute)
        if key not in self._matrices:
            self._matrices[key] = stage_matrices(ctx, self.model.num_layers,
                                                 allow_recompute=allow_recompute)
        return self._matrices[key]

    def tables(self, shape: StageShape) -> StageTables:
        """Tables of the stage's own chip at its largest share among that chip's replicas."""
        chip, node, share, _ = lane_groups(self.cluster, shape)[0]
        return self.lane_tables(chip, node, share, shape.tp)

    def lanes(self, shape: StageShape) -> list[tuple[str, StageTables, int, float]]:
        """(chip, tables, share, capacity) per chip of the stage."""
        reserve = self.training.memory_reserve_gb * 1e9
        return [(c, self.lane_tables(c, node, share, shape.tp), share, cap - reserve)
                for c, node, share, cap in lane_groups(self.cluster, shape)]

    def unit_costs(self, shape: StageShape) -> np.ndarray:
        """Per-unit busy time (no recompute, no p2p) of the lane with the most work: a
        stage is busy at least as long as any of its lanes — the lower bound's ingredients."""
        best = None
        for _, t, _, _ in self.lanes(shape):
            u = np.diff(t.fwd) + np.diff(t.bwd) + np.diff(t.tpc)
            if best is None or u.sum() > best.sum():
                best = u
        return best


@dataclass(order=True)
class _Candidate:
    bound: float
    order_key: tuple = field(compare=True)
    options: tuple[PoolOption, ...] = field(compare=False, default=())
    micro_batches: int = field(compare=False, default=1)
    #: True once ``bound`` is the memory-aware bound of this exact order.
    strong: bool = field(compare=False, default=False)
    base: float = field(compare=False, default=0.0)
    #: Lower bound on the slowest stage's busy time (from the memory-aware bound).
    slowest: float = field(compare=False, default=0.0)


@dataclass
class _Solved:
    iteration_s: float
    stages: list[StageAssignment]
    options: tuple[PoolOption, ...]
    micro_batches: int
    lower_bound: float


def _water_bound(cache: TableCache, pools: list[Pool], combo: tuple[PoolOption, ...],
                 shapes: list[StageShape], m: int, base: float, search: SearchConfig) -> float:
    """Order-free memory-aware bound: each pool's stages as if at the last pipeline position
    (fewest micro-batches in flight), no fixed work."""
    rows = []
    for opt, shape in zip(combo, shapes, strict=True):
        key = ("shape", id(shape), opt, search.allow_recompute)
        terms = cache.bound_terms.get(key)
        if terms is None:
            # A stage is busy at least as long as, and holds at most as many blocks as, any
            # one lane: the terms of the lane with the most work are a valid relaxation.
            _, t, share, cap = max(cache.lanes(shape),
                                   key=lambda ln: float(ln[1].fwd[-1] + ln[1].bwd[-1]))
            terms = shape_terms(tables=t, tp=opt.tp, dp=opt.dp, share=share, capacity=cap,
                                training=cache.training, model=cache.model,
                                allow_recompute=search.allow_recompute)
            cache.bound_terms[key] = terms
        rows.extend([terms] * opt.num_stages)
    arr = np.array(rows)
    c, r, k0, k1 = arr.T
    n_blocks = sum(1 for layer in cache.model.layers if layer.kind == "block")
    if n_blocks == 0:
        return base
    lb, _ = bound_from_terms(fixed=np.zeros(len(rows)), c=c, r=r, k0=k0, k1=k1,
                             n_blocks=n_blocks, m=m, base=base)
    return lb


def _static_fits(model: ModelProfile, cluster: Cluster, pools: list[Pool],
                 options: tuple[PoolOption, ...], training: TrainingConfig) -> bool:
    """Necessary condition: the stages' combined sharded capacity holds all parameters'
    weights, gradients and optimizer states."""
    room = 0.0
    for opt in options:
        pool = pools[opt.pool]
        cap = (min(cluster.device_memory_bytes(n) for n in pool.nodes)
               - training.memory_reserve_gb * 1e9)
        per_param = 2.0 * training.dtype_bytes + (training.optimizer_bytes_per_param /
                                                  (opt.dp if training.zero1 else 1))
        room += opt.num_stages * max(cap, 0.0) * opt.tp / per_param
    return room >= model.total_params


def _expressible(options: tuple[PoolOption, ...], micro_batch_samples: int, target: str) -> bool:
    """Runtimes such as Megatron-LM take one TP and one DP size and equal batch shares."""
    if not target:
        return True
    tps = {o.tp for o in options}
    dps = {o.dp for o in options}
    return len(tps) == 1 and len(dps) == 1 and micro_batch_samples % next(iter(dps)) == 0


def _build_stages(cache: TableCache, pools: list[Pool], options: tuple[PoolOption, ...],
                  *, micro_batches: int, micro_batch_samples: int) -> list:
    shapes: list[StageShape] = []
    for opt in options:
        shapes.extend(cache.shapes(pools[opt.pool], opt, micro_batch_samples))
    return [cache.context(shapes, s, micro_batches) for s in range(len(shapes))]


def _solve(cache: TableCache, pools: list[Pool], options: tuple[PoolOption, ...], *,
           micro_batches: int, training: TrainingConfig, search: SearchConfig,
           upper_bound: float, min_threshold: float = 0.0) -> _Solved | None:
    b_mb = training.global_batch // micro_batches
    ctxs = _build_stages(cache, pools, options, micro_batches=micro_batches,
                         micro_batch_samples=b_mb)
    mats = [cache.matrices(c, allow_recompute=search.allow_recompute) for c in ctxs]
    if search.solver == "cpsat":
        from autosplit.search.layer_split_cpsat import solve_split_cpsat

        res = solve_split_cpsat(mats, micro_batches=micro_batches,
                                time_limit_s=max(1.0, search.time_limit_s / 10))
    else:
        res = solve_split(mats, micro_batches=micro_batches, upper_bound=upper_bound,
                          min_threshold=min_threshold)
    if res is None:
        return None
    stages = [StageAssignment(ctx=c, start=res.bounds[s], end=res.bounds[s + 1],
                              recompute=res.recompute[s]) for s, c in enumerate(ctxs)]
    if search.target and len(set(res.recompute)) > 1:
        stages = _uniform_recompute(stages)
        if stages is None:
            return None
    from autosplit.cost.predict import iteration_time

    total = iteration_time(stages, micro_batches=micro_batches)
    return _Solved(iteration_s=total, stages=stages, options=options,
                   micro_batches=micro_batches,
                   lower_bound=res.lower_bound if not res.exact else total)


def _certify(cache: TableCache, pools: list[Pool], kept: list[_Solved], best: _Solved, *,
             training: TrainingConfig, search: SearchConfig, pruned: dict[str, int]) -> None:
    """Close the gap the DP leaves on the post-pipeline tail: candidates whose proven bound is
    below the best plan are re-solved by CP-SAT, which is exact for the full objective. Only
    stage ranges that could still beat the best plan are modelled (a slower stage cannot), so
    the models stay small. A deterministic time budget keeps the result machine-independent."""
    from autosplit.search.layer_split import _dp
    from autosplit.search.layer_split_cpsat import solve_split_cpsat

    open_ = sorted((r for r in kept if r.lower_bound < best.iteration_s * (1 - 1e-3)),
                   key=lambda r: r.lower_bound)
    for res in open_[:search.certify_max]:
        m = res.micro_batches
        mats = [cache.matrices(st.ctx, allow_recompute=search.allow_recompute)
                for st in res.stages]
        s_inf, _ = _dp(mats, float("inf"))
        max_busy = (best.iteration_s - s_inf) / max(m - 1, 1)
        cp = solve_split_cpsat(mats, micro_batches=m, time_limit_s=search.certify_time,
                               max_busy=max_busy)
        pruned["certified"] = pruned.get("certified", 0) + 1
        if cp is None:  # nothing under the limit can beat the best plan
            res.lower_bound = best.iteration_s
        else:
            res.lower_bound = max(res.lower_bound, min(cp.lower_bound, best.iteration_s))


def _uniform_recompute(stages: list[StageAssignment]) -> list[StageAssignment] | None:
    from autosplit.cost.stage import range_memory

    out = []
    for st in stages:
        s, a = range_memory(st.ctx, st.start, st.end, True)
        if float(s + a) > st.ctx.capacity:
            return None
        out.append(StageAssignment(ctx=st.ctx, start=st.start, end=st.end, recompute=True))
    return out


def _describe(options: tuple[PoolOption, ...], pools: list[Pool], m: int) -> str:
    parts = [f"{o.num_stages}×{pools[o.pool].label}[TP{o.tp}·DP{o.dp}]" for o in options]
    return " → ".join(parts) + f", m={m}"


def search_plan(*, model: ModelProfile, cluster: Cluster, training: TrainingConfig,
                search: SearchConfig, costs: LayerCostProvider | None = None,
                progress: Callable[[str], None] | None = None) -> Plan:
    """Find the fastest plan under the cost model (see module docstring)."""
    t0 = time.perf_counter()
    costs = costs or AnalyticCosts()
    say = progress or (lambda _msg: None)
    cache = TableCache(model=model, cluster=cluster, costs=costs, training=training)
    plain = find_pools(cluster)
    # Mixed pools (replicas of two chips of one collective group in the same stages, with
    # uneven batch shares) are not expressible by the runtimes a --target names.
    pools = plain + ([] if search.target else mixed_pools(plain, cluster))
    n_units = model.num_layers
    max_stages = min(search.max_stages or n_units, n_units)
    _check_static_memory(model, cluster, training)

    pruned: dict[str, int] = {"lower_bound": 0, "memory": 0, "batch": 0, "stages": 0,
                              "target": 0, "infeasible": 0}
    per_pool = [pool_options(p, search, max_stages=max_stages) for p in pools]
    everything = frozenset(range(len(plain)))

    def covers_all(options: tuple[PoolOption, ...]) -> bool:
        return frozenset().union(*(members(pools[o.pool]) for o in options)) == everything

    subsets: list[tuple[int, ...]] = []
    for r in range(len(pools), 0, -1):
        for subset in itertools.combinations(range(len(pools)), r):
            used = [members(pools[i]) for i in subset]
            if sum(len(u) for u in used) != len(frozenset().union(*used)):
                continue  # two pools of the subset share nodes
            if not search.allow_idle and frozenset().union(*used) != everything:
                continue
            subsets.append(subset)
    m_choices = divisors(training.global_batch)
    blocks = np.array([layer.kind == "block" for layer in model.layers])
    max_share = max(search.micro_batch_sizes)

    heap: list[_Candidate] = []
    level1 = 0
    for subset in subsets:
        dps = sorted({o.dp for i in subset for o in per_pool[i]})
        for dp in dps:
            choices = [[o for o in per_pool[i] if o.dp == dp] for i in subset]
            if any(not c for c in choices):
                continue
            for combo in itertools.product(*choices):
                level1 += 1
                p = sum(o.num_stages for o in combo)
                if p > max_stages:
                    pruned["stages"] += 1
                    continue
                if not _static_fits(model, cluster, pools, combo, training):
                    pruned["memory"] += 1
                    continue
                for m in m_choices:
                    b_mb = training.global_batch // m
                    if b_mb < dp or math.ceil(b_mb / dp) > max_share:
                        pruned["batch"] += 1
                        continue
                    if not _expressible(combo, b_mb, search.target):
                        pruned["target"] += 1
                        continue
                    built = [cache.shapes(pools[o.pool], o, b_mb) for o in combo]
                    if any(not b or b[0].max_share > max_share for b in built):
                        pruned["batch"] += 1
                        continue
                    shapes = [b[0] for b in built]
                    costs_ = [cache.unit_costs(s) for s in shapes]
                    lb = order_free_bound(costs_, [o.num_stages for o in combo], m, blocks)
                    base = float(np.vstack(costs_).min(axis=0).sum())
                    lb = max(lb, _water_bound(cache, pools, combo, shapes, m, base, search))
                    if not math.isfinite(lb):
                        pruned["memory"] += 1
                        continue
                    for order in sorted(set(itertools.permutations(combo))):
                        key = (tuple((o.pool, o.stage_devices, o.tp) for o in order), m)
                        heapq.heappush(heap, _Candidate(lb, key, order, m, False, base))
    say(f"level 1: {len(heap)} candidate shapes after pruning {sum(pruned.values())}")

    best: _Solved | None = None
    best_all: _Solved | None = None  # best that uses every pool (for the idle note)
    kept: list[_Solved] = []
    explored = 0
    timed_out = False
    open_bound = math.inf
    inexact_bound = math.inf
    deferred: list[_Candidate] = []  # full-pool candidates pruned before one was solved

    def visit(cand: _Candidate, heap_: list[_Candidate]) -> None:
        """Tighten a candidate's bound (re-queue it) or solve it exactly."""
        nonlocal best, best_all, explored, inexact_bound
        if not cand.strong:
            ctxs = _build_stages(cache, pools, cand.options, micro_batches=cand.micro_batches,
                                 micro_batch_samples=training.global_batch // cand.micro_batches)
            strong, cand.slowest = memory_aware_bound(
                ctxs, model, cand.micro_batches, allow_recompute=search.allow_recompute,
                base=cand.base, terms_cache=cache.bound_terms)
            if not math.isfinite(strong):
                pruned["memory"] += 1
                return
            cand.bound, cand.strong = max(strong, cand.bound), True
            heapq.heappush(heap_, cand)
            return
        order = cand.options
        explored += 1
        full_pool = covers_all(order)
        ub = math.inf if best is None else best.iteration_s
        if full_pool and best_all is not None:
            ub = max(ub, best_all.iteration_s)
        elif full_pool:
            ub = math.inf
        res = _solve(cache, pools, order, micro_batches=cand.micro_batches,
                     training=training, search=search, upper_bound=ub,
                     min_threshold=cand.slowest)
        if res is None:
            pruned["infeasible"] += 1
            return
        res.lower_bound = min(res.iteration_s, max(res.lower_bound, cand.bound))
        kept.append(res)
        if best is None or res.iteration_s < best.iteration_s - 1e-12:
            best = res
            say(f"best so far {res.iteration_s * 1e3:.1f} ms: "
                f"{_describe(order, pools, cand.micro_batches)}")
        if full_pool and (best_all is None or res.iteration_s < best_all.iteration_s):
            best_all = res

    while heap:
        cand = heapq.heappop(heap)
        if time.perf_counter() - t0 > search.time_limit_s or explored >= search.max_solves:
            timed_out = True
            open_bound = cand.bound
            break
        if best is not None and cand.bound >= best.iteration_s * (1 - 1e-9):
            pruned["lower_bound"] += 1
            if covers_all(cand.options) and best_all is None:
                deferred.append(cand)
            continue
        visit(cand, heap)
    # The plan may leave pools idle; find the best plan that uses every device so the plan
    # can say what using them would cost.
    heapq.heapify(deferred)
    while deferred and best_all is None and not timed_out:
        cand = heapq.heappop(deferred)
        if time.perf_counter() - t0 > search.time_limit_s or explored >= search.max_solves:
            break
        visit(cand, deferred)
    if best is not None and not timed_out and search.certify_max > 0:
        _certify(cache, pools, kept, best, training=training, search=search, pruned=pruned)
    if best is not None:
        inexact_bound = min([best.iteration_s] + [r.lower_bound for r in kept])
    if best is None and timed_out:
        raise NoFeasiblePlanError(
            f"the search stopped (time limit {search.time_limit_s:g} s or "
            f"{search.max_solves} solves) before it had solved any candidate",
            fix="raise --time-limit")
    if best is None:
        raise NoFeasiblePlanError(_explain_infeasible(model, cluster, training, pruned))
    elapsed = time.perf_counter() - t0
    lower = min(best.iteration_s, open_bound, inexact_bound)
    gap = max(0.0, (best.iteration_s - lower) / best.iteration_s)
    stats = SearchStats(
        time_s=elapsed, explored=explored, pruned=pruned, level1_candidates=level1,
        exact_solves=explored, solver=search.solver, lower_bound_s=lower, optimality_gap=gap,
        timed_out=timed_out)
    return build_plan(best, pools=pools, model=model, cluster=cluster, training=training,
                      stats=stats, alternatives=kept, best_all=best_all,
                      n_alternatives=search.alternatives)


def _check_static_memory(model: ModelProfile, cluster: Cluster, training: TrainingConfig) -> None:
    per_param = 2.0 * training.dtype_bytes + training.optimizer_bytes_per_param
    need = model.total_params * per_param
    have = sum(n.devices * (cluster.device_memory_bytes(n) - training.memory_reserve_gb * 1e9)
               for n in cluster.nodes)
    if not training.zero1 and need > have:
        raise NoFeasiblePlanError(
            f"weights, gradients and optimizer states need {need / 1e12:.2f} TB "
            f"({model.total_params / 1e9:.1f} B parameters × {per_param:.0f} bytes); the cluster "
            f"has {have / 1e12:.2f} TB usable ({cluster.num_devices} devices, "
            f"{training.memory_reserve_gb} GB reserved each)",
            fix="add devices, enable --zero1, or choose a smaller model")


def _explain_infeasible(model: ModelProfile, cluster: Cluster, training: TrainingConfig,
                        pruned: dict[str, int]) -> str:
    biggest = max(model.layers, key=lambda layer: layer.activation_bytes)
    max_mem = max(cluster.device_memory_bytes(n) for n in cluster.nodes)
    return (
        "no split fits in memory: the largest unit ('" + biggest.name + "') keeps "
        f"{biggest.activation_bytes / 1e9:.2f} GB of activations per sample at seq_len "
        f"{model.seq_len}; the largest device has {max_mem / 1e9:.0f} GB. "
        f"Pruned: {', '.join(f'{k}={v}' for k, v in pruned.items() if v)}"
    )


def _stage_plans(stages: list[StageAssignment], model: ModelProfile) -> tuple[StagePlan, ...]:
    out = []
    for st in stages:
        units = model.layers[st.start:st.end]
        mods: list[str] = []
        for u in units:
            mods.extend(u.module_names)
        out.append(StagePlan(
            index=st.ctx.index, chip=st.ctx.shape.chip, layer_start=st.start,
            layer_end=st.end, layer_names=tuple(u.name for u in units),
            module_names=tuple(mods), tp=st.ctx.shape.tp, replicas=st.ctx.shape.replicas,
            recompute=st.recompute, cost_source=st.ctx.tables.cost_source(st.start, st.end)))
    return tuple(out)


def model_ref(model: ModelProfile) -> ModelRef:
    return ModelRef(name=model.name, source_file=model.source_file,
                    fingerprint=model.fingerprint, num_layers=model.num_layers,
                    params=model.total_params, seq_len=model.seq_len, dtype=model.dtype,
                    tokens_per_sample=model.tokens_per_sample, block_list=model.block_list,
                    model_args=dict(model.model_args))


def cluster_ref(cluster: Cluster) -> ClusterRef:
    return ClusterRef(name=cluster.name, source_file=cluster.source_file,
                      num_devices=cluster.num_devices, chips=tuple(cluster.chip_types()))


def build_plan(best: _Solved, *, pools: list[Pool], model: ModelProfile, cluster: Cluster,
               training: TrainingConfig, stats: SearchStats, alternatives: list[_Solved],
               best_all: _Solved | None, n_alternatives: int) -> Plan:
    """Assemble the plan JSON object for the chosen solution."""
    pred = predict(best.stages, micro_batches=best.micro_batches, model=model,
                   training=training,
                   peak_flops=peak_flops_of(best.stages, cluster, training.dtype))
    used = {(r.node, i) for st in best.stages for r in st.ctx.shape.replicas
            for i in r.local_indices}
    idle = tuple(f"{n.name}:{i}" for n in cluster.nodes for i in range(n.devices)
                 if (n.name, i) not in used)
    idle_note = ""
    if idle:
        if best_all is not None:
            ratio = best_all.iteration_s / best.iteration_s
            shape = _describe(best_all.options, pools, best_all.micro_batches)
            idle_note = (f"using every device ({shape}) predicts "
                         f"{best_all.iteration_s:.3f} s per iteration, "
                         f"{ratio:.2f}× the chosen plan's {best.iteration_s:.3f} s")
        else:
            idle_note = "no plan that uses every device fits in memory or the search space"
    seen = {(best.options, best.micro_batches)}
    alts: list[Alternative] = []
    for res in sorted(alternatives, key=lambda r: r.iteration_s):
        key = (res.options, res.micro_batches)
        if key in seen:
            continue
        seen.add(key)
        alts.append(Alternative(
            summary=_describe(res.options, pools, res.micro_batches),
            iteration_s=res.iteration_s, ratio_to_best=res.iteration_s / best.iteration_s,
            stages=tuple({"chip": st.ctx.shape.chip, "layers": st.end - st.start,
                          "tp": st.ctx.shape.tp, "dp": st.ctx.shape.dp,
                          "recompute": st.recompute} for st in res.stages)))
        if len(alts) >= n_alternatives:
            break
    return Plan(
        model=model_ref(model), cluster=cluster_ref(cluster),
        global_batch=training.global_batch, micro_batch_count=best.micro_batches,
        schedule=training.schedule, zero1=training.zero1,
        stages=_stage_plans(best.stages, model),
        memory_reserve_gb=training.memory_reserve_gb, prediction=pred, idle_devices=idle,
        idle_note=idle_note, search=stats, alternatives=tuple(alts))
