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
from autosplit.cost.predict import StageAssignment, predict
from autosplit.cost.stage import StageShape, StageTables, build_tables, make_context
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
from autosplit.search.candidates import (
    Pool,
    PoolOption,
    divisors,
    find_pools,
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

    def tables(self, shape: StageShape) -> StageTables:
        node = self.cluster.node(shape.replicas[0].node)
        key = (shape.chip, node.intra_bw_gbs, shape.tp, shape.max_share)
        if key not in self._tables:
            self._tables[key] = build_tables(
                model=self.model, chip=self.cluster.chips[shape.chip], node=node,
                tp=shape.tp, share=shape.max_share, costs=self.costs, dtype=self.training.dtype)
        return self._tables[key]

    def unit_costs(self, shape: StageShape) -> np.ndarray:
        """Per-unit busy time (no recompute, no p2p) — the lower bound's ingredients."""
        t = self.tables(shape)
        return np.diff(t.fwd) + np.diff(t.bwd) + np.diff(t.tpc)


@dataclass(order=True)
class _Candidate:
    bound: float
    order_key: tuple = field(compare=True)
    options: tuple[PoolOption, ...] = field(compare=False, default=())
    micro_batches: int = field(compare=False, default=1)


@dataclass
class _Solved:
    iteration_s: float
    stages: list[StageAssignment]
    options: tuple[PoolOption, ...]
    micro_batches: int
    lower_bound: float


def _lower_bound(unit_costs: list[np.ndarray], counts: list[int], m: int) -> float:
    """Valid bound on ``Σu + (m−1)·max u`` for any contiguous split (see module docstring of
    ``layer_split``): with ``w_k`` the cheapest cost of unit ``k`` on any stage and
    ``r_s = min_k c_sk / w_k``, ``Σu ≥ W`` and ``max u ≥ W / Σ_s n_s / r_s``."""
    stacked = np.vstack(unit_costs)
    w = stacked.min(axis=0)
    w_total = float(w.sum())
    safe = np.where(w > 0, w, 1.0)
    ratios = np.where(w > 0, stacked / safe, np.inf).min(axis=1)
    ratios = np.where(np.isfinite(ratios), ratios, 1.0)
    capacity = sum(n / r for n, r in zip(counts, ratios, strict=True))
    return w_total + (m - 1) * w_total / capacity


def _static_fits(model: ModelProfile, cluster: Cluster, pools: list[Pool],
                 options: tuple[PoolOption, ...], training: TrainingConfig) -> bool:
    """Necessary condition: the stages' combined sharded capacity holds all parameters'
    weights, gradients and optimizer states."""
    room = 0.0
    for opt in options:
        pool = pools[opt.pool]
        cap = cluster.device_memory_bytes(pool.nodes[0]) - training.memory_reserve_gb * 1e9
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
        shapes.extend(stage_shapes(pools[opt.pool], opt, micro_batch_samples=micro_batch_samples))
    ctxs = []
    for s, shape in enumerate(shapes):
        ctxs.append(make_context(
            cluster=cache.cluster, shape=shape, tables=cache.tables(shape), index=s,
            num_stages=len(shapes), micro_batches=micro_batches, training=cache.training,
            prev=shapes[s - 1] if s > 0 else None,
            nxt=shapes[s + 1] if s + 1 < len(shapes) else None))
    return ctxs


def _solve(cache: TableCache, pools: list[Pool], options: tuple[PoolOption, ...], *,
           micro_batches: int, training: TrainingConfig, search: SearchConfig,
           upper_bound: float) -> _Solved | None:
    b_mb = training.global_batch // micro_batches
    ctxs = _build_stages(cache, pools, options, micro_batches=micro_batches,
                         micro_batch_samples=b_mb)
    n_units = cache.model.num_layers
    mats = [stage_matrices(c, n_units, allow_recompute=search.allow_recompute) for c in ctxs]
    if search.solver == "cpsat":
        from autosplit.search.layer_split_cpsat import solve_split_cpsat

        res = solve_split_cpsat(mats, micro_batches=micro_batches,
                                time_limit_s=max(1.0, search.time_limit_s / 10))
    else:
        res = solve_split(mats, micro_batches=micro_batches, upper_bound=upper_bound)
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
    parts = [f"{o.num_stages}×{pools[o.pool].chip}[TP{o.tp}·DP{o.dp}]" for o in options]
    return " → ".join(parts) + f", m={m}"


def search_plan(*, model: ModelProfile, cluster: Cluster, training: TrainingConfig,
                search: SearchConfig, costs: LayerCostProvider | None = None,
                progress: Callable[[str], None] | None = None) -> Plan:
    """Find the fastest plan under the cost model (see module docstring)."""
    t0 = time.perf_counter()
    costs = costs or AnalyticCosts()
    say = progress or (lambda _msg: None)
    cache = TableCache(model=model, cluster=cluster, costs=costs, training=training)
    pools = find_pools(cluster)
    n_units = model.num_layers
    max_stages = min(search.max_stages or n_units, n_units)
    _check_static_memory(model, cluster, training)

    pruned: dict[str, int] = {"lower_bound": 0, "memory": 0, "batch": 0, "stages": 0,
                              "target": 0, "infeasible": 0}
    per_pool = [pool_options(p, search, max_stages=max_stages) for p in pools]
    subsets: list[tuple[int, ...]] = []
    for r in range(len(pools), 0, -1):
        if r < len(pools) and not search.allow_idle:
            break
        subsets.extend(itertools.combinations(range(len(pools)), r))
    m_choices = divisors(training.global_batch)
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
                    shapes = [stage_shapes(pools[o.pool], o, micro_batch_samples=b_mb)[0]
                              for o in combo]
                    lb = _lower_bound([cache.unit_costs(s) for s in shapes],
                                      [o.num_stages for o in combo], m)
                    key = (tuple((o.pool, o.stage_devices, o.tp) for o in combo), m)
                    heapq.heappush(heap, _Candidate(lb, key, combo, m))
    say(f"level 1: {len(heap)} candidate shapes after pruning {sum(pruned.values())}")

    best: _Solved | None = None
    best_all: _Solved | None = None  # best that uses every pool (for the idle note)
    kept: list[_Solved] = []
    explored = 0
    timed_out = False
    open_bound = math.inf
    inexact_bound = math.inf
    while heap:
        cand = heapq.heappop(heap)
        if time.perf_counter() - t0 > search.time_limit_s:
            timed_out = True
            open_bound = cand.bound
            break
        if best is not None and cand.bound >= best.iteration_s * (1 - 1e-9):
            # Everything left has a bound at least this large; keep the full-pool search
            # going only for the idle note.
            if len(cand.options) == len(pools) or best_all is not None:
                pruned["lower_bound"] += 1 + len(heap)
                break
            pruned["lower_bound"] += 1
            continue
        for order in sorted(set(itertools.permutations(cand.options))):
            explored += 1
            ub = math.inf if best is None else best.iteration_s * 1.5
            res = _solve(cache, pools, order, micro_batches=cand.micro_batches,
                         training=training, search=search, upper_bound=ub)
            if res is None:
                pruned["infeasible"] += 1
                continue
            kept.append(res)
            inexact_bound = min(inexact_bound, res.lower_bound)
            if best is None or res.iteration_s < best.iteration_s - 1e-12:
                best = res
                say(f"best so far {res.iteration_s * 1e3:.1f} ms: "
                    f"{_describe(order, pools, cand.micro_batches)}")
            if len(order) == len(pools) and (
                    best_all is None or res.iteration_s < best_all.iteration_s):
                best_all = res
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


def _cost_source(tables: StageTables, start: int, end: int) -> str:
    srcs = set(tables.unit_sources[start:end])
    if srcs == {"measured"}:
        return "measured"
    if "measured" in srcs:
        return "mixed"
    return "analytic"


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
            recompute=st.recompute, cost_source=_cost_source(st.ctx.tables, st.start, st.end)))
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


def peak_flops_of(stages: list[StageAssignment], cluster: Cluster, dtype: str) -> float:
    total = 0.0
    for st in stages:
        chip = cluster.chips[st.ctx.shape.chip]
        total += chip.peak_tflops(dtype) * 1e12 * st.ctx.shape.tp * st.ctx.shape.dp
    return total


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
            idle_note = (f"using every device ({shape}) predicts {best_all.iteration_s:.3f} s per iteration, "
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
