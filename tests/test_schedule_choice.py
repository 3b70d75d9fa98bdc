"""The search chooses the pipeline schedule: ``--schedule auto`` is never slower than 1F1B, a
tight memory keeps 1F1B, a pinned schedule is honoured, targets keep their schedules, and
``autosplit run`` refuses schedules it does not execute before anything starts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from factories import gpt_like_model, one_node_plan, two_type_cluster
from runtime_support import GPT, GPT_ARGS, StageSpec, plan_dict, write_plan

from autosplit.cli import main
from autosplit.cluster.schema import Cluster
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.cost.predict import iteration_time
from autosplit.cost.schedule import SCHEDULE_NAMES, get_schedule
from autosplit.errors import NoFeasiblePlanError
from autosplit.export.expressible import TARGET_SCHEDULES, expressibility_problems, project_plan
from autosplit.model.types import ModelProfile
from autosplit.plan.evaluate import assignments_of, evaluate_plan, training_of
from autosplit.plan.io import load_plan, save_plan
from autosplit.plan.schema import Plan
from autosplit.search.assemble import Solution
from autosplit.search.engine import search_plan
from autosplit.search.schedule_choice import candidate_schedules, choose_schedules

MODEL = gpt_like_model(blocks=14, hidden=1024, seq=1024)  # 16 units


def _search(cluster: Cluster, schedule: str, *, model: ModelProfile = MODEL,
            global_batch: int = 16, target: str = "", grad_overlap: bool = True) -> Plan:
    return search_plan(model=model, cluster=cluster,
                       training=TrainingConfig(global_batch=global_batch,
                                               grad_overlap=grad_overlap),
                       search=SearchConfig(schedule=schedule, target=target))


@pytest.mark.parametrize("fast, slow, batch", [(4, 0, 16), (4, 4, 16), (2, 2, 32)])
def test_auto_is_never_slower_than_the_pinned_1f1b_plan(fast: int, slow: int,
                                                        batch: int) -> None:
    cluster = two_type_cluster(fast=fast, slow=slow)
    pinned = _search(cluster, "1f1b", global_batch=batch)
    auto = _search(cluster, "auto", global_batch=batch)
    assert pinned.schedule == "1f1b" and pinned.prediction and auto.prediction
    assert auto.prediction.iteration_s <= pinned.prediction.iteration_s * (1 + 1e-12)
    assert all(sp.memory.fits for sp in auto.prediction.stages)
    # The plan's prediction is what evaluate gives the same plan, whatever the schedule.
    again = evaluate_plan(auto, model=MODEL, cluster=cluster)
    assert again.prediction == auto.prediction


def test_interleaving_wins_on_equal_devices_and_the_plan_records_it(tmp_path: Path) -> None:
    cluster = two_type_cluster(fast=4, slow=0)
    # With the all-reduce exposed, data parallelism alone loses to a pipeline here (with it
    # hidden behind the backward, one DP-4 stage wins and there is no schedule to choose).
    auto = _search(cluster, "auto", grad_overlap=False)
    assert auto.schedule != "1f1b"  # one node of equal chips: the bubble is worth filling
    schedule = get_schedule(auto.schedule, virtual_stages=auto.virtual_stages)
    ranks = auto.num_ranks
    assert auto.num_stages == ranks * auto.virtual_stages
    for st in auto.stages:
        assert st.pipeline_rank == schedule.rank_of(st.index, ranks)
    path = tmp_path / "plan.json"
    save_plan(auto, path)
    raw = json.loads(path.read_text())
    assert raw["schedule"] == auto.schedule
    assert raw["virtual_stages"] == auto.virtual_stages
    if auto.virtual_stages > 1:
        assert [s["rank"] for s in raw["stages"]] == [st.pipeline_rank for st in auto.stages]
    assert load_plan(path) == auto


def _finalist(plan: Plan, cluster: Cluster) -> tuple[Solution, TrainingConfig]:
    stages = tuple(assignments_of(plan, model=MODEL, cluster=cluster, costs=AnalyticCosts()))
    sol = Solution(iteration_s=iteration_time(stages, micro_batches=plan.micro_batch_count),
                   micro_batches=plan.micro_batch_count, stages=stages, options=())
    return sol, training_of(plan)


def test_a_memory_tight_plan_keeps_1f1b_where_interleaving_does_not_fit() -> None:
    cluster = two_type_cluster(fast=4, slow=0)
    allowed = ("1f1b", "interleaved-1f1b")  # 1F1B and its interleaved form
    roomy = replace(one_node_plan(MODEL, cluster, schedule="1f1b", sizes=[4, 4, 4, 4], ranks=4,
                                  global_batch=16), memory_reserve_gb=2.0)
    sol, training = _finalist(roomy, cluster)
    [free] = choose_schedules([sol], requested="auto", allowed=allowed, model=MODEL,
                              cluster=cluster, training=training)
    assert free.schedule == "interleaved-1f1b"  # with memory to spare, interleaving wins
    # Leave rank 0 exactly what 1F1B needs: interleaving keeps more micro-batches there.
    one = evaluate_plan(roomy, model=MODEL, cluster=cluster).prediction
    assert one is not None
    mem = one.stages[0].memory
    tight = replace(roomy, memory_reserve_gb=2.0 + (mem.capacity - mem.total) / 1e9 * 0.999)
    sol, training = _finalist(tight, cluster)
    [chosen] = choose_schedules([sol], requested="auto", allowed=allowed, model=MODEL,
                                cluster=cluster, training=training)
    assert chosen.schedule == "1f1b" and chosen.virtual_stages == 1
    assert chosen.fits
    with pytest.raises(NoFeasiblePlanError, match="interleaved-1f1b"):
        choose_schedules([sol], requested="interleaved-1f1b", allowed=None, model=MODEL,
                         cluster=cluster, training=training)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_a_pinned_schedule_is_honoured(name: str) -> None:
    cluster = two_type_cluster(fast=4, slow=0)
    plan = _search(cluster, name)
    assert plan.schedule == name
    cls = type(get_schedule(name))
    assert cls.min_virtual <= plan.virtual_stages <= (cls.max_virtual or plan.virtual_stages)
    assert plan.prediction is not None
    assert evaluate_plan(plan, model=MODEL, cluster=cluster).prediction == plan.prediction


def test_targets_keep_the_schedules_they_run() -> None:
    units = [4, 4, 4, 4]
    for target, names in TARGET_SCHEDULES.items():
        assert {n for n, _ in candidate_schedules("auto", names, units)} == set(names), target
    assert {n for n, _ in candidate_schedules("auto", None, units)} == set(SCHEDULE_NAMES)
    # v = 2 always (uneven chunks allowed), larger counts only where they divide every rank.
    assert candidate_schedules("interleaved-1f1b", None, [4, 4, 6]) == [
        ("interleaved-1f1b", 2)]
    assert candidate_schedules("interleaved-1f1b", None, [4, 8]) == [
        ("interleaved-1f1b", 2), ("interleaved-1f1b", 4)]
    assert candidate_schedules("zbv", None, [1, 3]) == []
    plan = _search(two_type_cluster(fast=4, slow=0), "auto", target="deepspeed")
    assert plan.schedule == "1f1b"


def test_cli_refuses_a_schedule_the_target_cannot_run(capsys) -> None:
    code = main(["search", GPT, "-c", "experiments/clusters/small_2type.yaml",
                 "--target", "deepspeed", "--schedule", "zbv", "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "deepspeed does not run the zbv schedule" in err and "--schedule" in err
    assert main(["search", GPT, "-c", "experiments/clusters/small_2type.yaml",
                 "--schedule", "zigzag", "-q"]) == 2
    assert "interleaved-1f1b" in capsys.readouterr().err  # the fix lists the names


def _interleaved(d: dict[str, Any]) -> None:
    """Two ranks, two chunks each: stages 0 and 2 on rank 0's device, 1 and 3 on rank 1's."""
    d.update(schedule="interleaved-1f1b", virtual_stages=2)
    for k, st in enumerate(d["stages"]):
        st["rank"] = k % 2
        st["replicas"] = json.loads(json.dumps(d["stages"][k % 2]["replicas"]))


@pytest.mark.parametrize("schedule, stages, edit", [
    ("zb-h1", [StageSpec(0, 3), StageSpec(3, 6)], lambda d: None),
    ("interleaved-1f1b", [StageSpec(0, 2), StageSpec(2, 3), StageSpec(3, 5), StageSpec(5, 6)],
     _interleaved),
])
def test_run_accepts_every_schedule_it_executes(tmp_path: Path, schedule: str,
                                                stages: list[StageSpec], edit) -> None:
    """The launcher's checks pass zero-bubble and interleaved plans (the runs themselves are
    in tests/test_runtime_schedules.py); every rank holds the stages of its position."""
    from autosplit.runtime.checks import check_plan_shape
    from autosplit.runtime.layout import run_layout

    d = plan_dict(GPT, GPT_ARGS, stages, schedule=schedule)
    edit(d)
    plan = load_plan(write_plan(tmp_path, d))
    check_plan_shape(plan, path="plan.json")
    layout = run_layout(plan)
    assert layout.world_size == 2
    assert [layout.stages_of(r) for r in (0, 1)] == (
        [(0, 2), (1, 3)] if plan.virtual_stages == 2 else [(0,), (1,)])


def test_a_chunked_plan_projects_to_one_stage_per_rank_for_deepspeed() -> None:
    cluster = two_type_cluster(fast=4, slow=0)
    auto = _search(cluster, "interleaved-1f1b")
    assert auto.virtual_stages >= 2
    projected = project_plan(auto, "deepspeed", model=MODEL, cluster=cluster, costs=None)
    assert projected.schedule == "1f1b" and projected.virtual_stages == 1
    assert projected.num_stages == auto.num_ranks
    assert not expressibility_problems(projected, "deepspeed")
    for r, st in enumerate(projected.stages):
        chunks = [c for c in auto.stages if c.pipeline_rank == r]
        assert [(x.node, x.local_indices) for x in st.replicas] == [
            (x.node, x.local_indices) for x in chunks[0].replicas]
        assert st.num_layers == sum(c.num_layers for c in chunks)


def test_one_rank_keeps_1f1b() -> None:
    """With a single rank there is no bubble to fill: no schedule beats 1F1B."""
    cluster = two_type_cluster(fast=1, slow=0)
    plan = _search(cluster, "auto", global_batch=8)
    assert plan.num_ranks == 1
    assert plan.schedule == "1f1b" and plan.virtual_stages == 1


def test_a_target_only_gets_variants_it_runs_as_planned() -> None:
    """Megatron-LM's interleaved schedule needs a micro-batch per rank: with fewer, the
    choice for ``--target megatron`` keeps 1F1B (auto) or says no plan fits (pinned), rather
    than handing the export a plan it must refuse."""
    cluster = two_type_cluster(fast=4, slow=0)
    few = replace(one_node_plan(MODEL, cluster, schedule="1f1b", sizes=[4, 4, 4, 4], ranks=4,
                                micro_batches=2, global_batch=2), memory_reserve_gb=2.0)
    assert few.micro_batch_count < few.num_ranks
    sol, training = _finalist(few, cluster)
    allowed = ("1f1b", "interleaved-1f1b")
    [free] = choose_schedules([sol], requested="auto", allowed=allowed, model=MODEL,
                              cluster=cluster, training=training)
    [megatron] = choose_schedules([sol], requested="auto", allowed=allowed, model=MODEL,
                                  cluster=cluster, training=training, target="megatron")
    assert megatron.schedule == "1f1b"
    if free.schedule == "interleaved-1f1b":  # what the target is spared
        assert free.prediction.iteration_s < megatron.prediction.iteration_s
    with pytest.raises(NoFeasiblePlanError, match="interleaved-1f1b"):
        choose_schedules([sol], requested="interleaved-1f1b", allowed=allowed, model=MODEL,
                         cluster=cluster, training=training, target="megatron")
