"""The plans of experiments/runtime/run_h200x2.sh, made and trained on the CPU over gloo.

That script runs on a two-GPU host that is not always available, so what it does is checked
here with the same code: the chips and clusters written by mps_chips.py (two chips of 100 %
and 33 % of an H200, the measured link between them), the same search options for each of
its three layouts — a two-stage pipeline of the two chips, one stage of TP = 2 over both
devices, one stage of DP = 2 with a replica on each chip — the same layout check
(plan_layout.py) and GPU assignment (mps_rank_env.py), then `autosplit run` with two
processes, compared with single-process training of the unsplit model.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from runtime_support import (
    GPT,
    GPT_ARGS,
    LLAMA,
    LLAMA_ARGS,
    LR,
    REPO,
    SEQ,
    assert_trains_like,
    reference,
    run_and_dump,
)

from autosplit.cli import main

RUNTIME = REPO / "experiments" / "runtime"
SHARES = [100, 33]


def _load(name: str) -> ModuleType:
    """An experiment script as a module (experiments/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"x2_{name}", RUNTIME / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mps_chips = _load("mps_chips")
plan_layout = _load("plan_layout")
mps_rank_env = _load("mps_rank_env")

#: run_h200x2.sh's search options per layout (cluster file, options), with the CPU's sizes:
#: two micro-batches of two samples, or of four for DP so that its shares can be uneven.
LAYOUTS = {
    "pipeline": ("cluster_pipeline.yaml", ["-b", "4", "--tp", "1", "--micro-batch-sizes", "2"]),
    "tp2": ("cluster_tp.yaml", ["-b", "4", "--tp", "2", "--max-stages", "1",
                                "--micro-batch-sizes", "2"]),
    "dp2": ("cluster_dp.yaml", ["-b", "8", "--tp", "1", "--max-stages", "1",
                                "--micro-batch-sizes", "4"]),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pair")
    mps_chips.write_pair(out, "x2", SHARES, mps_chips.Link(bw_gbs=150.0, latency_us=20.0))
    return out


def _search(pair: Path, tmp_path: Path, model: str, args: dict[str, str], layout: str) -> Path:
    cluster, options = LAYOUTS[layout]
    plan = tmp_path / f"plan_{layout}.json"
    margs = [w for k, v in args.items() for w in ("-a", f"{k}={v}")]
    code = main(["search", model, *margs, "--seq-len", str(SEQ), "-c", str(pair / cluster),
                 "--chips-dir", str(pair / "chips"), "--dtype", "fp32", "--schedule", "1f1b",
                 "--no-idle", "-q", *options, "-o", str(plan)])
    assert code == 0
    return plan


def test_the_pair_clusters_carry_the_measured_link(pair: Path) -> None:
    from autosplit.cluster.load import load_cluster

    pipeline = load_cluster(pair / "cluster_pipeline.yaml", chip_dirs=(pair / "chips",))
    link = pipeline.link_between(pipeline.nodes[0], pipeline.nodes[1])
    assert (link.kind, link.bw_gbs, link.latency_s) == ("same_vendor", 150.0,
                                                        pytest.approx(20e-6))
    tp = load_cluster(pair / "cluster_tp.yaml", chip_dirs=(pair / "chips",))
    assert [(n.chip, n.devices, n.intra_bw_gbs) for n in tp.nodes] == [
        ("h200-mps100-x2", 2, 150.0)]
    dp = load_cluster(pair / "cluster_dp.yaml", chip_dirs=(pair / "chips",))
    assert [n.chip for n in dp.nodes] == ["h200-mps100-x2", "h200-mps33-x2"]


@pytest.mark.parametrize("model, args, layout", [
    *[(GPT, GPT_ARGS, layout) for layout in LAYOUTS],
    # Llama's split attention (TP = 2) is trained in tests/test_runtime_layouts.py; here its
    # rotary tables and grouped-query attention on two replicas of different chips.
    (LLAMA, LLAMA_ARGS, "dp2"),
], ids=[f"gpt-{layout}" for layout in LAYOUTS] + ["llama-dp2"])
def test_two_chip_plans_train_like_the_unsplit_model(
        pair: Path, tmp_path: Path, model: str, args: dict[str, str], layout: str) -> None:
    plan = _search(pair, tmp_path, model, args, layout)
    shapes = plan_layout.read_shapes(plan)
    assert plan_layout.layout_problem(shapes, layout) is None, shapes
    # Every rank on the GPU of its chip at the chip's share: GPU 0 holds the 100 % chip, GPU 1
    # the 33 % one, and the TP stage runs on both GPUs at 100 %.
    words = mps_rank_env.rank_env(str(plan), gpu_of_node={"gpu0": 0, "gpu1": 1, "gpu01": 0})
    gpus = words.split()[1].split(",")
    shares = [w.rsplit("=", 1)[1] for w in words.split() if "PERCENTAGE" in w]
    assert len(gpus) == len(shares) == 2
    expected = {"0": "100", "1": "100" if layout == "tp2" else "33"}
    assert sorted(gpus) == ["0", "1"]
    assert all(expected[g] == s for g, s in zip(gpus, shares, strict=True))

    d = json.loads(plan.read_text())
    steps = 2
    measured, got = run_and_dump(tmp_path, str(plan), model, steps)
    assert len(measured["ranks"]) == 2
    ref = reference(model, args, steps=steps, global_batch=d["global_batch"],
                    micro_batches=d["micro_batch_count"])
    # Split layers add partial sums in another order (TP), and uneven shares sum the
    # micro-batch's rows in another order (DP): the gradients are the exact check, the
    # weights agree to 5 % of a step, as in tests/test_runtime_layouts.py.
    assert_trains_like(measured, got, ref, param_atol=0.05 * LR)


# ---- the script's helpers ------------------------------------------------------------------

link_bench = _load("link_bench")
probe_verdict = _load("probe_verdict")
analyse_runs = _load("analyse_runs")


def test_the_link_fit_recovers_latency_and_bandwidth() -> None:
    rows = [link_bench.Row("p2p", n, 12e-6 + n / 80e9) for n in link_bench.SIZES]
    fit = link_bench.fit_alpha_beta(rows, "p2p")
    assert (fit.alpha_us, fit.beta_gbs) == (pytest.approx(12.0), pytest.approx(80.0))
    assert fit.worst_error_pct < 1e-6
    flat = [link_bench.Row("p2p", n, 1e-3) for n in link_bench.SIZES]
    with pytest.raises(ValueError, match="does not grow"):
        link_bench.fit_alpha_beta(flat, "p2p")


def test_the_link_bench_times_two_processes_over_gloo(tmp_path: Path) -> None:
    out = tmp_path / "links.json"
    # As the script runs it: its own interpreter, whose two workers are spawned from the file.
    command = [sys.executable, str(RUNTIME / "link_bench.py"), "--backend", "gloo",
               "--repeats", "3", "--max-mib", "16", "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert {r["kind"] for r in result["rows"]} == {"p2p", "all_reduce"}
    assert result["fits"]["p2p"]["beta_gbs"] > 0
    # The rows of `profile-chip --links` are read back the same way.
    csv = tmp_path / "links.csv"
    csv.write_text("kind,backend,nbytes,seconds\n" + "".join(
        f"{r['kind']},gloo,{r['nbytes']},{r['seconds']!r}\n" for r in result["rows"]))
    again = tmp_path / "again.json"
    assert link_bench.main(["--from-csv", str(csv), "-o", str(again)]) == 0
    assert json.loads(again.read_text())["fits"] == result["fits"]
    csv.write_text("kind,nbytes\n")
    assert link_bench.main(["--from-csv", str(csv), "-o", str(again)]) == 2


def test_a_faulty_or_missing_share_stops_the_run(tmp_path: Path) -> None:
    line = ('{{"mps_percentage": "{p}", "sm_count": 40, "calls": 270, "nonfinite": {bad}, '
            '"wrong": 0, "errors": 0, "first_bad": null}}\n')
    probe = tmp_path / "probe.jsonl"
    probe.write_text(line.format(p=100, bad=0) + line.format(p=33, bad=0))
    assert probe_verdict.main([str(probe), "100", "33"]) == 0
    assert probe_verdict.main([str(probe), "100", "33", "45"]) == 3  # 45 % never answered
    probe.write_text(line.format(p=100, bad=0) + line.format(p=40, bad=204))
    assert probe_verdict.main([str(probe), "100", "40"]) == 3
    probe.write_text("not json\n")
    assert probe_verdict.main([str(probe), "100"]) == 2


def test_bad_shares_are_refused_with_exit_code_2(tmp_path: Path) -> None:
    base = ["pair", "--out", str(tmp_path), "--suffix", "x2", "--link-bw-gbs", "100",
            "--link-latency-us", "5", "--shares"]
    assert mps_chips.main([*base, "100", "120"]) == 2
    assert mps_chips.main([*base, "50", "50"]) == 2
    assert mps_chips.main([*base, "100", "33", "20"]) == 2
    assert mps_chips.main(["trio", "--out", str(tmp_path), "--suffix", "Mix", "--shares",
                           "50", "30"]) == 2
    assert not any(tmp_path.iterdir())


def test_the_analysis_tables_a_run_folder(tmp_path: Path) -> None:
    """A folder as the scripts leave it (a two-stage plan and its uniform split): the table
    carries both plans' figures, the speed-up and the targets."""
    for name, pred, meas in (("gpt_searched", 1.0, 1.04), ("gpt_uniform", 1.5, 1.5)):
        stages = [{"index": i, "chip": c, "layer_start": 3 * i, "layer_end": 3 * i + 3,
                   "tp": 1, "replicas": [{"batch_share": 1, "chip": c}]}
                  for i, c in enumerate(("slow", "fast"))]
        (tmp_path / f"plan_{name}.json").write_text(json.dumps({"stages": stages}))
        (tmp_path / f"measured_{name}.json").write_text(json.dumps({
            "loss": [10.9, 9.7], "ranks": [{"grad_norms": [2.9, 3.1], "notes": []}]}))
        (tmp_path / f"validation_{name}.json").write_text(json.dumps({
            "predicted_iteration_s": pred, "measured_iteration_s": meas,
            "iteration_error_pct": 100 * (pred - meas) / meas, "measured_tokens_per_s": 1e4,
            "stages": [{"stage": i, "chip": c, "predicted_compute_s": 0.5,
                        "measured_compute_s": 0.51, "compute_error_pct": -1.96,
                        "predicted_memory_bytes": 2e10, "measured_memory_bytes": 2.02e10,
                        "memory_error_pct": -0.99} for i, c in enumerate(("slow", "fast"))]}))
    text = analyse_runs.render(tmp_path, analyse_runs.load_runs(tmp_path))
    assert "| gpt_searched | 1000.0 / 1040.0 | -3.8 % |" in text
    assert "measured **1.44x**, predicted 1.50x" in text
    assert "iteration median: 1.9 % (target <= 5 %, met)" in text
    assert "memory worst: 1.0 % (target <= 2 %, met)" in text
    (tmp_path / "validation_gpt_uniform.json").write_text("{}")
    assert analyse_runs.main([str(tmp_path)]) == 2


def test_a_measured_relay_becomes_the_trio_cluster_s_relay(tmp_path: Path) -> None:
    """relay_bench.py's fits, written by ``mps_chips.py trio --relay``: the cost model's three
    hops add up to the measured whole path, and the pair's latency is the measured one."""
    import json

    from autosplit.cluster.load import load_cluster

    fits = {"relay": (180.0, 2.0), "d2h": (40.0, 12.0), "h2d": (30.0, 8.0), "gloo": (35.0, 4.0)}
    bench = tmp_path / "relay.json"
    bench.write_text(json.dumps({"fits": {k: {"kind": k, "alpha_us": a, "beta_gbs": b,
                                               "worst_error_pct": 1.0}
                                           for k, (a, b) in fits.items()}}))
    out = tmp_path / "trio"
    assert mps_chips.main(["trio", "--out", str(out), "--suffix", "mix", "--shares", "50", "30",
                           "15", "--relay", str(bench)]) == 0
    cluster = load_cluster(out / "cluster.yaml", chip_dirs=(out / "chips",))
    a, b = cluster.nodes[0], cluster.nodes[2]
    link = cluster.link_between(a, b)
    assert link.kind == "cpu_relay"
    assert link.bw_gbs == pytest.approx(2.0, rel=1e-3)
    assert link.latency_s == pytest.approx(180e-6)
    # A file that is not the bench's output is refused with exit code 2, naming --relay.
    bench.write_text("{}")
    assert mps_chips.main(["trio", "--out", str(out), "--suffix", "mix", "--shares", "50", "30",
                           "--relay", str(bench)]) == 2


def test_the_relay_fit_leaves_out_messages_above_its_limit(tmp_path: Path) -> None:
    """A 64 MiB copy into fresh host pages runs far slower than the sizes a plan sends; the
    fit (``--fit-max-mib``, 16 by default) must not let it set the bandwidth of every size."""
    import json

    relay_bench = _load("relay_bench")
    rows = []
    for kind, alpha, beta in (("relay", 200e-6, 2.4e9), ("d2h", 40e-6, 13e9),
                              ("h2d", 40e-6, 13e9), ("gloo", 40e-6, 4e9)):
        for n in relay_bench.SIZES:
            slow = 10.0 if n > 16 * 2**20 and kind in ("relay", "d2h") else 1.0
            rows.append({"kind": kind, "nbytes": n, "seconds": alpha + slow * n / beta})
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"shares": [30, 15], "load": [50], "device": "cuda",
                               "rows": rows}))
    new = tmp_path / "new.json"
    assert relay_bench.main(["--refit", str(old), "-o", str(new)]) == 0
    fit = json.loads(new.read_text())["fits"]["relay"]
    assert fit["beta_gbs"] == pytest.approx(2.4, rel=1e-6)
    assert fit["alpha_us"] == pytest.approx(200.0, rel=1e-6)
    assert relay_bench.main(["--refit", str(old), "--fit-max-mib", "64", "-o", str(new)]) == 0
    assert json.loads(new.read_text())["fits"]["relay"]["beta_gbs"] < 0.5
    assert relay_bench.main(["--refit", str(tmp_path / "none.json"), "-o", str(new)]) == 2
