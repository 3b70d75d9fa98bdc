"""Tests of ``autosplit report``: the timeline (the cost model's simulation of the plan's
schedule), the HTML page, static charts, the terminal summary and the command.

Plans are built by hand (``example_plan``: H100 → Ascend 910B → H100, every field set) so the
page can be checked figure by figure; one test also reports a plan the search produced.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from autosplit.cli import main
from autosplit.cost.schedule import get_schedule
from autosplit.cost.schedule_sim import stage_times_from_prediction
from autosplit.errors import BadInputError
from autosplit.plan.schema import (
    Alternative,
    ClusterRef,
    MemoryBreakdown,
    ModelRef,
    Plan,
    Prediction,
    Replica,
    SearchStats,
    StagePlan,
    StagePrediction,
)
from autosplit.report import render_report, write_report
from autosplit.report.fmt import fmt_bytes, fmt_pct, fmt_ratio, fmt_seconds, fmt_signed_pct
from autosplit.report.static import write_static_charts
from autosplit.report.terminal import render_plan_summary
from autosplit.report.timeline import bubble_share, plan_timeline

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------
# example plans
# ---------------------------------------------------------------------------------------

MS = 1e-3
GB = 1e9
NUM_UNITS = 26  # pre, layers.0 … layers.23, post


def unit_names(start: int, end: int) -> tuple[str, ...]:
    names = ["embed"] + [f"layers.{i}" for i in range(NUM_UNITS - 2)] + ["head"]
    return tuple(names[start:end])


def _stage_pred(index: int, *, fwd: float, bwd: float, rec: float, tp: float, p2p_in: float,
                p2p_out: float, blocking_in: bool, blocking_out: bool, weights: float,
                act: float, capacity: float, in_flight: int) -> StagePrediction:
    busy = fwd + bwd + rec + tp + (2 * p2p_in if blocking_in else 0.0) + (
        2 * p2p_out if blocking_out else 0.0)
    return StagePrediction(
        index=index, fwd_s=fwd, bwd_s=bwd, recompute_s=rec, tp_comm_s=tp, p2p_in_s=p2p_in,
        p2p_out_s=p2p_out, busy_s=busy, dp_allreduce_s=30 * MS, optimizer_s=10 * MS,
        memory=MemoryBreakdown(weights=weights, gradients=weights, optimizer=6 * weights,
                               activations=act, reserve=2 * GB, capacity=capacity),
        in_flight=in_flight, bwd_weight_s=bwd / 2, blocking_out=blocking_out)


def example_plan(*, schedule: str = "1f1b", blocking: bool = True,
                 micro_batches: int = 16) -> Plan:
    """H100 (tp2×dp2) → Ascend 910B (tp4, recompute, measured) → H100 (tp2×dp2)."""
    stages = (
        StagePlan(index=0, chip="H100", layer_start=0, layer_end=10,
                  layer_names=unit_names(0, 10),
                  module_names=("tok_embeddings",) + tuple(f"layers.{i}" for i in range(9)),
                  tp=2, replicas=(Replica("h100-a", (0, 1), 2), Replica("h100-a", (2, 3), 2)),
                  recompute=False),
        StagePlan(index=1, chip="Ascend910B", layer_start=10, layer_end=18,
                  layer_names=unit_names(10, 18),
                  module_names=tuple(f"layers.{i}" for i in range(9, 17)),
                  tp=4, replicas=(Replica("ascend-a", (0, 1, 2, 3), 4),), recompute=True,
                  cost_source="measured"),
        StagePlan(index=2, chip="H100", layer_start=18, layer_end=26,
                  layer_names=unit_names(18, 26),
                  module_names=tuple(f"layers.{i}" for i in range(17, 24)) + ("norm", "output"),
                  tp=2, replicas=(Replica("h100-a", (4, 5), 2), Replica("h100-a", (6, 7), 2)),
                  recompute=False),
    )
    preds = (
        _stage_pred(0, fwd=20 * MS, bwd=40 * MS, rec=0.0, tp=6 * MS, p2p_in=0.0,
                    p2p_out=4 * MS, blocking_in=False, blocking_out=blocking,
                    weights=1.6 * GB, act=21.0 * GB, capacity=80 * GB, in_flight=3),
        _stage_pred(1, fwd=16 * MS, bwd=32 * MS, rec=16 * MS, tp=6 * MS, p2p_in=4 * MS,
                    p2p_out=4 * MS, blocking_in=blocking, blocking_out=blocking,
                    weights=1.4 * GB, act=44.5 * GB, capacity=64 * GB, in_flight=2),
        _stage_pred(2, fwd=18 * MS, bwd=36 * MS, rec=0.0, tp=6 * MS, p2p_in=4 * MS,
                    p2p_out=0.0, blocking_in=blocking, blocking_out=False,
                    weights=1.9 * GB, act=6.2 * GB, capacity=80 * GB, in_flight=1),
    )
    # Iteration, pipeline and bubble as ``cost.predict`` fills them: from the simulation.
    sim = get_schedule(schedule).simulate(stage_times_from_prediction(preds), micro_batches)
    total = sim.makespan_s
    tokens = 64 * 2048
    pred = Prediction(
        iteration_s=total, tokens_per_s=tokens / total, samples_per_s=64 / total, mfu=0.3812,
        pipeline_s=sim.pipeline_s, bubble_s=sim.bubble_s, dp_sync_s=30 * MS,
        optimizer_s=10 * MS, bottleneck_stage=1, stages=preds)
    return Plan(
        model=ModelRef(name="gpt-1.3b", source_file="experiments/models/gpt.py",
                       fingerprint="abc123", num_layers=NUM_UNITS, params=1_310_000_000,
                       seq_len=2048, dtype="bf16", tokens_per_sample=2048, block_list="layers",
                       model_args={"size": "1.3b"}),
        cluster=ClusterRef(name="h100+910b", source_file="experiments/clusters/x.yaml",
                           num_devices=16, chips=("H100", "Ascend910B")),
        global_batch=64, micro_batch_count=micro_batches, schedule=schedule, zero1=False,
        stages=stages, prediction=pred,
        idle_devices=("ascend-a:4", "ascend-a:5", "ascend-a:6", "ascend-a:7"),
        idle_note="Using all 16 devices is 4.1% slower (stage 1 memory-bound).",
        search=SearchStats(time_s=3.21, explored=18_422, pruned={"memory": 9_120, "bound": 7_310},
                           level1_candidates=64, exact_solves=211, solver="dp",
                           lower_bound_s=total * 0.97, optimality_gap=0.0309,
                           notes=("stage order fixed by chip speed",)),
        alternatives=(Alternative(summary="H100 tp4 → 910B tp4", iteration_s=total * 1.06,
                                  ratio_to_best=1.06,
                                  stages=({"layer_start": 0, "layer_end": 14},
                                          {"layer_start": 14, "layer_end": 26})),),
    )


def slower_variant(plan: Plan, *, factor: float, bounds: tuple[int, ...]) -> Plan:
    """The same devices with other layer bounds and a prediction ``factor`` times slower."""
    assert plan.prediction is not None
    edges = (0, *bounds, NUM_UNITS)
    stages = tuple(replace(st, layer_start=edges[i], layer_end=edges[i + 1],
                           layer_names=unit_names(edges[i], edges[i + 1]), recompute=False)
                   for i, st in enumerate(plan.stages))
    pred = plan.prediction
    new_pred = replace(pred, iteration_s=pred.iteration_s * factor,
                       tokens_per_s=pred.tokens_per_s / factor, mfu=pred.mfu / factor)
    return replace(plan, stages=stages, prediction=new_pred, alternatives=())


def baselines_for(plan: Plan) -> list[tuple[str, Plan]]:
    return [("uniform split", slower_variant(plan, factor=1.31, bounds=(9, 18))),
            ("TFLOPS-proportional split", slower_variant(plan, factor=1.12, bounds=(11, 17)))]


MEASURED = {"step_time_s": 1.62, "unknown_key": [1, 2],
            "per_rank": [{"rank": 0, "stage": 0, "peak_memory_bytes": 27e9},
                         {"rank": 1, "stage": 0, "peak_memory_bytes": 28e9},
                         {"rank": 4, "stage": 1, "peak_memory_bytes": 55e9, "extra": "x"}]}


# ---------------------------------------------------------------------------------------
# the timeline is the cost model's simulation (schedules themselves: tests/test_schedule.py)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("blocking", [True, False])
def test_stage_times_from_prediction_keep_busy_time(blocking: bool) -> None:
    plan = example_plan(blocking=blocking)
    assert plan.prediction is not None
    times = stage_times_from_prediction(plan.prediction.stages)
    for st, sp in zip(times, plan.prediction.stages, strict=True):
        assert st.fwd_s + st.bwd_s == pytest.approx(sp.busy_s)
        assert st.recompute_s == sp.recompute_s
        assert st.wgt_s == sp.bwd_weight_s
    if blocking:  # the CPU relay: both stages carry the transfer, nothing is left in flight
        assert [t.p2p_next_s for t in times] == [0.0, 0.0, 0.0]
        assert [(t.recv_s, t.send_s) for t in times] == [(0, 4 * MS), (4 * MS, 4 * MS),
                                                         (4 * MS, 0)]
    else:
        assert [t.p2p_next_s for t in times] == [4 * MS, 4 * MS, 0.0]
        assert all(t.recv_s == t.send_s == 0 for t in times)


@pytest.mark.parametrize(("schedule", "m"), [("1f1b", 16), ("gpipe", 16), ("zb-h1", 8)])
def test_one_bubble_figure_on_the_page_and_in_the_terminal(schedule: str, m: int) -> None:
    """The summary card, the timeline's verdict and the terminal summary print the same
    bubble, and the timeline drawn is the one the prediction was made from."""
    plan = example_plan(schedule=schedule, micro_batches=m)
    pred = plan.prediction
    assert pred is not None
    timeline = plan_timeline(plan)
    assert timeline is not None
    assert timeline.pipeline_s == pytest.approx(pred.pipeline_s)
    assert timeline.makespan_s == pytest.approx(pred.iteration_s)
    assert timeline.bubble_fraction() == pytest.approx(bubble_share(pred))
    figure = fmt_pct(bubble_share(pred))
    html = render_report(plan)
    card = re.search(r'Pipeline bubble</div><div class="v">([^<]+)<', html)
    assert card is not None and card.group(1) == figure
    assert f"Pipeline bubble: <b>{figure}</b>" in html
    console = Console(record=True, width=160)
    render_plan_summary(plan, console)
    assert f"bubble {figure}" in console.export_text()


def test_timeline_draws_the_simulation_events() -> None:
    plan = example_plan(micro_batches=5)
    timeline = plan_timeline(plan)
    assert timeline is not None
    html = render_report(plan)
    for iv in timeline.intervals:
        if iv.kind in ("F", "B"):
            name = "forward" if iv.kind == "F" else "backward"
            assert (f"stage {iv.stage} {name} of micro-batch {iv.micro_batch}: "
                    f"{fmt_seconds(iv.start_s)} → {fmt_seconds(iv.end_s)}") in html


# ---------------------------------------------------------------------------------------
# the HTML page
# ---------------------------------------------------------------------------------------

_FETCHING = re.compile(r"""(?:src|href|xlink:href|action|poster|data)\s*=\s*["']?\s*(?!#)"""
                       r"""([a-z][a-z0-9+.-]*:|//)""", re.I)


