"""What each benchmark plan is measured against, all costed by the same cost model.

A plan's predicted time alone says little; the ratios to simpler plans say what the search
bought. Every baseline here is built from the same model, cluster and training settings:

- ``uniform``: the found plan's stages and devices, units split evenly
  (``autosplit.search.baselines.uniform_split``).
- ``uniform_all``: only when the found plan leaves devices idle — the best plan that uses
  every device (a search with ``allow_idle=False``), then split evenly; what a planner that
  neither balances nor drops slow chips would run.
- ``tflops``: units in proportion to each stage's peak TFLOPS.
- ``single_type``: the best plan on the nodes of one chip type only (searched), the best chip
  type kept — "just use the fast GPUs".
- ``brute_force``: the exhaustive optimum over the whole plan schema
  (``autosplit.bench.exhaustive``: per-stage TP and DP, unequal cuts, mixed-chip stages,
  idle devices), on problems small enough to enumerate (≤ 8 devices, ≤ 12 units) and
  without ``--target`` (a target restricts the plans, the enumeration does not).

Each comes back as an iteration time: ``inf`` when that baseline does not fit in memory (or
no plan exists), ``nan`` when it does not apply to the case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from autosplit.bench.exhaustive import exhaustive_optimum, small_enough
from autosplit.cluster.schema import Cluster
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.errors import NoFeasiblePlanError
from autosplit.model.types import ModelProfile
from autosplit.plan.schema import Plan
from autosplit.protocols.cost import LayerCostProvider
from autosplit.search.baselines import tflops_proportional_split, uniform_split
from autosplit.search.engine import search_plan

__all__ = ["BaselineTimes", "baseline_times", "restrict_to_chip"]


@dataclass(frozen=True)
class BaselineTimes:
    """Predicted iteration time of each baseline (``inf``: does not fit; ``nan``: n/a)."""

    uniform: float = math.nan
    uniform_all: float = math.nan
    tflops: float = math.nan
    single_type: float = math.nan
    single_type_chip: str = ""
    brute_force: float = math.nan


def restrict_to_chip(cluster: Cluster, chip: str) -> Cluster:
    """The sub-cluster made of the nodes holding ``chip``."""
    return replace(cluster, name=f"{cluster.name}[{chip}]",
                   nodes=tuple(n for n in cluster.nodes if n.chip == chip),
                   chips={chip: cluster.chips[chip]})


def _time_if_fits(plan: Plan) -> float:
    pred = plan.prediction
    if pred is None:
        return math.nan
    if not all(st.memory.fits for st in pred.stages):
        return math.inf
    return pred.iteration_s


def baseline_times(plan: Plan, *, kinds: tuple[str, ...], model: ModelProfile,
                   cluster: Cluster, training: TrainingConfig, search: SearchConfig,
                   costs: LayerCostProvider) -> BaselineTimes:
    """Cost the baselines named in ``kinds`` for ``plan`` (see module docstring)."""
    out = BaselineTimes()
    if "uniform" in kinds:
        out = replace(out, uniform=_time_if_fits(
            uniform_split(plan, model=model, cluster=cluster, costs=costs)))
    if "tflops" in kinds:
        out = replace(out, tflops=_time_if_fits(
            tflops_proportional_split(plan, model=model, cluster=cluster, costs=costs)))
    if "uniform_all" in kinds and plan.idle_devices:
        try:
            every = search_plan(model=model, cluster=cluster, training=training,
                                search=replace(search, allow_idle=False), costs=costs)
        except NoFeasiblePlanError:
            out = replace(out, uniform_all=math.inf)
        else:
            out = replace(out, uniform_all=_time_if_fits(
                uniform_split(every, model=model, cluster=cluster, costs=costs)))
    chips = cluster.chip_types()
    if "single_type" in kinds and len(chips) > 1:
        best, best_chip = math.inf, ""
        for chip in sorted(chips):
            sub = restrict_to_chip(cluster, chip)
            try:
                sub_plan = search_plan(model=model, cluster=sub, training=training,
                                       search=search, costs=costs)
            except NoFeasiblePlanError:
                continue
            t = _time_if_fits(sub_plan)
            if t < best:
                best, best_chip = t, chip
        out = replace(out, single_type=best, single_type_chip=best_chip)
    if "brute_force" in kinds and small_enough(model, cluster) and not search.target:
        out = replace(out, brute_force=exhaustive_optimum(
            model=model, cluster=cluster, training=training, search=search,
            costs=costs).iteration_s)
    return out
