"""`autosplit validate`: predicted vs measured, on the recorded H200 experiment's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autosplit.cli import main
from autosplit.plan.io import load_plan, plan_to_json
from autosplit.runtime.measure import load_measured
from autosplit.runtime.validate import compare, error_pct

RUNTIME = Path(__file__).resolve().parents[1] / "experiments" / "runtime"
PLAN = RUNTIME / "plan_searched.json"
MEASURED = RUNTIME / "results" / "measured_searched.json"


def test_error_is_signed_relative_to_the_measurement() -> None:
    assert error_pct(80.0, 100.0) == pytest.approx(-20.0)
    assert error_pct(125.0, 100.0) == pytest.approx(25.0)
    assert error_pct(0.0, 0.0) == 0.0


def test_compare_uses_median_step_and_largest_rank_peak() -> None:
    plan = load_plan(PLAN)
    measured = load_measured(str(MEASURED))
    result = compare(plan, measured)
    assert result.measured_iteration_s == measured.median_step_s
    assert result.predicted_iteration_s == plan.prediction.iteration_s
    expected = 100 * (plan.prediction.iteration_s - measured.median_step_s) \
        / measured.median_step_s
    assert result.iteration_error_pct == pytest.approx(expected)
    assert len(result.stages) == plan.num_stages
    for cmp, stage_pred in zip(result.stages, plan.prediction.stages, strict=True):
        mem = stage_pred.memory
        assert cmp.predicted_memory_bytes == pytest.approx(
            mem.weights + mem.gradients + mem.optimizer + mem.activations)
        peak = max(r.peak_memory_bytes for r in measured.ranks if r.stage == cmp.stage)
        assert cmp.measured_memory_bytes == peak
        assert cmp.memory_error_pct == pytest.approx(
            100 * (cmp.predicted_memory_bytes - peak) / peak)


def test_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "validation.json"
    assert main(["validate", str(PLAN), str(MEASURED), "-o", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["device"] == "cuda" and d["cpu_relay"] is True
    assert [s["stage"] for s in d["stages"]] == [0, 1]


def test_cpu_memory_is_not_compared(tmp_path: Path) -> None:
    d = json.loads(MEASURED.read_text())
    for r in d["ranks"]:
        r["memory_kind"] = "cpu_rss_growth"
    path = tmp_path / "m.json"
    path.write_text(json.dumps(d))
    result = compare(load_plan(PLAN), load_measured(str(path)))
    assert all(s.memory_error_pct is None for s in result.stages)


def test_measurements_of_another_plan_are_refused(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    uniform = RUNTIME / "plan_uniform.json"
    out = tmp_path / "v.json"
    assert main(["validate", str(uniform), str(MEASURED), "-o", str(out)]) == 2
    assert "another plan" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('{"schema": "something-else"}', "not a measured-run file"),
    ('{"schema": "autosplit.measured/1"}', "missing or unexpected field"),
])
def test_malformed_measurements_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            content: str, needle: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    assert main(["validate", str(PLAN), str(path)]) == 2
    assert needle in capsys.readouterr().err


def test_plan_without_prediction_is_refused(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    d = json.loads(plan_to_json(load_plan(PLAN)))
    d["prediction"] = None
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    assert main(["validate", str(path), str(MEASURED)]) == 2
    assert "no prediction" in capsys.readouterr().err


def test_measurements_record_their_precision() -> None:
    # The current run used master weights; files written before the field existed were
    # autocast runs and still load (and validate) as such.
    assert load_measured(str(MEASURED)).precision == "master"
    earlier = load_measured(str(RUNTIME / "results" / "autocast" / "measured_searched.json"))
    assert earlier.precision == "autocast"
    assert compare(load_plan(PLAN), earlier).measured_iteration_s == earlier.median_step_s


def test_per_stage_compute_is_compared_with_the_slowest_rank(tmp_path: Path) -> None:
    d = json.loads(MEASURED.read_text())
    warmup = d["warmup"]
    steps = len(d["step_times_s"])
    for r in d["ranks"]:
        # Warm-up steps are slow and must be left out; stage 1's rank computes 0.5 s a step.
        base = 0.3 if r["stage"] == 0 else 0.5
        r["compute_s"] = [9.0] * warmup + [base + 0.01 * i for i in range(steps - warmup)]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(d))
    plan = load_plan(PLAN)
    result = compare(plan, load_measured(str(path)))
    timed = steps - warmup
    for cmp, sp in zip(result.stages, plan.prediction.stages, strict=True):
        base = 0.3 if cmp.stage == 0 else 0.5
        median = base + 0.01 * (timed - 1) / 2
        assert cmp.measured_compute_s == pytest.approx(median)
        predicted = (sp.fwd_s + sp.bwd_s + sp.recompute_s + sp.tp_comm_s) * \
            plan.micro_batch_count
        assert cmp.predicted_compute_s == pytest.approx(predicted)
        assert cmp.compute_error_pct == pytest.approx(100 * (predicted - median) / median)
    # Files from before the field have no per-stage compute: nothing is compared.
    assert all(s.compute_error_pct is None for s in compare(plan, load_measured(
        str(MEASURED))).stages)


def test_fingerprint_ignores_where_the_plan_file_points_at_its_model() -> None:
    """A plan re-saved in another folder stores its model's path relative to the new place;
    the runtime executes the same thing, so measurements of it still validate. Files written
    when the path was part of the hash (MEASURED) still match the plan they ran."""
    from dataclasses import replace

    from autosplit.runtime.measure import fingerprint_matches, plan_fingerprint

    plan = load_plan(PLAN)
    moved = replace(plan, model=replace(plan.model, source_file="../elsewhere/gpt.py"))
    assert plan_fingerprint(moved) == plan_fingerprint(plan)
    assert fingerprint_matches(plan, load_measured(str(MEASURED)).plan_fingerprint)
    other = load_plan(RUNTIME / "plan_uniform.json")
    assert plan_fingerprint(other) != plan_fingerprint(plan)
