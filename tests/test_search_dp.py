"""The search's parts, each against a brute force of its own claim.

- The pipeline programme is exact for feasibility: a pipeline of contiguous group runs whose
  slowest stage is within a threshold and whose runs fit their pools exists if and only if
  the programme returns one, and what it returns is such a pipeline.
- Range classes: pricing one representative per class gives every range's price.
- Placement keeps tensor-parallel groups inside a node and takes exactly the counts asked.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from factories import gpt_like_model, two_type_cluster

from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.search.budget import Budget, OutOfTime
from autosplit.search.engine import _in_flight, search_plan
from autosplit.search.groups import device_groups, find_pools
from autosplit.search.menu import TableCache, build_menu
from autosplit.search.options import LaneOption, StageOption
from autosplit.search.pipeline_dp import PipelineProblem, Stage, solve_pipelines
from autosplit.search.placement import lane_shares, place


def _setup(*, fast=2, slow=2, blocks=4, gbs=4, m=2, shared=False, slow_mem=80.0):
    model = gpt_like_model(blocks=blocks, hidden=1024, seq=1024)
    cluster = two_type_cluster(fast=fast, slow=slow, ratio=3.0, slow_mem_gb=slow_mem,
                               shared_collectives=shared)
    training = TrainingConfig(global_batch=gbs, memory_reserve_gb=1.0)
    search = SearchConfig(micro_batch_sizes=(1, 2, 4), tp_degrees=(1, 2))
    pools = find_pools(cluster)
    groups = device_groups(pools, cluster, mixed=shared)
    cache = TableCache(model=model, cluster=cluster, pools=pools, costs=AnalyticCosts(),
                       training=training)
    menu = build_menu(cache, groups, micro_batch_samples=gbs // m, search=search)
    n = model.num_layers
    problem = PipelineProblem(menu=menu, groups=tuple(groups),
                              in_flight=_in_flight(training, m, n),
                              capacity=np.array([p.num_devices for p in pools]),
                              exact_positions=n)
    return problem


def _brute_feasible(problem: PipelineProblem, tau: float, max_stages: int) -> bool:
    """Every unit split into at most ``max_stages`` stages, every option per stage: is there
    a pipeline within ``tau`` whose group runs are contiguous and fit their pools?"""
    menu = problem.menu
    n = menu.ranges.num_units
    for s in range(1, max_stages + 1):
        for cuts in itertools.combinations(range(1, n), s - 1):
            bounds = (0, *cuts, n)
            per_stage = []
            for k in range(s):
                r = int(menu.ranges.of[bounds[k], bounds[k + 1]])
                f = int(problem.in_flight[s - k])
                per_stage.append([o for o in range(menu.size)
                                  if menu.busy[o, r] <= tau and menu.kmax[o, r] >= f])
            for choice in itertools.product(*per_stage):
                if _valid_runs(problem, choice):
                    return True
    return False


def _valid_runs(problem: PipelineProblem, choice) -> bool:
    menu = problem.menu
    groups = [int(menu.group[o]) for o in choice]
    runs = [g for g, _ in itertools.groupby(groups)]
    pools = [p for g in runs for p in problem.groups[g].pools]
    if len(pools) != len(set(pools)):
        return False  # a pool in two runs
    used = sum(menu.devices[o] for o in choice)
    return bool((used <= problem.capacity).all())


@pytest.mark.parametrize("case", [
    dict(fast=2, slow=2, blocks=3, gbs=4, m=2),
    dict(fast=1, slow=3, blocks=3, gbs=4, m=4),
    dict(fast=2, slow=2, blocks=3, gbs=4, m=2, shared=True),
    dict(fast=2, slow=1, blocks=3, gbs=2, m=1, slow_mem=12.0),
])
def test_programme_is_exact_for_feasibility(case):
    problem = _setup(**case)
    menu = problem.menu
    finite = menu.busy[np.isfinite(menu.busy)]
    taus = np.unique(np.quantile(finite, [0.05, 0.15, 0.3, 0.5, 0.7, 0.9]))
    found = solve_pipelines(problem, taus)
    n = menu.ranges.num_units
    for tau, paths in zip(taus, found, strict=True):
        assert bool(paths) == _brute_feasible(problem, float(tau), max_stages=n), tau
        for path in paths:
            assert path[0].start == 0 and path[-1].end == n
            assert all(a.end == b.start for a, b in zip(path, path[1:], strict=False))
            assert [st.position for st in path] == list(range(len(path), 0, -1))
            for st in path:
                r = int(menu.ranges.of[st.start, st.end])
                assert menu.busy[st.option, r] <= tau
                assert menu.kmax[st.option, r] >= problem.in_flight[st.position]
                assert int(menu.group[st.option]) == st.group
            assert _valid_runs(problem, [st.option for st in path])


def test_range_classes_price_every_range():
    """Each range's class representative has exactly that range's busy time (blocks are
    identical), and the classes are far fewer than the ranges."""
    from autosplit.cost.stage import compute_time

    model = gpt_like_model(blocks=6, hidden=1024, seq=1024)
    cluster = two_type_cluster(fast=2, slow=2, ratio=3.0)
    training = TrainingConfig(global_batch=4, memory_reserve_gb=1.0)
    pools = find_pools(cluster)
    cache = TableCache(model=model, cluster=cluster, pools=pools, costs=AnalyticCosts(),
                       training=training)
    menu = build_menu(cache, device_groups(pools, cluster, mixed=False),
                      micro_batch_samples=2, search=SearchConfig(tp_degrees=(1, 2)))
    n = model.num_layers
    assert menu.ranges.size < n * (n + 1) // 2
    for o, opt in enumerate(menu.options):
        for i in range(n):
            for j in range(i + 1, n + 1):
                want = max(float(compute_time(cache.tables(ln.pool, opt.tp, ln.share), i, j,
                                              opt.recompute)) for ln in opt.lanes)
                assert menu.busy[o, menu.ranges.of[i, j]] == pytest.approx(want, rel=1e-12)


def test_placement_keeps_tp_groups_in_a_node_and_takes_the_counts():
    cluster = two_type_cluster(fast=4, slow=4)
    pools = find_pools(cluster)
    options = [StageOption(group=1, tp=2, lanes=(LaneOption(1, 1, 4),), recompute=False),
               StageOption(group=0, tp=1, lanes=(LaneOption(0, 3, 2),), recompute=False),
               StageOption(group=1, tp=1, lanes=(LaneOption(1, 2, 2),), recompute=False)]
    placed = place(options, pools, micro_batch_samples=4)
    seen = set()
    for opt, reps in zip(options, placed, strict=True):
        assert len(reps) == opt.replicas
        assert sum(r.batch_share for r in reps) == 4
        for r in reps:
            assert len(r.local_indices) == opt.tp
            for i in r.local_indices:
                assert (r.node, i) not in seen
                seen.add((r.node, i))
    assert lane_shares(options[1], 4) == [[2, 1, 1]]


def test_budget_and_time_limit_stop_the_search():
    model = gpt_like_model(blocks=8)
    cluster = two_type_cluster(fast=4, slow=4)
    training = TrainingConfig(global_batch=16)
    small = search_plan(model=model, cluster=cluster, training=training,
                        search=SearchConfig(budget=1e-6))
    assert small.search.stopped_by == "budget"
    full = search_plan(model=model, cluster=cluster, training=training, search=SearchConfig())
    assert full.search.stopped_by == "complete"
    assert full.prediction.iteration_s <= small.prediction.iteration_s * (1 + 1e-12)
    b = Budget(work=1.0, time_limit_s=0.0)
    with pytest.raises(OutOfTime):
        b.check()
    assert b.stopped_by == "time_limit"


def test_same_inputs_same_plan_bytes():
    from autosplit.plan.io import plan_to_json

    model = gpt_like_model(blocks=10)
    cluster = two_type_cluster(fast=4, slow=4, shared_collectives=True)
    args = dict(model=model, cluster=cluster, training=TrainingConfig(global_batch=16),
                search=SearchConfig())

    def strip(text: str) -> str:
        import json

        d = json.loads(text)
        d["search"]["time_s"] = 0.0
        return json.dumps(d, sort_keys=True)

    assert strip(plan_to_json(search_plan(**args))) == strip(plan_to_json(search_plan(**args)))


def _walked(schedule: str, m: int, stages: int) -> list[int]:
    from autosplit.cost.memory import in_flight_micro_batches

    return [0] + [in_flight_micro_batches(schedule=schedule, stage=stages - k, num_stages=stages,
                                          micro_batches=m) for k in range(1, stages + 1)]


@pytest.mark.parametrize("m", [1, 5, 13, 14, 40])
def test_in_flight_shortcut_matches_the_full_walk(m):
    """The in-flight counts per position from the end, taken from a steady state for many
    micro-batches, are those of walking the schedule at ``m`` itself, for every schedule
    that runs one stage per rank."""
    from autosplit.cost.schedule import SCHEDULE_NAMES, get_schedule
    from autosplit.errors import BadInputError

    checked = 0
    for name in SCHEDULE_NAMES:
        try:
            get_schedule(name, virtual_stages=1)
        except BadInputError:
            continue
        try:
            walked = _walked(name, m, 6)
        except BadInputError:  # a count this schedule does not run
            continue
        got = _in_flight(TrainingConfig(global_batch=m, schedule=name), m, 6).tolist()
        assert got == walked, name
        checked += 1
    assert checked >= 2


def _objective(menu, stages, choice, m) -> float:
    ranges = [int(menu.ranges.of[st.start, st.end]) for st in stages]
    busy = [float(menu.busy[o, r]) for o, r in zip(choice, ranges, strict=True)]
    tail = float(menu.tail[choice[0], ranges[0]]) if stages[0].start == 0 else 0.0
    return sum(busy) + tail + (m - 1) * max(busy)


@pytest.mark.parametrize("use_all", [False, True])
@pytest.mark.parametrize("case", [dict(fast=2, slow=2, blocks=3, gbs=4, m=2),
                                  dict(fast=2, slow=2, blocks=3, gbs=4, m=2, shared=True)])
def test_repick_with_dominated_options_left_out_is_optimal(case, use_all):
    """CP-SAT's re-choice, with dominated options left out, reaches the optimum of every
    choice of options (any group) for the stages' units and positions under capacity."""
    from autosplit.search.repick import repick_options

    problem = _setup(**case)
    menu = problem.menu
    n = menu.ranges.num_units
    m = case["m"]
    for cuts in [(1,), (2,), (1, 2)]:
        bounds = (0, *cuts, n)
        s = len(bounds) - 1
        stages = [Stage(start=bounds[k], end=bounds[k + 1], group=0, option=-1,
                        position=s - k) for k in range(s)]
        per_stage = [[o for o in range(menu.size)
                      if np.isfinite(menu.busy[o, menu.ranges.of[st.start, st.end]])
                      and menu.kmax[o, menu.ranges.of[st.start, st.end]]
                      >= problem.in_flight[st.position]] for st in stages]
        best = math.inf
        for choice in itertools.product(*per_stage):
            used = sum(menu.devices[o] for o in choice)
            fits = (used == problem.capacity) if use_all else (used <= problem.capacity)
            if bool(fits.all()):
                best = min(best, _objective(menu, stages, choice, m))
        got = repick_options(menu, stages, in_flight=problem.in_flight,
                             capacity=problem.capacity, micro_batches=m, use_all=use_all,
                             deterministic_time=10.0)
        if not math.isfinite(best):
            assert got is None
            continue
        assert got is not None
        assert _objective(menu, stages, got, m) == pytest.approx(best, rel=1e-6, abs=1e-12)