def assert_offline(html: str) -> None:
    """Nothing in the page can make the browser fetch anything."""
    assert "http://" not in html and "https://" not in html
    assert not _FETCHING.search(html), _FETCHING.search(html)
    for tag in ("<script", "<link", "<img", "<iframe", "<object", "<embed", "@import",
                "url("):
        assert tag not in html.lower(), tag


def test_report_shows_every_stage_layer_and_figure(tmp_path: Path) -> None:
    plan = example_plan()
    out = tmp_path / "report.html"
    write_report(plan, out, baselines=baselines_for(plan), measured=MEASURED)
    html = out.read_text(encoding="utf-8")
    data = json.loads(json.dumps(plan.to_dict()))  # the figures as the plan JSON has them
    pred = data["prediction"]
    assert fmt_seconds(pred["iteration_s"]) in html
    for st, sp in zip(data["stages"], pred["stages"], strict=True):
        assert f"S{st['index']}" in html
        assert st["chip"] in html
        for name in st["layer_names"]:
            assert re.search(rf"\b{re.escape(name)}\b", html), name
        for name in st["module_names"]:
            assert name in html
        mem = sp["memory"]
        total = sum(mem[k] for k in ("weights", "gradients", "optimizer", "activations",
                                     "workspace", "reserve"))
        assert f"{fmt_bytes(total)} / {fmt_bytes(mem['capacity'])}" in html
        assert fmt_seconds(sp["busy_s"]) in html
        assert f"{st['layer_start']}–{st['layer_end'] - 1}" in html
    # cluster map: every used and idle device is drawn
    for dev in data["idle_devices"]:
        assert f"{dev} — idle" in html
    assert "h100-a:0–1 | 2–3" in html and "ascend-a:0–3" in html
    # bottleneck, recompute, cost source
    assert "Bottleneck: <b>stage 1</b>" in html
    assert "measured" in html and "1 of 3 stages use measured profiles" in html
    # baselines and alternatives with ratios
    assert "uniform split" in html and "TFLOPS-proportional split" in html
    assert fmt_ratio(1.31) in html and fmt_ratio(1.12) in html and fmt_ratio(1.06) in html
    assert "1.31× faster than the uniform split" in html
    # search statistics
    assert "18,422" in html and "3.09%" in html and "9,120 memory" in html
    # measured vs predicted
    assert fmt_signed_pct((pred["iteration_s"] - 1.62) / 1.62) in html
    s0_pred = sum(pred["stages"][0]["memory"][k] for k in (
        "weights", "gradients", "optimizer", "activations"))
    assert fmt_signed_pct((s0_pred - 28e9) / 28e9) in html
    assert "ranks 0, 1" in html
    assert_offline(html)
    assert len(html) < 400_000


