"""Schedules in plans: the prediction is the simulation, interleaved and zero-bubble plans
evaluate, validate and report, and the plan JSON records the schedule's parameters."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from factories import gpt_like_model, one_node_plan, two_type_cluster

from autosplit.cli import main
from autosplit.cluster.schema import Cluster
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.schedule import get_schedule
from autosplit.cost.schedule_sim import stage_times_from_prediction
from autosplit.errors import BadInputError
from autosplit.model.types import ModelProfile
from autosplit.plan.evaluate import evaluate_plan, validate_plan
from autosplit.plan.io import load_plan, plan_from_dict, plan_to_json, save_plan
from autosplit.plan.schema import SCHEMA_VERSION, Plan, Replica
from autosplit.report import render_report
from autosplit.report.timeline import bubble_share, plan_timeline
from autosplit.search.engine import search_plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup() -> tuple[ModelProfile, Cluster]:
    return gpt_like_model(blocks=14, hidden=1024, seq=1024), two_type_cluster(fast=4, slow=0)


def test_the_prediction_is_the_simulation() -> None:
    model = gpt_like_model(blocks=12)
    cluster = two_type_cluster(fast=4, slow=4)
    plan = search_plan(model=model, cluster=cluster, training=TrainingConfig(global_batch=16),
                       search=SearchConfig())
    pred = plan.prediction
    assert pred is not None
    sim = get_schedule(plan.schedule).simulate(stage_times_from_prediction(pred.stages),
                                               plan.micro_batch_count)
    assert pred.pipeline_s == sim.pipeline_s
    assert pred.iteration_s == sim.makespan_s
    assert pred.bubble_s == sim.bubble_s
    for sp in pred.stages:
        assert sp.bwd_weight_s == pytest.approx(sp.bwd_s / 2)
    again = evaluate_plan(plan, model=model, cluster=cluster)
    assert again.prediction == pred


def test_interleaved_plan_lowers_the_bubble_on_the_same_devices(setup) -> None:
    model, cluster = setup  # 16 units on 4 equal devices
    one = evaluate_plan(one_node_plan(model, cluster, schedule="1f1b", sizes=[4] * 4,
                                      ranks=4), model=model, cluster=cluster)
    il = evaluate_plan(one_node_plan(model, cluster, schedule="interleaved-1f1b",
                                     sizes=[2] * 8, ranks=4, virtual_stages=2),
                       model=model, cluster=cluster)
    a, b = one.prediction, il.prediction
    assert a is not None and b is not None
    assert b.bubble_s < 0.8 * a.bubble_s  # not half: the head unit makes stages unequal
    assert b.iteration_s < a.iteration_s
    schedule = get_schedule("interleaved-1f1b", virtual_stages=2)
    assert [sp.in_flight for sp in b.stages] == [schedule.in_flight(s, 8, 8) for s in range(8)]
    # Both chunks of a rank report the rank's devices: their weights add up.
    for r in range(4):
        chunks = [sp for sp in b.stages if il.stages[sp.index].pipeline_rank == r]
        assert len(chunks) == 2 and chunks[0].memory == chunks[1].memory
        assert chunks[0].memory.weights == pytest.approx(a.stages[r].memory.weights, rel=0.35)
    timeline = plan_timeline(il)
    assert timeline is not None and timeline.num_ranks == 4
    assert timeline.bubble_fraction() == pytest.approx(bubble_share(b))
    html = render_report(il)
    assert "R0 · S0+S4" in html and "2 virtual stages per rank" in html
    assert "S3→S4 activations, micro-batch 0" in html  # the wrap from the last rank to rank 0
    for svg in re.findall(r"<svg .*?</svg>", html, re.S):
        ET.fromstring(svg)


def test_uneven_chunks_and_zero_bubble(setup) -> None:
    model, cluster = setup
    uneven = evaluate_plan(one_node_plan(model, cluster, schedule="interleaved-1f1b",
                                         sizes=[3, 1, 2, 2, 1, 3, 2, 2], ranks=4,
                                         virtual_stages=2), model=model, cluster=cluster)
    assert uneven.prediction is not None and uneven.prediction.iteration_s > 0
    one = evaluate_plan(one_node_plan(model, cluster, schedule="1f1b", sizes=[4] * 4,
                                      ranks=4), model=model, cluster=cluster)
    zb = evaluate_plan(one_node_plan(model, cluster, schedule="zb-h1", sizes=[4] * 4,
                                     ranks=4), model=model, cluster=cluster)
    assert zb.prediction is not None and one.prediction is not None
    assert zb.prediction.bubble_s < 0.8 * one.prediction.bubble_s  # imbalance stays
    assert [sp.in_flight for sp in zb.prediction.stages] == [4, 4, 4, 4]
    assert [sp.in_flight for sp in one.prediction.stages] == [4, 3, 2, 1]
    zbv = evaluate_plan(one_node_plan(model, cluster, schedule="zbv", sizes=[2] * 8, ranks=4,
                                      virtual_stages=2), model=model, cluster=cluster)
    assert zbv.prediction is not None
    assert zbv.prediction.bubble_s < zb.prediction.bubble_s
    assert [st.pipeline_rank for st in zbv.stages] == [0, 1, 2, 3, 3, 2, 1, 0]


def test_validation_of_schedules_ranks_and_shared_devices(setup) -> None:
    model, cluster = setup
    il = one_node_plan(model, cluster, schedule="interleaved-1f1b", sizes=[2] * 8, ranks=4,
                       virtual_stages=2)
    validate_plan(il, model=model, cluster=cluster)

    def refused(plan: Plan, field: str, needle: str) -> None:
        with pytest.raises(BadInputError) as exc:
            validate_plan(plan, model=model, cluster=cluster, source="p.json")
        assert exc.value.field == field and needle in exc.value.message
        assert exc.value.file == "p.json" and exc.value.fix

    stages = list(il.stages)
    refused(replace(il, stages=(*stages[:5], replace(stages[5], rank=2), *stages[6:])),
            "stages[5].rank", "runs stage 5 on rank 1")
    moved = replace(stages[5], replicas=(Replica("fast", (2,), 1),))
    refused(replace(il, stages=(*stages[:5], moved, *stages[6:])), "stages[5].replicas",
            "virtual stages of rank 1")
    # The same stages under a one-stage-per-rank schedule share devices: refused.
    refused(replace(il, schedule="1f1b", virtual_stages=1), "stages[4].rank",
            "runs stage 4 on rank 4")
    flat = replace(il, schedule="1f1b", virtual_stages=1,
                   stages=tuple(replace(st, rank=None) for st in il.stages))
    refused(flat, "stages[4].replicas[0].local_indices", "used twice")
    refused(replace(il, micro_batch_count=4, global_batch=10), "micro_batch_count",
            "do not divide")
    refused(replace(il, micro_batch_count=9, global_batch=9), "micro_batch_count", "rounds")
    refused(replace(il, schedule="zigzag"), "schedule", "unknown pipeline schedule")
    refused(replace(il, virtual_stages=3), "stages", "8 stages")


def test_plan_json_records_the_schedule_and_reads_1_0_plans(setup, tmp_path: Path) -> None:
    model, cluster = setup
    il = evaluate_plan(one_node_plan(model, cluster, schedule="interleaved-1f1b",
                                     sizes=[2] * 8, ranks=4, virtual_stages=2),
                       model=model, cluster=cluster)
    data = json.loads(plan_to_json(il))
    assert data["schema_version"] == SCHEMA_VERSION == "1.1"
    assert data["schedule"] == "interleaved-1f1b" and data["virtual_stages"] == 2
    assert [s["rank"] for s in data["stages"]] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert all("bwd_weight_s" in s and "blocking_out" in s
               for s in data["prediction"]["stages"])
    path = tmp_path / "il.json"
    save_plan(il, path)
    assert load_plan(path) == il
    # One stage per rank: no rank in the JSON, as in 1.0.
    one = evaluate_plan(one_node_plan(model, cluster, schedule="1f1b", sizes=[4] * 4, ranks=4),
                        model=model, cluster=cluster)
    old = json.loads(plan_to_json(one))
    assert all("rank" not in s for s in old["stages"])
    # A 1.0 plan: no virtual stages, no ranks, a prediction without the 1.1 stage fields.
    old["schema_version"] = "1.0"
    del old["virtual_stages"]
    for sp in old["prediction"]["stages"]:
        del sp["bwd_weight_s"], sp["blocking_out"]
    loaded = plan_from_dict(old, source="old.json")
    assert loaded.virtual_stages == 1 and loaded.num_ranks == 4
    assert [st.pipeline_rank for st in loaded.stages] == [0, 1, 2, 3]
    assert loaded.prediction is not None
    assert loaded.prediction.stages[0].bwd_weight_s == 0.0
    again = evaluate_plan(loaded, model=model, cluster=cluster)
    assert again.prediction == one.prediction


def test_cli_evaluates_and_reports_an_interleaved_plan(tmp_path: Path, capsys) -> None:
    """A searched plan, re-split by hand into two chunks per rank, goes through evaluate and
    report, and passes the runtime's checks (tests/test_runtime_schedules.py runs such plans)."""
    gpt, small = ROOT / "experiments/models/gpt.py", ROOT / "experiments/clusters/small_2type.yaml"
    plan_file = tmp_path / "plan.json"
    assert main(["search", str(gpt), "-a", "size=tiny", "-c", str(small), "--seq-len", "128",
                 "--global-batch", "16", "--max-stages", "2", "-o", str(plan_file), "-q"]) == 0
    data = json.loads(plan_file.read_text())
    base = data["stages"]
    p, units = len(base), data["model"]["num_layers"]
    if p < 2:
        pytest.skip("the search found a one-stage plan")
    edges = [round(units * k / (2 * p)) for k in range(2 * p + 1)]
    data["schedule"], data["virtual_stages"] = "interleaved-1f1b", 2
    data["stages"] = [dict(base[s % p], index=s, rank=s % p, layer_start=edges[s],
                           layer_end=edges[s + 1], layer_names=[], module_names=[])
                      for s in range(2 * p)]
    data["micro_batch_count"] = 2 * p
    share = data["global_batch"] // data["micro_batch_count"]
    for st in data["stages"]:  # one replica per rank takes the whole micro-batch
        st["replicas"] = [dict(st["replicas"][0], batch_share=share)]
    data.pop("prediction")
    edited = tmp_path / "il.json"
    edited.write_text(json.dumps(data))
    out = tmp_path / "il-costed.json"
    assert main(["evaluate", str(edited), "-o", str(out)]) == 0, capsys.readouterr().err
    costed = load_plan(out)
    assert costed.prediction is not None and costed.virtual_stages == 2
    report = tmp_path / "il.html"
    assert main(["report", str(out), "-o", str(report), "--no-baselines"]) == 0
    assert "R0 · S0+S" in report.read_text()
    from autosplit.runtime.checks import check_plan_shape
    from autosplit.runtime.layout import run_layout

    check_plan_shape(costed, path=str(out))
    assert run_layout(costed).world_size == p
