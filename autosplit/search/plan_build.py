"""Turn the search's outcome into the plan a runtime executes and a person reads."""

from __future__ import annotations

import math
from collections.abc import Sequence

from autosplit.cluster.schema import Cluster
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.predict import StageAssignment, peak_flops_of, predict
from autosplit.model.types import ModelProfile
from autosplit.plan.schema import (
    Alternative,
    ClusterRef,
    ModelRef,
    Plan,
    Prediction,
    SearchStats,
    StagePlan,
)
from autosplit.search.assemble import Solution
from autosplit.search.budget import STOP_TIME, Budget
from autosplit.search.groups import Pool
from autosplit.search.schedule_choice import choose_schedules, target_schedules, with_variant

__all__ = ["build_plan", "describe", "model_ref", "cluster_ref", "stage_plans", "FINAL_SLACK"]

#: Plans re-costed by the simulation (at least), and how far above the best closed-form
#: time a plan may be to be one of them (the search keeps every plan it prices within it:
#: the simulation can put one of them first).
_FINALISTS = 12
FINAL_SLACK = 1.10


def describe(sol: Solution, pools: Sequence[Pool]) -> str:
    """A one-line shape, e.g. ``Ascend910B[TP8·DP4] → 3×H100[TP4·DP4], m=64``: runs of equal
    consecutive stages are counted."""
    parts: list[str] = []
    for opt in sol.options:
        chips = "+".join(pools[ln.pool].chip for ln in opt.lanes)
        dp = "+".join(str(ln.replicas) for ln in opt.lanes)
        parts.append(f"{chips}[TP{opt.tp}·DP{dp}]")
    runs: list[tuple[str, int]] = []
    for p in parts:
        if runs and runs[-1][0] == p:
            runs[-1] = (p, runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    shape = " → ".join(p if c == 1 else f"{c}×{p}" for p, c in runs)
    return f"{shape}, m={sol.micro_batches}"


def stage_plans(stages: Sequence[StageAssignment], model: ModelProfile) -> tuple[StagePlan, ...]:
    out = []
    for st in stages:
        units = model.layers[st.start:st.end]
        mods = tuple(m for u in units for m in u.module_names)
        out.append(StagePlan(
            index=st.ctx.index, chip=st.ctx.shape.chip, layer_start=st.start,
            layer_end=st.end, layer_names=tuple(u.name for u in units), module_names=mods,
            tp=st.ctx.shape.tp, replicas=st.ctx.shape.replicas, recompute=st.recompute,
            cost_source=st.ctx.tables.cost_source(st.start, st.end)))
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


def _idle(best: Solution, cluster: Cluster) -> tuple[str, ...]:
    used = {(r.node, i) for st in best.stages for r in st.ctx.shape.replicas
            for i in r.local_indices}
    return tuple(f"{n.name}:{i}" for n in cluster.nodes for i in range(n.devices)
                 if (n.name, i) not in used)


def _predicted(sol: Solution, *, model: ModelProfile, cluster: Cluster,
               training: TrainingConfig) -> Prediction:
    return predict(sol.stages, micro_batches=sol.micro_batches, model=model, training=training,
                   peak_flops=peak_flops_of(sol.stages, cluster, training.dtype))


def _finalists(outcome, pools: Sequence[Pool], count: int) -> list[Solution]:
    """The best distinct plans by the search's objective (the closed form), one per shape,
    within ``FINAL_SLACK`` of the best: the ones re-costed by the schedule's simulation."""
    best = outcome.best
    seen: set[str] = set()
    out: list[Solution] = []
    for sol in sorted(outcome.kept.values(), key=lambda s: (s.iteration_s, s.key)):
        if sol.iteration_s > best.iteration_s * FINAL_SLACK:
            break
        label = describe(sol, pools)
        if label in seen:
            continue
        seen.add(label)
        out.append(sol)
        if len(out) >= count:
            break
    return out


def _alternative(sol: Solution, pred: Prediction, best_s: float,
                 pools: Sequence[Pool]) -> Alternative:
    return Alternative(
        summary=describe(sol, pools), iteration_s=pred.iteration_s,
        ratio_to_best=pred.iteration_s / best_s,
        stages=tuple({"chip": st.ctx.shape.chip, "layers": st.end - st.start,
                      "tp": st.ctx.shape.tp, "dp": st.ctx.shape.dp,
                      "recompute": st.recompute} for st in sol.stages))


def build_plan(outcome, *, model: ModelProfile, cluster: Cluster, training: TrainingConfig,
               search: SearchConfig, pools: Sequence[Pool], budget: Budget,
               lower_bound: float, perfect_balance_s: float = 0.0,
               best_all: Solution | None = None) -> Plan:
    """The plan, with its prediction, idle devices, runners-up and what the search did.

    The search ranks pipelines by the closed form ``Σu + (m − 1)·max u`` (plus transfers and
    tail) its bounds hold for; the plan's prediction is the schedule's event simulation
    (docs/cost-model.md §4), which can order near-equal plans differently. So the best few
    distinct plans are re-costed by the simulation and the fastest there is the plan; the
    others are its alternatives, with simulated times too. Each finalist is re-costed under
    every schedule the search may choose (``schedule_choice``: ``--schedule auto``) or the
    one pinned, and keeps its fastest variant that fits. The gap is the search's: its best
    closed-form time against the closed-form lower bound."""
    count = max(search.alternatives + 1, _FINALISTS)
    finalists = _finalists(outcome, pools, count)
    # The loop had a share of the time limit; the schedule choice may use the rest of it.
    whole = Budget(work=math.inf, time_limit_s=search.time_limit_s, started=budget.started)
    chosen = choose_schedules(finalists, requested=search.schedule or training.schedule,
                              allowed=target_schedules(search.target), model=model,
                              cluster=cluster, training=training, target=search.target,
                              out_of_time=whole.out_of_time)
    if whole.stopped_by == STOP_TIME:
        budget.stopped_by = STOP_TIME
    scored = [(var.prediction, var.solution) for var in chosen]
    pred, best = scored[0]
    idle = _idle(best, cluster)
    idle_note = ""
    if idle:
        if best_all is not None:
            alt = _predicted(best_all, model=model, cluster=cluster, training=training)
            idle_note = (f"using every device ({describe(best_all, pools)}) predicts "
                         f"{alt.iteration_s:.4g} s per iteration, "
                         f"{alt.iteration_s / pred.iteration_s:.2f}× the chosen plan's "
                         f"{pred.iteration_s:.4g} s")
        else:
            idle_note = "the search found no plan that uses every device and beats this one"
    closed = outcome.best.iteration_s
    lower = min(lower_bound, closed)
    stats = SearchStats(
        time_s=budget.elapsed, explored=outcome.priced, pruned=dict(outcome.pruned),
        level1_candidates=outcome.counts_tried, exact_solves=outcome.programmes,
        solver="threshold-dp", lower_bound_s=lower,
        optimality_gap=max(0.0, (closed - lower) / closed),
        timed_out=budget.stopped_by == "time_limit", stopped_by=budget.stopped_by,
        work=budget.spent, budget=search.budget, perfect_balance_s=perfect_balance_s,
        objective_s=closed)
    plan = Plan(
        model=model_ref(model), cluster=cluster_ref(cluster),
        global_batch=training.global_batch, micro_batch_count=best.micro_batches,
        schedule=training.schedule, zero1=training.zero1,
        grad_bucket_mb=training.grad_bucket_mb, grad_overlap=training.grad_overlap,
        stages=stage_plans(best.stages, model), memory_reserve_gb=training.memory_reserve_gb,
        prediction=pred, idle_devices=idle, idle_note=idle_note, search=stats,
        alternatives=tuple(_alternative(sol, p, pred.iteration_s, pools)
                           for p, sol in scored[1:search.alternatives + 1]))
    return with_variant(plan, chosen[0], model, alternatives=chosen[1:search.alternatives + 1])
