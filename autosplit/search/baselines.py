"""Baselines every plan is compared with, costed by the same model.

- uniform: the plan's own stages and devices, units split as evenly as possible — what a
  heterogeneity-unaware planner does on the same hardware.
- TFLOPS-proportional: units split in proportion to each stage's summed peak TFLOPS — the
  obvious "fix", which ignores memory, pipeline position and per-operator speed.
Stages recompute only when their units would not fit otherwise.
"""

from __future__ import annotations

from dataclasses import replace

from autosplit.cluster.schema import Cluster
from autosplit.cost.stage import range_memory
from autosplit.model.types import ModelProfile
from autosplit.plan.evaluate import assignments_of, evaluate_plan
from autosplit.plan.schema import Plan, StagePlan
from autosplit.protocols.cost import LayerCostProvider

__all__ = ["uniform_split", "tflops_proportional_split", "split_by_weights"]


def split_by_weights(num_units: int, weights: list[float]) -> list[int]:
    """Largest-remainder rounding of ``num_units`` into ``len(weights)`` counts ≥ 1."""
    n = len(weights)
    if num_units < n:
        raise ValueError("fewer units than stages")
    total = sum(weights)
    raw = [num_units * w / total for w in weights]
    counts = [max(1, int(r)) for r in raw]
    while sum(counts) > num_units:
        k = max(range(n), key=lambda i: (counts[i] - raw[i], counts[i]))
        counts[k] -= 1
    while sum(counts) < num_units:
        k = max(range(n), key=lambda i: (raw[i] - counts[i], -i))
        counts[k] += 1
    return counts


def _with_counts(plan: Plan, counts: list[int], *, model: ModelProfile, cluster: Cluster,
                 costs: LayerCostProvider | None) -> Plan:
    stages = []
    start = 0
    for st, c in zip(plan.stages, counts, strict=True):
        units = model.layers[start:start + c]
        mods = tuple(m for u in units for m in u.module_names)
        stages.append(replace(st, layer_start=start, layer_end=start + c,
                              layer_names=tuple(u.name for u in units), module_names=mods,
                              recompute=False))
        start += c
    draft = replace(plan, stages=tuple(stages), alternatives=(), prediction=None)
    draft = _recompute_where_needed(draft, model=model, cluster=cluster, costs=costs)
    return evaluate_plan(draft, model=model, cluster=cluster, costs=costs)


def _recompute_where_needed(plan: Plan, *, model: ModelProfile, cluster: Cluster,
                            costs: LayerCostProvider | None) -> Plan:
    from autosplit.cost.analytic import AnalyticCosts

    assigned = assignments_of(plan, model=model, cluster=cluster,
                              costs=costs or AnalyticCosts())
    stages: list[StagePlan] = []
    for st, a in zip(plan.stages, assigned, strict=True):
        s, act = range_memory(a.ctx, a.start, a.end, False)
        stages.append(replace(st, recompute=bool(float(s + act) > a.ctx.capacity)))
    return replace(plan, stages=tuple(stages))


def uniform_split(plan: Plan, *, model: ModelProfile, cluster: Cluster,
                  costs: LayerCostProvider | None = None) -> Plan:
    counts = split_by_weights(model.num_layers, [1.0] * len(plan.stages))
    return _with_counts(plan, counts, model=model, cluster=cluster, costs=costs)


def tflops_proportional_split(plan: Plan, *, model: ModelProfile, cluster: Cluster,
                              costs: LayerCostProvider | None = None) -> Plan:
    weights = [cluster.chips[st.chip].peak_tflops(plan.model.dtype) * st.tp * st.dp
               for st in plan.stages]
    counts = split_by_weights(model.num_layers, weights)
    return _with_counts(plan, counts, model=model, cluster=cluster, costs=costs)
