"""The search returns the best plan the cost model can express, and beats naive splits."""

from __future__ import annotations

import pytest
from factories import gpt_like_model, two_type_cluster

from autosplit.bench.brute_force import brute_force_best
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.errors import NoFeasiblePlanError
from autosplit.plan.evaluate import evaluate_plan, validate_plan
from autosplit.search.baselines import tflops_proportional_split, uniform_split
from autosplit.search.candidates import find_pools, pool_options
from autosplit.search.engine import TableCache, _build_stages, search_plan
from autosplit.search.layer_split import solve_split, stage_matrices
from autosplit.search.layer_split_cpsat import solve_split_cpsat

CASES = [
    # (fast devices, slow devices, ratio, slow memory GB, blocks, global batch)
    (2, 2, 3.0, 80.0, 6, 8),
    (4, 4, 3.0, 80.0, 7, 8),
    (2, 4, 2.0, 80.0, 8, 4),
    (4, 2, 4.0, 16.0, 8, 8),  # small memory on the slow chip
    (1, 3, 3.0, 24.0, 6, 4),
]


@pytest.mark.parametrize("fast,slow,ratio,slow_mem,blocks,gbs", CASES)
def test_search_matches_brute_force(fast, slow, ratio, slow_mem, blocks, gbs):
    model = gpt_like_model(blocks=blocks, hidden=1024, seq=1024)
    cluster = two_type_cluster(fast=fast, slow=slow, ratio=ratio, slow_mem_gb=slow_mem)
    training = TrainingConfig(global_batch=gbs, memory_reserve_gb=1.0)
    search = SearchConfig(micro_batch_sizes=(1, 2, 4), tp_degrees=(1, 2, 4))
    plan = search_plan(model=model, cluster=cluster, training=training, search=search)
    brute = brute_force_best(model, cluster, training, search)
    found = plan.prediction.iteration_s
    assert found <= brute * 1.005, (found, brute)
    assert found >= brute * (1 - 1e-9), "search found a plan outside the space it reports"
    validate_plan(plan, model=model, cluster=cluster)


def test_three_to_one_gives_fast_chips_three_times_the_work():
    model = gpt_like_model(blocks=32, hidden=2048, seq=2048)
    cluster = two_type_cluster(fast=8, slow=8, ratio=3.0)
    training = TrainingConfig(global_batch=64)
    plan = search_plan(model=model, cluster=cluster, training=training, search=SearchConfig())
    fast = sum(s.num_layers * s.dp * s.tp for s in plan.stages if s.chip == "FAST")
    slow = sum(s.num_layers * s.dp * s.tp for s in plan.stages if s.chip == "SLOW")
    assert slow > 0, "the slow chips should not be left idle here"
    assert 2.3 <= fast / slow <= 3.7
    base = uniform_split(plan, model=model, cluster=cluster)
    assert base.prediction.iteration_s / plan.prediction.iteration_s >= 1.3
    prop = tflops_proportional_split(plan, model=model, cluster=cluster)
    assert prop.prediction.iteration_s >= plan.prediction.iteration_s * (1 - 1e-9)


def test_search_is_deterministic():
    model = gpt_like_model(blocks=12)
    cluster = two_type_cluster(fast=4, slow=4)
    args = dict(model=model, cluster=cluster, training=TrainingConfig(global_batch=16),
                search=SearchConfig())
    a, b = search_plan(**args), search_plan(**args)
    assert a.stages == b.stages and a.micro_batch_count == b.micro_batch_count


def test_evaluate_reproduces_search_prediction():
    model = gpt_like_model(blocks=12)
    cluster = two_type_cluster(fast=4, slow=4)
    plan = search_plan(model=model, cluster=cluster, training=TrainingConfig(global_batch=16),
                       search=SearchConfig())
    again = evaluate_plan(plan, model=model, cluster=cluster)
    assert again.prediction.iteration_s == pytest.approx(plan.prediction.iteration_s, rel=1e-12)


def test_slow_chip_left_idle_when_faster_and_plan_says_so():
    # A tiny model on a fast and a very slow chip with a slow cross-vendor link: using the
    # slow chips can only hurt, and the plan must list them and the cost of using them.
    model = gpt_like_model(blocks=4, hidden=512, seq=512)
    cluster = two_type_cluster(fast=4, slow=4, ratio=20.0, cross_vendor=True)
    plan = search_plan(model=model, cluster=cluster, training=TrainingConfig(global_batch=8),
                       search=SearchConfig())
    assert {s.chip for s in plan.stages} == {"FAST"}
    assert len(plan.idle_devices) == 4 and all(d.startswith("slow:") for d in plan.idle_devices)
    assert "using every device" in plan.idle_note


def test_recompute_chosen_when_memory_needs_it():
    model = gpt_like_model(blocks=8, hidden=2048, seq=4096)
    cluster = two_type_cluster(fast=1, slow=1, ratio=1.0, slow_mem_gb=12.0)
    plan = search_plan(model=model, cluster=cluster,
                       training=TrainingConfig(global_batch=8, memory_reserve_gb=1.0),
                       search=SearchConfig(micro_batch_sizes=(1, 2, 4, 8)))
    assert all(sp.memory.fits for sp in plan.prediction.stages)
    no_rec = SearchConfig(micro_batch_sizes=(1, 2, 4, 8), allow_recompute=False)
    try:
        other = search_plan(model=model, cluster=cluster,
                            training=TrainingConfig(global_batch=8, memory_reserve_gb=1.0),
                            search=no_rec)
    except NoFeasiblePlanError:
        return
    assert other.prediction.iteration_s >= plan.prediction.iteration_s * (1 - 1e-9)


