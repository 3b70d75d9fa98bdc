"""Properties of the search on random small problems, checked against exhaustive search.

For random two-chip-type clusters of at most 8 devices and models of at most 12 units: the
plan is valid, fits in memory, is never worse than the uniform or TFLOPS-proportional split
of its own stages (when those fit), and is within 0.5 % of the brute-force optimum — which it
also can never beat. When the search finds no plan, brute force must not find one either.
"""

from __future__ import annotations

import math

from factories import gpt_like_model, two_type_cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autosplit.bench.brute_force import brute_force_best
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.errors import NoFeasiblePlanError
from autosplit.plan.evaluate import validate_plan
from autosplit.plan.schema import Plan
from autosplit.search.baselines import tflops_proportional_split, uniform_split
from autosplit.search.engine import search_plan

_REL = 1e-9
_GAP = 0.005

_problems = st.fixed_dictionaries({
    "fast": st.sampled_from([1, 2, 4]),
    "slow": st.sampled_from([1, 2, 4]),
    "ratio": st.sampled_from([1.5, 2.0, 3.0, 4.0]),
    "slow_mem_gb": st.sampled_from([6.0, 12.0, 80.0]),
    "cross_vendor": st.booleans(),
    "blocks": st.integers(min_value=2, max_value=10),
    "hidden": st.sampled_from([512, 1024, 2048]),
    "seq": st.sampled_from([512, 1024, 2048]),
    "global_batch": st.sampled_from([4, 8, 16]),
    "allow_recompute": st.booleans(),
})


def _fits(plan: Plan) -> bool:
    assert plan.prediction is not None
    return all(s.memory.fits for s in plan.prediction.stages)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(_problems)
def test_search_is_valid_optimal_and_beats_baselines(p: dict) -> None:
    model = gpt_like_model(blocks=p["blocks"], hidden=p["hidden"], seq=p["seq"])
    cluster = two_type_cluster(fast=p["fast"], slow=p["slow"], ratio=p["ratio"],
                               slow_mem_gb=p["slow_mem_gb"], cross_vendor=p["cross_vendor"])
    training = TrainingConfig(global_batch=p["global_batch"], seq_len=p["seq"])
    search = SearchConfig(allow_recompute=p["allow_recompute"])
    costs = AnalyticCosts()
    best = brute_force_best(model, cluster, training, search, costs=costs)
    try:
        plan = search_plan(model=model, cluster=cluster, training=training, search=search,
                           costs=costs)
    except NoFeasiblePlanError:
        assert math.isinf(best), f"brute force found {best} s where the search found nothing"
        return
    validate_plan(plan, model=model, cluster=cluster)
    assert _fits(plan)
    t = plan.prediction.iteration_s
    for name, base in (("uniform", uniform_split), ("tflops", tflops_proportional_split)):
        other = base(plan, model=model, cluster=cluster, costs=costs)
        if _fits(other):
            assert t <= other.prediction.iteration_s * (1 + _REL), name
    assert t >= best * (1 - _REL), "the search beat the exhaustive optimum"
    assert t <= best * (1 + _GAP), f"{t} s is {t / best - 1:.2%} above the optimum {best} s"
