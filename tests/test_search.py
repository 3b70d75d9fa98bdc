"""The search returns the best plan the cost model can express, and beats naive splits."""

from __future__ import annotations

import pytest
from factories import gpt_like_model, two_type_cluster

from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.errors import NoFeasiblePlanError
from autosplit.plan.evaluate import evaluate_plan, validate_plan
from autosplit.search.assemble import contexts_for
from autosplit.search.baselines import tflops_proportional_split, uniform_split
from autosplit.search.engine import search_plan
from autosplit.search.groups import device_groups, find_pools
from autosplit.search.layer_split import solve_split, stage_matrices
from autosplit.search.layer_split_cpsat import solve_split_cpsat
from autosplit.search.menu import TableCache, build_menu


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
    assert {f"slow:{i}" for i in range(4)} <= set(plan.idle_devices)
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


def test_library_workspace_is_predicted_and_kept_out_of_the_capacity():
    """Every device holds the chips' library workspaces: the plan's memory counts them, and
    a workspace that leaves too little room forces another plan (here: recomputation)."""
    from dataclasses import replace

    model = gpt_like_model(blocks=8, hidden=2048, seq=4096)
    base = two_type_cluster(fast=1, slow=1, ratio=1.0, slow_mem_gb=40.0)
    training = TrainingConfig(global_batch=8, memory_reserve_gb=1.0)
    search = SearchConfig(micro_batch_sizes=(1, 2, 4, 8))
    plan = search_plan(model=model, cluster=base, training=training, search=search)
    for st, sp in zip(plan.stages, plan.prediction.stages, strict=True):
        assert sp.memory.workspace == base.chips[st.chip].workspace_bytes > 0
        assert sp.memory.allocated == pytest.approx(
            sp.memory.weights + sp.memory.gradients + sp.memory.optimizer
            + sp.memory.activations + sp.memory.workspace)
    assert not any(st.recompute for st in plan.stages)
    # The same devices with most of their memory held by a library: what was planned no
    # longer fits beside it.
    tight = replace(base, chips={k: replace(v, workspace_bytes=v.memory_bytes - 12e9)
                                 for k, v in base.chips.items()})
    again = evaluate_plan(plan, model=model, cluster=tight)
    assert not all(sp.memory.fits for sp in again.prediction.stages)
    other = search_plan(model=model, cluster=tight, training=training, search=search)
    assert all(sp.memory.fits for sp in other.prediction.stages)
    assert other.stages != plan.stages


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
    pools = find_pools(cluster)
    cache = TableCache(model=model, cluster=cluster, pools=pools, costs=AnalyticCosts(),
                       training=training)
    menu = build_menu(cache, device_groups(pools, cluster, mixed=False),
                      micro_batch_samples=2, search=SearchConfig())
    slow = next(o for o in menu.options if o.lanes[0].pool == 1 and not o.recompute)
    fast = next(o for o in menu.options if o.lanes[0].pool == 0 and not o.recompute)
    ctxs = contexts_for(cache, pools, (slow, fast), micro_batches=4, micro_batch_samples=2)
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


def test_search_reports_its_progress_with_the_best_plan_and_the_work_done() -> None:
    """The CLI's progress line is fed by the search: typed events with the best plan so far,
    the work done and the bound proven, ending on the plan's own gap."""
    from factories import gpt_like_model, two_type_cluster

    from autosplit.config import SearchConfig, TrainingConfig
    from autosplit.search.engine import search_plan
    from autosplit.search.progress import SearchProgress

    said: list[SearchProgress] = []
    plan = search_plan(model=gpt_like_model(blocks=6, hidden=512, seq=512),
                       cluster=two_type_cluster(fast=2, slow=2),
                       training=TrainingConfig(global_batch=8), search=SearchConfig(),
                       progress=said.append)
    assert all(isinstance(e, SearchProgress) for e in said)
    first, found = said[0], [e for e in said if e.best_s is not None]
    assert first.best_s is None and first.gap is None and first.candidates == 0
    assert first.pools >= 1 and first.device_groups >= 1
    assert first.lower_bound_s is not None and first.lower_bound_s > 0  # the fluid bound
    assert found, "no event named a plan"
    for before, after in zip(found, found[1:], strict=False):
        assert after.best_s <= before.best_s and after.candidates >= before.candidates
    for e in found:
        assert e.gap is not None and 0.0 <= e.gap <= 1.0
        assert e.lower_bound_s <= e.best_s and e.micro_batches and e.stages
    assert found[-1].gap == pytest.approx(plan.search.optimality_gap, abs=1e-9)
    assert found[-1].lower_bound_s == pytest.approx(plan.search.lower_bound_s, rel=1e-9)
    assert found[-1].candidates >= plan.search.explored > 0
    # The gap is the search's objective against its bound, both in the plan.
    st = plan.search
    assert found[-1].best_s == pytest.approx(st.objective_s, rel=1e-9)
    assert st.lower_bound_s <= st.objective_s
    assert st.optimality_gap == pytest.approx(
        (st.objective_s - st.lower_bound_s) / st.objective_s, abs=1e-12)


def test_progress_gap_is_known_only_with_a_plan_and_a_bound() -> None:
    from autosplit.search.progress import SearchProgress

    base = dict(pools=2, device_groups=3, candidates=5)
    assert SearchProgress(**base, lower_bound_s=1.0).gap is None
    assert SearchProgress(**base, best_s=2.0).gap is None
    assert SearchProgress(**base, best_s=2.0, lower_bound_s=1.5).gap == pytest.approx(0.25)
    assert SearchProgress(**base, best_s=2.0, lower_bound_s=2.5).gap == 0.0


def test_a_search_stopped_before_its_first_full_probe_returns_the_seed_plan(monkeypatch
                                                                             ) -> None:
    """Mixed-chip groups make a menu large; the clock may stop the search before the first
    full menu is priced. The seed (the plain groups' menu) still gives a plan then — and
    otherwise stays out of the way: the full search's plan is the same with or without it."""
    import autosplit.search.engine as engine

    model = gpt_like_model(blocks=4, hidden=1024, seq=1024)
    mixed = two_type_cluster(fast=4, slow=4, ratio=3.0, shared_collectives=True, nic_gbs=200.0)
    training = TrainingConfig(global_batch=256)
    full = search_plan(model=model, cluster=mixed, training=training, search=SearchConfig())

    def out_of_time(self) -> None:
        raise engine.OutOfTime

    with monkeypatch.context() as patch:
        patch.setattr(engine._CountSearch, "probe", out_of_time)
        seeded = search_plan(model=model, cluster=mixed, training=training,
                             search=SearchConfig())
    assert all(len({r.chip for r in st.replicas}) == 1 for st in seeded.stages)
    assert seeded.prediction.iteration_s >= full.prediction.iteration_s
    with monkeypatch.context() as patch:
        patch.setattr(engine, "_seed", lambda *a, **k: None)
        unseeded = search_plan(model=model, cluster=mixed, training=training,
                               search=SearchConfig())
    assert unseeded.stages == full.stages