def test_every_svg_is_well_formed(tmp_path: Path) -> None:
    html = render_report(example_plan(), baselines=baselines_for(example_plan()))
    svgs = re.findall(r"<svg .*?</svg>", html, re.S)
    assert len(svgs) == 4
    for svg in svgs:
        ET.fromstring(svg)  # raises on malformed markup


def test_timeline_draws_every_pass() -> None:
    plan = example_plan(micro_batches=5)
    html = render_report(plan)
    for s in range(3):
        for k in range(5):
            assert f"stage {s} forward of micro-batch {k}:" in html
            assert f"stage {s} backward of micro-batch {k}:" in html
    assert "stage 5 forward" not in html
    assert "weight gradient of micro-batch" not in html
    split = render_report(example_plan(schedule="zb-h1", micro_batches=8))
    for s in range(3):
        for k in range(8):
            assert f"stage {s} weight gradient (split backward) of micro-batch {k}:" in split


def test_gpipe_plan_and_overlapping_links_render() -> None:
    plan = example_plan(schedule="gpipe", blocking=False)
    html = render_report(plan)
    assert "<b>gpipe</b>" in html
    assert "S0→S1 activations, micro-batch 0" in html  # transfers drawn between the rows
    assert "S2→S1 gradients, micro-batch 15" in html
    assert_offline(html)