def test_no_feasible_plan_reports_numbers():
    model = gpt_like_model(blocks=8, hidden=8192, seq=1024)
    cluster = two_type_cluster(fast=1, slow=1, ratio=2.0, slow_mem_gb=8.0)
    cluster = cluster.__class__(**{**cluster.__dict__, "chips": {
        k: v.__class__(**{**v.__dict__, "memory_gb": 8.0}) for k, v in cluster.chips.items()}})
    with pytest.raises(NoFeasiblePlanError) as exc:
        search_plan(model=model, cluster=cluster, training=TrainingConfig(global_batch=8),
                    search=SearchConfig())
    assert "TB" in str(exc.value) and "parameters" in str(exc.value)


def test_cpsat_agrees_with_dp():
    model = gpt_like_model(blocks=10)
    cluster = two_type_cluster(fast=2, slow=2, ratio=3.0)
    training = TrainingConfig(global_batch=8)
    cache = TableCache(model=model, cluster=cluster, costs=AnalyticCosts(), training=training)
    pools = find_pools(cluster)
    search = SearchConfig()
    opts = (pool_options(pools[1], search, max_stages=12)[0],
            pool_options(pools[0], search, max_stages=12)[0])
    ctxs = _build_stages(cache, pools, opts, micro_batches=4, micro_batch_samples=2)
    mats = [stage_matrices(c, model.num_layers, allow_recompute=True) for c in ctxs]
    dp = solve_split(mats, micro_batches=4)
    cp = solve_split_cpsat(mats, micro_batches=4, hint=False)
    assert cp is not None and dp is not None
    # CP-SAT is exact for the full objective (tail included); the DP is exact for the
    # pipeline part and polishes the tail: never better than CP-SAT, and within 0.5%.
    assert cp.exact
    assert cp.objective <= dp.objective * (1 + 1e-9)
    assert dp.objective <= cp.objective * 1.005
    assert dp.lower_bound <= cp.objective * (1 + 1e-9)


def test_target_restricts_to_expressible_plans():
    from autosplit.export.expressible import expressibility_problems

    model = gpt_like_model(blocks=16, hidden=2048, seq=2048)
    cluster = two_type_cluster(fast=8, slow=8, ratio=3.0)
    free = search_plan(model=model, cluster=cluster, training=TrainingConfig(global_batch=64),
                       search=SearchConfig())
    plan = search_plan(model=model, cluster=cluster, training=TrainingConfig(global_batch=64),
                       search=SearchConfig(target="megatron"))
    assert expressibility_problems(plan, "megatron") == []
    assert len({s.tp for s in plan.stages}) == 1 and len({s.dp for s in plan.stages}) == 1
    assert plan.prediction.iteration_s >= free.prediction.iteration_s * (1 - 1e-9)


def test_mixed_chip_data_parallel_gives_faster_chips_more_samples():
    # A small model on two chips that share a collective library and a fast network: plain
    # data parallelism over both chips, with uneven batch shares, beats any pipeline.
    model = gpt_like_model(blocks=4, hidden=1024, seq=1024)
    mixed = two_type_cluster(fast=4, slow=4, ratio=3.0, shared_collectives=True, nic_gbs=200.0)
    training = TrainingConfig(global_batch=256)
    plan = search_plan(model=model, cluster=mixed, training=training, search=SearchConfig())
    stage = next(s for s in plan.stages if len({r.node for r in s.replicas}) > 1)
    shares = {r.node: r.batch_share for r in stage.replicas}
    assert shares["fast"] > shares["slow"]
    validate_plan(plan, model=model, cluster=mixed)
    again = evaluate_plan(plan, model=model, cluster=mixed)
    assert again.prediction.iteration_s == pytest.approx(plan.prediction.iteration_s, rel=1e-9)
    separate = two_type_cluster(fast=4, slow=4, ratio=3.0, nic_gbs=200.0)
    other = search_plan(model=model, cluster=separate, training=training, search=SearchConfig())
    assert plan.prediction.iteration_s < other.prediction.iteration_s


def test_mfu_counts_each_replica_at_its_own_chip_peak():
    from autosplit.cost.predict import peak_flops_of
    from autosplit.plan.evaluate import assignments_of

    model = gpt_like_model(blocks=4, hidden=1024, seq=1024)
    mixed = two_type_cluster(fast=4, slow=4, ratio=3.0, shared_collectives=True, nic_gbs=200.0)
    plan = search_plan(model=model, cluster=mixed, training=TrainingConfig(global_batch=256),
                       search=SearchConfig())
    stages = assignments_of(plan, model=model, cluster=mixed, costs=AnalyticCosts())
    expected = sum(mixed.chips[r.chip].peak_tflops("bf16") * 1e12 * st.tp
                   for st in plan.stages for r in st.replicas)
    assert peak_flops_of(stages, mixed, "bf16") == pytest.approx(expected)
    assert any(r.chip == "SLOW" for st in plan.stages for r in st.replicas)
