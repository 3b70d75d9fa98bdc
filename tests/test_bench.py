"""The benchmark suite: loading, the brute-force yardsticks, the regression check and the CLI."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from factories import gpt_like_model, objective_of, two_type_cluster

from autosplit.bench.baselines import baseline_times, restrict_to_chip
from autosplit.bench.check import EXIT_REGRESSION, compare, read_baseline
from autosplit.bench.exhaustive import exhaustive_optimum
from autosplit.bench.runner import SABOTAGE_ENV, results_frame, run_suite
from autosplit.bench.suite import load_suite
from autosplit.bench.table import to_csv, to_markdown
from autosplit.cli import main
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.errors import BadInputError
from autosplit.search.engine import search_plan

REPO = Path(__file__).resolve().parents[1]
GPT = REPO / "experiments" / "models" / "gpt.py"
SMALL = REPO / "experiments" / "clusters" / "small_2type.yaml"


def _suite(tmp_path: Path, cases: list[dict[str, Any]] | None = None, **top: Any) -> Path:
    data: dict[str, Any] = {
        "name": "t",
        "defaults": {"global_batch": 8, "seq_len": 512},
        "cases": cases if cases is not None else [
            {"name": "a", "model": str(GPT), "model_args": {"size": "125m", "layers": 8},
             "cluster": str(SMALL)},
            {"name": "b", "model": str(GPT), "model_args": {"size": "tiny", "layers": 6},
             "cluster": str(SMALL), "global_batch": 16,
             "options": {"max_stages": 2, "tp_degrees": [1, 2]},
             "baselines": ["uniform", "tflops"]},
        ],
    }
    data.update(top)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ---- suite files ---------------------------------------------------------------------------


def test_shipped_suites_load() -> None:
    for name in ("quick.yaml", "suite.yaml"):
        suite = load_suite(REPO / "experiments" / "bench" / name)
        assert suite.cases and suite.reference in {c.name for c in suite.cases}


def test_quick_suite_matches_committed_baseline_cases() -> None:
    suite = load_suite(REPO / "experiments" / "bench" / "quick.yaml")
    base = read_baseline(REPO / "experiments" / "bench" / "baseline.csv")
    assert sorted(base["name"]) == sorted(c.name for c in suite.cases)


def test_suite_fields_reach_the_configs(tmp_path: Path) -> None:
    suite = load_suite(_suite(tmp_path, reference="b"))
    b = suite.case("b")
    assert suite.reference == "b"
    assert b.training.global_batch == 16 and b.training.seq_len == 512
    assert b.search.max_stages == 2 and b.search.tp_degrees == (1, 2)
    assert b.baselines == ("uniform", "tflops")
    assert b.model_args == {"layers": "6", "size": "tiny"}
    assert suite.case("a").training.global_batch == 8


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d["cases"][0].update(colour="red"), "cases[0].colour"),
    (lambda d: d["cases"][0].pop("model"), "cases[0].model"),
    (lambda d: d["cases"][0].update(model="nope.py"), "cases[0].model"),
    (lambda d: d["cases"][0].update(global_batch=0), "cases[0].global_batch"),
    (lambda d: d["cases"][0].update(options={"tp": [1]}), "cases[0].options.tp"),
    (lambda d: d["cases"][0].update(options={"dtype": "int4"}), "cases[0].options.dtype"),
    (lambda d: d["cases"][0].update(baselines=["magic"]), "cases[0].baselines"),
    (lambda d: d["cases"][1].update(name="a"), "cases[1].name"),
    (lambda d: d.update(reference="zzz"), "reference"),
    (lambda d: d.update(cases=[]), "cases"),
])
def test_bad_suites_name_the_field(tmp_path: Path, mutate, field: str) -> None:
    path = _suite(tmp_path)
    data = yaml.safe_load(path.read_text())
    mutate(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(BadInputError) as err:
        load_suite(path)
    assert err.value.field == field


# ---- brute force ---------------------------------------------------------------------------


def test_brute_force_baseline_is_the_exhaustive_optimum() -> None:
    model = gpt_like_model(blocks=4, hidden=1024, seq=1024)
    cluster = two_type_cluster(fast=2, slow=2, shared_collectives=True)
    training = TrainingConfig(global_batch=8, seq_len=1024)
    search = SearchConfig()
    plan = search_plan(model=model, cluster=cluster, training=training, search=search)
    base = baseline_times(plan, kinds=("brute_force",), model=model, cluster=cluster,
                          training=training, search=search, costs=AnalyticCosts())
    best = exhaustive_optimum(model=model, cluster=cluster, training=training, search=search)
    # Both minimise the closed form; the plan's prediction is its schedule's simulation.
    assert base.brute_force == best.iteration_s <= objective_of(plan, model, cluster) * (1 + 1e-9)
    for other, kw in ((cluster, {"search": replace(search, target="megatron")}),
                      (two_type_cluster(fast=8, slow=8), {"search": search})):
        skipped = baseline_times(plan, kinds=("brute_force",), model=model, cluster=other,
                                 training=training, costs=AnalyticCosts(), **kw)
        assert math.isnan(skipped.brute_force)  # a target, or too big to enumerate


def test_restrict_to_chip_keeps_only_that_chip() -> None:
    sub = restrict_to_chip(two_type_cluster(fast=2, slow=4), "SLOW")
    assert sub.num_devices == 4 and sub.chip_types() == ["SLOW"] and list(sub.chips) == ["SLOW"]


# ---- the regression check ------------------------------------------------------------------


def _frame(**over: list) -> pd.DataFrame:
    base = {"name": ["ref", "x"], "iteration_s": [1.0, 2.0], "search_cpu_s": [1.0, 0.5],
            "time_ratio": [1.0, 0.5], "error": ["", ""]}
    base.update(over)
    return pd.DataFrame(base)


def test_check_passes_on_identical_and_small_changes() -> None:
    assert not [f for f in compare(_frame(), _frame()) if f.failed]
    near = _frame(iteration_s=[1.0, 2.0 * 1.009], time_ratio=[1.0, 0.99])
    assert not [f for f in compare(near, _frame()) if f.failed]


def test_check_fails_on_worse_plan_slower_search_or_lost_plan() -> None:
    worse = compare(_frame(iteration_s=[1.0, 2.0 * 1.02]), _frame())
    assert [(f.case, f.what) for f in worse if f.failed] == [("x", "plan")]
    slower = compare(_frame(search_cpu_s=[1.0, 1.5], time_ratio=[1.0, 1.5]), _frame())
    assert [(f.case, f.what) for f in slower if f.failed] == [("x", "time")]
    lost = compare(_frame(iteration_s=[1.0, math.nan], error=["", "no split fits"]), _frame())
    assert [(f.case, f.what) for f in lost if f.failed] == [("x", "error")]


def test_check_ignores_noise_below_the_time_floor_and_notes_suite_changes() -> None:
    tiny = _frame(search_cpu_s=[1.0, 0.01], time_ratio=[1.0, 0.01])
    fast = _frame(search_cpu_s=[1.0, 0.15], time_ratio=[1.0, 0.15])
    assert not [f for f in compare(fast, tiny) if f.failed]
    # a 1 s case against a 0.25 s reference: the reference is too short to judge the ratio by
    short_ref = _frame(search_cpu_s=[0.25, 1.0], time_ratio=[1.0, 4.0])
    assert not [f for f in compare(short_ref, _frame()) if f.failed]
    extra = pd.concat([_frame(), _frame(name=["new", "y"])], ignore_index=True)
    kinds = {(f.case, f.what, f.failed) for f in compare(extra.iloc[[0, 2]], _frame())}
    assert ("new", "new", False) in kinds and ("x", "missing", False) in kinds


def test_read_baseline_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "b.csv"
    bad.write_text("name,iteration_s\na,1\n")
    with pytest.raises(BadInputError, match="time_ratio"):
        read_baseline(bad)
    with pytest.raises(BadInputError, match="not found"):
        read_baseline(tmp_path / "missing.csv")


def test_markdown_marks_oom_and_not_applicable() -> None:
    df = _frame(vs_uniform=[math.inf, 1.5], vs_tflops=[math.nan, 1.25])
    md = to_markdown(df)
    assert "OOM" in md and "–" in md and "1.50×" in md
    assert pd.read_csv(pd.io.common.StringIO(to_csv(df)))["iteration_s"].tolist() == [1.0, 2.0]


# ---- end to end ----------------------------------------------------------------------------


def test_run_suite_fills_ratios_and_baselines(tmp_path: Path) -> None:
    results = run_suite(load_suite(_suite(tmp_path)))
    df = results_frame(results)
    assert list(df["name"]) == ["a", "b"]
    assert df.loc[0, "time_ratio"] == 1.0
    assert (df["iteration_s"] > 0).all() and (df["vs_uniform"] >= 1 - 1e-9).all()
    assert df.loc[0, "vs_uniform"] > 1.2  # the heterogeneous split matters here
    # The exhaustive optimum of the whole schema (10 units, 8 devices): never slower.
    assert 0 < df.loc[0, "vs_brute_force"] <= 1 + 1e-9
    assert math.isnan(df.loc[1, "vs_brute_force"])  # not asked for


def test_cli_update_then_check_passes_and_sabotage_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    suite = _suite(tmp_path)
    base = tmp_path / "baseline.csv"
    assert main(["bench", str(suite), "--check", str(base), "--update", "-q"]) == 0
    assert main(["bench", str(suite), "--check", str(base), "-q",
                 "-o", str(tmp_path / "r.csv"), "--markdown", str(tmp_path / "r.md")]) == 0
    assert "bench check passed" in capsys.readouterr().out
    assert (tmp_path / "r.md").read_text().startswith("| case |")
    monkeypatch.setenv(SABOTAGE_ENV, "plan")
    assert main(["bench", str(suite), "--check", str(base), "-q"]) == EXIT_REGRESSION
    assert "FAIL a (plan)" in capsys.readouterr().out


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    assert main(["bench", str(tmp_path / "none.yaml"), "-q"]) == 2
    assert main(["bench", str(_suite(tmp_path)), "--update", "-q"]) == 2
    assert main(["bench", str(_suite(tmp_path)), "-k", "zzz", "-q"]) == 2