def test_plan_without_prediction_still_renders() -> None:
    plan = replace(example_plan(), prediction=None)
    html = render_report(plan, baseline_note="Baselines not shown: model file moved.")
    assert "carries no prediction" in html
    assert "Baselines not shown: model file moved." in html
    assert "layers.16" in html
    assert_offline(html)


def test_memory_over_capacity_is_flagged() -> None:
    plan = example_plan()
    assert plan.prediction is not None
    stages = list(plan.prediction.stages)
    stages[1] = replace(stages[1], memory=replace(stages[1].memory, activations=70e9))
    bad = replace(plan, prediction=replace(plan.prediction, stages=tuple(stages)))
    html = render_report(bad)
    assert '<td class="bad">NO</td>' in html
    assert "no: S1 over by" in html


def test_write_report_is_atomic_and_rejects_bad_measured(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    for bad in ({"per_rank": []}, {"step_time_s": "fast"}, {"step_time_s": -1},
                {"step_time_s": 1, "per_rank": [{"rank": 0}]}, [1, 2]):
        with pytest.raises(BadInputError):
            write_report(example_plan(), out, measured=bad)  # type: ignore[arg-type]
        assert not out.exists()
    write_report(example_plan(), out)
    assert out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


# ---------------------------------------------------------------------------------------
# static charts and terminal summary
# ---------------------------------------------------------------------------------------

def test_static_svg_export(tmp_path: Path) -> None:
    result = write_static_charts(example_plan(), tmp_path / "charts", png=False)
    names = sorted(p.name for p in result.svg)
    assert names == ["cluster_map.svg", "memory.svg", "stage_times.svg", "timeline.svg"]
    for path in result.svg:
        root = ET.parse(path).getroot()
        assert root.tag.endswith("svg")
        assert float(root.get("width", "0")) > 0 and float(root.get("height", "0")) > 0
    assert result.png == ()


def test_terminal_summary() -> None:
    plan = example_plan()
    console = Console(record=True, width=140)
    render_plan_summary(plan, console, baselines=baselines_for(plan))
    text = console.export_text()
    assert plan.prediction is not None
    for st, sp in zip(plan.stages, plan.prediction.stages, strict=True):
        row = next(line for line in text.splitlines() if line.startswith(f"S{st.index} "))
        assert st.chip in row and f"{st.tp}×{st.dp}" in row and fmt_seconds(sp.busy_s) in row
        assert f"{sp.memory.total / 1e9:.1f} / {fmt_bytes(sp.memory.capacity)}" in row
    assert f"iteration {fmt_seconds(plan.prediction.iteration_s)}" in text
    assert "bottleneck: stage 1 (Ascend910B" in text
    assert "idle devices (4): ascend-a:4" in text
    assert "optimality gap 3.09%" in text
    assert "uniform split" in text and "1.31×" in text and "alternative:" in text
    narrow = Console(record=True, width=80)
    render_plan_summary(plan, narrow)
    assert all(len(line) <= 80 for line in narrow.export_text().splitlines())
    assert "…" not in narrow.export_text()


# ---------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------

def _save(plan: Plan, path: Path) -> Path:
    from autosplit.plan.io import save_plan

    save_plan(plan, path)
    return path


def test_cli_report_without_reachable_model_says_so(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    plan_file = _save(example_plan(), tmp_path / "plan.json")
    out = tmp_path / "out" / "report.html"
    measured = tmp_path / "m.json"
    measured.write_text(json.dumps(MEASURED))
    code = main(["report", str(plan_file), "-o", str(out), "--measured", str(measured),
                 "--svg-dir", str(tmp_path / "svg")])
    assert code == 0
    html = out.read_text(encoding="utf-8")
    assert "Baselines not shown" in html and "--model/--cluster" in html
    assert "Predicted vs measured" in html
    assert (tmp_path / "svg" / "timeline.svg").exists()
    assert (tmp_path / "svg" / "memory.svg").exists()
    assert "report written to" in capsys.readouterr().out


def test_cli_report_bad_inputs_exit_2_without_output(tmp_path: Path) -> None:
    plan_file = _save(example_plan(), tmp_path / "plan.json")
    out = tmp_path / "report.html"
    bad = tmp_path / "m.json"
    bad.write_text('{"step_time_s": ')
    assert main(["report", str(plan_file), "-o", str(out), "--measured", str(bad),
                 "--no-baselines"]) == 2
    assert not out.exists()
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    assert main(["report", str(broken), "-o", str(out), "--no-baselines"]) == 2
    assert main(["report", str(tmp_path / "missing.json"), "-o", str(out)]) == 2
    assert not out.exists()


def test_report_of_a_searched_plan(tmp_path: Path) -> None:
    """End to end: search the tiny GPT on the two-type cluster, then report it."""
    plan_file = tmp_path / "plan.json"
    code = main(["search", str(ROOT / "experiments/models/gpt.py"), "--model-arg", "size=tiny",
                 "--cluster", str(ROOT / "experiments/clusters/small_2type.yaml"),
                 "-o", str(plan_file), "--quiet"])
    if code != 0:
        pytest.fail(f"search failed with exit code {code}")
    out = tmp_path / "report.html"
    assert main(["report", str(plan_file), "-o", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    data = json.loads(plan_file.read_text())
    assert fmt_seconds(data["prediction"]["iteration_s"]) in html
    for st, sp in zip(data["stages"], data["prediction"]["stages"], strict=True):
        for name in st["layer_names"]:
            assert name in html
        mem = sp["memory"]
        total = sum(mem[k] for k in ("weights", "gradients", "optimizer", "activations",
                                     "workspace", "reserve"))
        assert mem["workspace"] > 0  # the chip's library workspace is counted
        assert f"{fmt_bytes(total)} / {fmt_bytes(mem['capacity'])}" in html
    assert "uniform split" in html and "TFLOPS-proportional split" in html
    assert "Baselines not shown" not in html
    assert_offline(html)


def test_cli_report_unwritable_target_is_a_clean_error(tmp_path: Path) -> None:
    plan_file = _save(example_plan(), tmp_path / "plan.json")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert main(["report", str(plan_file), "-o", str(folder), "--no-baselines"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "plan.json"]
    assert list(folder.iterdir()) == []


def test_many_micro_batches_get_a_close_up() -> None:
    few = render_report(example_plan(micro_batches=16))
    many = render_report(example_plan(micro_batches=64))
    assert "Close-up" not in few and few.count("<svg") == 4
    assert "Close-up" in many and many.count("<svg") == 5
    for svg in re.findall(r"<svg .*?</svg>", many, re.S):
        ET.fromstring(svg)


def test_report_reads_the_file_autosplit_run_writes(tmp_path: Path) -> None:
    runtime = ROOT / "experiments" / "runtime"
    plan_file = runtime / "plan_searched_70_20_mb1.json"
    measured = json.loads((runtime / "results" / "gpt2p7b_70_20_mb1" /
                           "measured_searched_70_20_mb1.json").read_text())
    warmup = measured["warmup"]
    for r in measured["ranks"]:  # per-stage compute, as newer runs record it
        r["compute_s"] = [5.0] * warmup + [0.9 + 0.1 * r["stage"]] * (
            len(measured["step_times_s"]) - warmup)
    m_file = tmp_path / "m.json"
    m_file.write_text(json.dumps(measured))
    out = tmp_path / "r.html"
    assert main(["report", str(plan_file), "-o", str(out), "--measured", str(m_file),
                 "--no-baselines"]) == 0
    text = re.sub(r"<[^>]+>", " ", out.read_text(encoding="utf-8"))
    assert "Predicted vs measured" in text
    assert fmt_seconds(measured["median_step_s"]) in text
    assert "S0 compute per step" in text and fmt_seconds(0.9) in text
    assert "S1 peak memory" in text and fmt_bytes(measured["ranks"][1]["peak_memory_bytes"]) \
        in text
    # CPU runs' memory (resident set growth) is not the GPU allocator's: not compared.
    for r in measured["ranks"]:
        r["memory_kind"] = "cpu_rss_growth"
    m_file.write_text(json.dumps(measured))
    assert main(["report", str(plan_file), "-o", str(out), "--measured", str(m_file),
                 "--no-baselines"]) == 0
    text = re.sub(r"<[^>]+>", " ", out.read_text(encoding="utf-8"))
    assert fmt_bytes(measured["ranks"][1]["peak_memory_bytes"]) not in text
