"""The profiler on the CPU: end to end on a tiny model, the store, and the measured provider.

Timing on a shared CI machine is noisy, so timing checks are structural (positive, finite,
ordered by the work they do, same order of magnitude on a rerun); memory, which is
deterministic, is checked tightly against ingestion's estimate.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from autosplit.chips.spec import ChipSpec
from autosplit.cli import main
from autosplit.cluster.schema import Node
from autosplit.errors import BadInputError
from autosplit.model.ingest import ingest_model
from autosplit.profiler.calibrate import calibrated_chip
from autosplit.profiler.capture import LinearShape
from autosplit.profiler.chip_bench import BenchResult, ChipBenchSettings, run_chip_bench
from autosplit.profiler.device import DeviceHandle, open_device
from autosplit.profiler.layer_bench import ProfileSettings, profile_model
from autosplit.profiler.provider import MeasuredCosts, cost_provider_for, interpolate
from autosplit.profiler.status import profile_notes
from autosplit.profiler.store import ProfileRow, read_rows, write_rows
from autosplit.profiler.timing import time_piece
from autosplit.profiler.tp_estimate import shard_linear
from autosplit.protocols.cost import LayerTiming

GPT = str(Path(__file__).resolve().parents[1] / "experiments" / "models" / "gpt.py")
ARGS = {"size": "tiny", "layers": "2"}
SEQ = 32
CHIP = "cpu-test"


def _chip(name: str = CHIP) -> ChipSpec:
    return ChipSpec(name=name, vendor="test", tflops_bf16=1.0, tflops_fp16=1.0,
                    tflops_fp32=0.5, memory_gb=16, memory_bw_gbs=20, intra_node_link="pcie",
                    intra_node_bw_gbs=10, collective_library="gloo")


@pytest.fixture(scope="module")
def ingested():
    return ingest_model(GPT, model_args=ARGS, seq_len=SEQ, dtype="fp32")


@pytest.fixture(scope="module")
def profiled(tmp_path_factory, ingested) -> Path:
    """One CLI run on the CPU: 3 unit kinds x 2 micro-batches x 2 TP degrees."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("prof") / CHIP / "measured" / "gpt.csv"
    code = main(["profile", GPT, "--device", "cpu", "--chip", CHIP, "--micro-batch", "1,4",
                 "--tp", "1,2", "--seq-len", str(SEQ), "--dtype", "fp32", "--model-arg",
                 "size=tiny", "--model-arg", "layers=2", "--repeats", "5", "--warmup", "1",
                 "--max-rounds", "2", "--threads", "1", "-o", str(out)])
    assert code == 0
    return out


def test_profile_file_validates_and_has_every_kind(profiled: Path, ingested) -> None:
    rows = read_rows(profiled)
    kinds = {u.layer_kind for u in ingested.layers}
    assert {r.layer_kind for r in rows} == kinds
    assert len(rows) == len(kinds) * 2 * 2
    for row in rows:
        assert row.chip == CHIP and row.seq_len == SEQ and row.dtype == "fp32"
        assert row.fwd_s > 0 and row.bwd_s > 0 and row.recompute_bwd_s > 0
        assert row.repeats == 5 and "autosplit profile" in row.command and row.date
        assert row.rounds in (1, 2) and row.timer == "host-clock"
        assert row.rounds == 2 or row.spread <= 0.03  # a noisy first set is taken again
        assert row.model_fingerprint == ingested.fingerprint
    methods = {r.unit: r.method for r in rows if r.tp == 1}
    assert methods["blocks.0"] == "direct"
    assert methods["post"] == "chain"  # ln_f then head reproduce the model's output
    assert methods["pre"] == "hollow-minus-post"  # wte(ids) + wpe(pos) is not a chain
    assert all(r.method.endswith("+linear-shards") for r in rows if r.tp == 2)


def test_measured_activation_memory_matches_ingestion(profiled: Path, ingested) -> None:
    rows = [r for r in read_rows(profiled) if r.tp == 1]
    by_unit = {u.name: u for u in ingested.layers}
    for row in rows:
        estimate = by_unit[row.unit].activation_bytes * row.micro_batch
        if row.unit in ("blocks.0", "post"):
            assert row.activation_bytes == pytest.approx(estimate, rel=0.05), row.unit
        assert row.activation_bytes > 0
    assert all(math.isnan(r.activation_bytes) for r in read_rows(profiled) if r.tp == 2)


def test_activation_memory_scales_with_micro_batch(profiled: Path) -> None:
    rows = {(r.unit, r.micro_batch, r.tp): r for r in read_rows(profiled)}
    small, large = rows[("blocks.0", 1, 1)], rows[("blocks.0", 4, 1)]
    assert large.activation_bytes == pytest.approx(4 * small.activation_bytes, rel=0.01)
    assert large.peak_bwd_bytes > small.peak_bwd_bytes


def test_provider_uses_measured_rows_and_falls_back(profiled: Path, ingested) -> None:
    costs = cost_provider_for(model=ingested, chips=[CHIP], extra_dirs=[profiled.parents[2]])
    block = ingested.layers[1]
    timing = costs.layer_timing(block, _chip(), micro_batch=4, tp=1, dtype="fp32")
    row = next(r for r in read_rows(profiled)
               if r.unit == "blocks.0" and r.micro_batch == 4 and r.tp == 1)
    assert timing.source == "measured"
    assert timing.fwd_s == pytest.approx(row.fwd_s)
    assert timing.bwd_s == pytest.approx(row.bwd_s)
    assert timing.recompute_s == pytest.approx(max(row.recompute_bwd_s - row.bwd_s, 0.0))
    # Every block shares the kind measured on blocks.0.
    assert costs.layer_timing(ingested.layers[2], _chip(), micro_batch=4, tp=1,
                              dtype="fp32").fwd_s == pytest.approx(row.fwd_s)
    # Another chip, dtype, TP degree or layer kind: the analytic roofline.
    assert costs.layer_timing(block, _chip("other"), micro_batch=4, tp=1,
                              dtype="fp32").source == "analytic"
    assert costs.layer_timing(block, _chip(), micro_batch=4, tp=1,
                              dtype="bf16").source == "analytic"
    assert costs.layer_timing(block, _chip(), micro_batch=4, tp=8,
                              dtype="fp32").source == "analytic"
    # Another structure (more work): the analytic roofline; the same structure under another
    # layer kind (the model imported from elsewhere): the measurement.
    other = type(block)(**{**block.__dict__, "fwd_flops": 2 * block.fwd_flops, "name": "x"})
    assert costs.layer_timing(other, _chip(), micro_batch=4, tp=1,
                              dtype="fp32").source == "analytic"
    moved = type(block)(**{**block.__dict__, "layer_kind": "elsewhere", "name": "x"})
    assert costs.layer_timing(moved, _chip(), micro_batch=4, tp=1,
                              dtype="fp32").source == "measured"


def test_profiling_twice_agrees_loosely() -> None:
    torch.set_num_threads(1)
    seq = 64
    model = ingest_model(GPT, model_args=ARGS, seq_len=seq, dtype="fp32")
    settings = ProfileSettings(micro_batches=(1, 8), tps=(1,), seq_len=seq, dtype="fp32",
                               repeats=5, warmup=2)
    runs = [profile_model(GPT, model_args=ARGS, settings=settings, handle=open_device("cpu"),
                          chip=CHIP, command="test", profile=model) for _ in range(2)]
    first, second = ({(r.unit, r.micro_batch): r for r in rows} for rows in runs)
    assert first.keys() == second.keys()
    for key, a in first.items():
        assert a.activation_bytes == second[key].activation_bytes  # memory is exact
    for rows in (first, second):
        # Eight times the tokens: more time, by a margin far above the noise of a busy machine.
        small, large = rows[("blocks.0", 1)], rows[("blocks.0", 8)]
        assert (large.fwd_s + large.bwd_s + large.recompute_bwd_s
                > small.fwd_s + small.bwd_s + small.recompute_bwd_s)
    a, b = first[("blocks.0", 8)], second[("blocks.0", 8)]
    assert 0.1 < (a.fwd_s + a.bwd_s) / (b.fwd_s + b.bwd_s) < 10.0  # same order of magnitude


def test_interpolation_across_micro_batches() -> None:
    points = [(1, 1.0), (4, 2.5)]
    assert interpolate(points, 1) == 1.0
    assert interpolate(points, 2) == pytest.approx(1.5)
    assert interpolate(points, 3) == pytest.approx(2.0)
    assert interpolate(points, 8) == pytest.approx(5.0)  # proportional beyond the range
    assert interpolate([(2, 1.0), (4, 2.0)], 1) == pytest.approx(0.5)


def _row(mb: int, fwd: float, *, kind: str = "k", tp: int = 1, chip: str = CHIP) -> ProfileRow:
    return ProfileRow(chip=chip, model_fingerprint="", layer_kind=kind, unit="blocks.0",
                      seq_len=SEQ, micro_batch=mb, tp=tp, dtype="fp32", fwd_s=fwd,
                      bwd_s=2 * fwd, recompute_bwd_s=3 * fwd, activation_bytes=1.0,
                      peak_bwd_bytes=2.0, repeats=3, spread=0.0, method="direct", device="x",
                      command="c", date="d")


def test_measured_costs_interpolate(ingested) -> None:
    layer = type(ingested.layers[1])(**{**ingested.layers[1].__dict__, "layer_kind": "k"})
    costs = MeasuredCosts([_row(1, 1.0), _row(4, 2.5)], seq_len=SEQ)
    timing = costs.layer_timing(layer, _chip(), micro_batch=2, tp=1, dtype="fp32")
    assert timing == LayerTiming(fwd_s=pytest.approx(1.5), bwd_s=pytest.approx(3.0),
                                 recompute_s=pytest.approx(1.5), source="measured",
                                 backward_extra_bytes=pytest.approx(1.0))
    assert costs.layer_timing(layer, _chip(), micro_batch=8, tp=1,
                              dtype="fp32").fwd_s == pytest.approx(5.0)


def test_measured_backward_peak_sets_the_working_set(ingested) -> None:
    # A last unit whose backward needs far more than it saved (an fp32 cross-entropy: its
    # gradient buffers are twice its saved log-softmax): the stage's memory carries the
    # measured excess, not the saved-bytes estimate, with and without recomputation.
    from autosplit.cost.stage import build_tables

    last = ingested.layers[-1]
    share, extra = 2, 5e6
    rows = [ProfileRow(chip=CHIP, model_fingerprint=ingested.fingerprint,
                       layer_kind=last.layer_kind, unit=last.name, seq_len=SEQ, micro_batch=share,
                       tp=1, dtype="fp32", fwd_s=1e-3, bwd_s=2e-3, recompute_bwd_s=3e-3,
                       activation_bytes=share * last.activation_bytes,
                       peak_bwd_bytes=share * last.activation_bytes + extra, repeats=3,
                       spread=0.0, method="chain", device="x", command="c", date="d")]
    node = Node(name="n", chip=CHIP, devices=1, intra_link="pcie", intra_bw_gbs=10,
                nic_bw_gbs=10)
    n = len(ingested.layers)

    def tables(costs):
        return build_tables(model=ingested, chip=_chip(), node=node, tp=1, share=share,
                            costs=costs, dtype="fp32")

    measured = tables(MeasuredCosts(rows, seq_len=SEQ, model=ingested))
    analytic = tables(MeasuredCosts([], seq_len=SEQ, model=ingested))
    assert share * measured.range_working_set(n - 1, n) == pytest.approx(extra)
    assert share * measured.range_working_set(n - 1, n, True) == pytest.approx(
        extra + share * last.activation_bytes)
    # Units without a measurement keep the estimate: what they saved.
    assert analytic.range_working_set(1, 2) == measured.range_working_set(1, 2) == (
        ingested.layers[1].activation_bytes)
    assert analytic.range_working_set(n - 1, n) == last.activation_bytes


def test_store_round_trip_and_validation(tmp_path: Path) -> None:
    path = write_rows([_row(2, 1.0), _row(1, 0.5)], tmp_path / "p.csv")
    rows = read_rows(path)
    assert [r.micro_batch for r in rows] == [1, 2]  # sorted for stable diffs
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file
    text = path.read_text()
    for bad, column in ((text.replace(",fp32,", ",fp8,"), "dtype"),
                        (text.replace(",0.5,", ",-0.5,", 1), "fwd_s")):
        broken = tmp_path / f"bad-{column}.csv"
        broken.write_text(bad)
        with pytest.raises(BadInputError) as err:
            read_rows(broken)
        assert err.value.field == column
    missing = tmp_path / "missing.csv"
    missing.write_text("chip,layer_kind\nx,y\n")
    with pytest.raises(BadInputError, match="missing column"):
        read_rows(missing)


def test_tp_sharding_rule() -> None:
    wide = LinearShape(rows=8, in_features=64, out_features=256, bias=True)
    narrow = LinearShape(rows=8, in_features=256, out_features=64, bias=True)
    assert shard_linear(wide, 4).out_features == 64 and shard_linear(wide, 4).in_features == 64
    assert shard_linear(narrow, 4).in_features == 64 and shard_linear(narrow, 4).out_features == 64
    assert shard_linear(wide, 1) == wide


def test_chip_bench_and_calibration() -> None:
    handle = open_device("cpu")
    settings = ChipBenchSettings(gemm_sizes=(64, 128), gemm_dtypes=("fp32",),
                                 copy_bytes=1 << 20, host_copy_bytes=0, repeats=3, warmup=1)
    results = run_chip_bench(handle, chip=CHIP, settings=settings, command="test")
    assert [r.benchmark for r in results] == ["gemm", "gemm", "copy"]
    assert all(r.rate > 0 and r.seconds > 0 for r in results)

    def bench(kind: str, rate: float) -> BenchResult:
        return BenchResult(chip="X", benchmark=kind, dtype="bf16", size=8192, seconds=1.0,
                           rate=rate, unit="", repeats=3, spread=0.0, device="Dev",
                           command="cmd", date="today")

    measured = [replace(bench("workspace", 0.0), size=67_108_864), bench("gemm", 500.0),
                bench("copy", 3000.0), bench("h2d", 50.0), bench("d2h", 40.0)]
    base = {"name": "X", "tflops_bf16": 1000.0, "memory_bw_gbs": 4000.0,
            "compute_efficiency": 0.9}
    chip = calibrated_chip(measured, chip="X", base=base, command="cmd")
    assert chip["compute_efficiency"] == pytest.approx(0.5)
    assert chip["memory_efficiency"] == pytest.approx(0.75)
    assert chip["host_bw_gbs"] == pytest.approx(40.0)
    assert chip["workspace_mb"] == pytest.approx(67.109)
    assert chip["provenance"]["compute_efficiency"]["confidence"] == "measured"
    assert "cmd" in chip["provenance"]["compute_efficiency"]["source"]
    fresh = calibrated_chip(measured, chip="X", base=None, command="cmd")
    assert fresh["tflops_bf16"] == pytest.approx(500.0) and fresh["compute_efficiency"] == 1.0


def test_bad_cli_input_is_a_clean_error(tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    assert main(["profile", GPT, "--micro-batch", "a", "-o", str(out)]) == 2
    assert main(["profile", GPT, "--device", "nosuchdevice", "-o", str(out)]) == 2
    assert main(["profile", str(tmp_path / "missing.py"), "-o", str(out)]) == 2
    assert not out.exists()
    with pytest.raises(BadInputError):
        open_device("cuda:99") if not torch.cuda.is_available() else open_device("bogus")


# ---- profiles that survive edits of the model file ---------------------------------------


def _edited_copy(tmp_path: Path, *, old: str = "", new: str = "") -> str:
    """gpt.py copied elsewhere (its classes get another module name, so another layer_kind)
    with a comment added and ``old`` replaced by ``new``."""
    text = Path(GPT).read_text()
    assert old in text
    path = tmp_path / "edited" / "gpt.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Reviewed: nothing here changes the work a block does.\n"
                    + text.replace(old, new, 1))
    return str(path)


def test_editing_a_comment_still_finds_the_profiles(profiled: Path, ingested,
                                                    tmp_path: Path) -> None:
    edited = ingest_model(_edited_copy(tmp_path), model_args=ARGS, seq_len=SEQ, dtype="fp32")
    assert edited.fingerprint != ingested.fingerprint
    assert {u.layer_kind for u in edited.layers[1:-1]} != {u.layer_kind
                                                            for u in ingested.layers[1:-1]}
    costs = cost_provider_for(model=edited, chips=[CHIP], extra_dirs=[profiled.parents[2]])
    assert all(costs.covers(u, _chip(), tp=1, dtype="fp32") for u in edited.layers)
    assert costs.mismatches == ()
    # Without the structure key (rows as written before it) the edit orphans them.
    rows = [replace(r, structure="") for r in read_rows(profiled)]
    legacy = MeasuredCosts(rows, seq_len=SEQ, model=edited)
    assert not legacy.covers(edited.layers[1], _chip(), tp=1, dtype="fp32")


def test_a_profile_that_no_longer_matches_is_named(profiled: Path, tmp_path: Path) -> None:
    positions = '"tiny": (4, 128, 4, 512, 2048)'
    path = _edited_copy(tmp_path, old=positions, new=positions.replace("2048", "1024"))
    changed = ingest_model(path, model_args=ARGS, seq_len=SEQ, dtype="fp32")
    costs = cost_provider_for(model=changed, chips=[CHIP], extra_dirs=[profiled.parents[2]])
    assert not costs.covers(changed.layers[0], _chip(), tp=1, dtype="fp32")
    assert costs.covers(changed.layers[1], _chip(), tp=1, dtype="fp32")  # blocks unchanged
    (mismatch,) = costs.mismatches
    assert mismatch.file == profiled and mismatch.chip == CHIP and mismatch.rows == 4
    assert "unit pre changed (params 327680 → 196608" in mismatch.reason
    (line,) = profile_notes(costs)
    assert str(profiled) in line and "autosplit profile" in line
    assert f"-o {profiled}" in line and "--dtype fp32" in line


def test_a_profile_of_another_dtype_is_named(profiled: Path) -> None:
    bf16 = ingest_model(GPT, model_args=ARGS, seq_len=SEQ, dtype="bf16")
    costs = cost_provider_for(model=bf16, chips=[CHIP], extra_dirs=[profiled.parents[2]])
    (mismatch,) = costs.mismatches
    assert mismatch.rows == len(read_rows(profiled))
    assert mismatch.reason == "rows are fp32, the model is costed in bf16 (--dtype)"
    assert "--dtype bf16" in mismatch.fix and "--model-arg=size=tiny" in mismatch.fix
    # Another model entirely: its profiles are none of this search's business.
    other = ingest_model(GPT, model_args={"size": "tiny", "layers": "3"}, seq_len=16,
                         dtype="bf16")
    assert cost_provider_for(model=other, chips=[CHIP],
                             extra_dirs=[profiled.parents[2]]).mismatches == ()


# ---- noisy measurements are taken again ------------------------------------------------


#: A virtual clock: pieces below advance it by the seconds they are meant to take, so the
#: timing logic is tested exactly, whatever else the machine is doing.
_CLOCK = [0.0]


class _ClockedCPU(DeviceHandle):
    """The CPU, read through the virtual clock."""

    def now(self) -> float:
        return _CLOCK[0]


class _Takes(torch.autograd.Function):
    """Identity whose forward takes the given seconds and whose backward takes 20 ms."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, seconds: float) -> torch.Tensor:  # noqa: ANN001
        _CLOCK[0] += seconds
        return x * 1.0

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        _CLOCK[0] += 0.02
        return grad, None


def _timed_forward(seconds: list[float]):
    """A differentiable piece whose forward takes the next of ``seconds`` (then the last)."""
    weight = torch.ones(4, requires_grad=True)
    calls = [0]

    def forward() -> torch.Tensor:
        took = seconds[min(calls[0], len(seconds) - 1)]
        calls[0] += 1
        return _Takes.apply(weight, took).sum()

    return forward, weight


def test_a_noisy_set_of_runs_is_taken_again_until_steady() -> None:
    noisy = [0.01, 0.05, 0.01, 0.05]  # spread of the first set: far above 3 %
    forward, weight = _timed_forward([*noisy, 0.03])
    handle = _ClockedCPU(device=torch.device("cpu"), backend=None)
    times = time_piece(handle, forward, params=[weight], warmup=0, repeats=4,
                       recompute=False, max_spread=0.03, max_rounds=4)
    assert times.rounds == 2 and times.spread <= 0.03
    assert times.fwd_s == pytest.approx(0.03) and times.bwd_s == pytest.approx(0.02)
    assert times.timer == "host-clock"


def test_a_set_that_stays_noisy_is_reported_with_its_rounds(tmp_path: Path) -> None:
    forward, weight = _timed_forward([0.01, 0.04] * 20)
    handle = _ClockedCPU(device=torch.device("cpu"), backend=None)
    times = time_piece(handle, forward, params=[weight], warmup=0, repeats=4,
                       recompute=False, max_spread=0.03, max_rounds=3)
    assert times.rounds == 3 and times.spread > 0.03
    row = ProfileRow(chip=CHIP, model_fingerprint="", layer_kind="k", unit="blocks.0",
                     seq_len=SEQ, micro_batch=1, tp=1, dtype="fp32", fwd_s=times.fwd_s,
                     bwd_s=times.bwd_s, recompute_bwd_s=math.nan, activation_bytes=math.nan,
                     peak_bwd_bytes=math.nan, repeats=times.repeats, spread=times.spread,
                     method="direct", device="cpu", command="test", date="",
                     rounds=times.rounds, timer=times.timer)
    from autosplit.cli.profile_cmd import noisy_rows

    (line,) = noisy_rows([row, replace(row, tp=2)], max_spread=0.03)
    assert line.startswith("blocks.0 mb=1: spread ") and "after 3 round(s) of 4 runs" in line
    path = write_rows([row], tmp_path / "noisy.csv")
    (back,) = read_rows(path)
    assert back.rounds == 3 and back.timer == "host-clock"


# ---- the load of a training neighbour ----------------------------------------------------


def test_profile_load_trains_until_the_stop_file(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    from autosplit.profiler.load import LoadSettings, run_training_load

    stop = tmp_path / "stop"
    seen: list[int] = []

    def progress(steps: int, seconds: float) -> None:
        seen.append(steps)
        if steps == 3:
            stop.touch()

    ready = tmp_path / "ready"
    report = run_training_load(GPT, model_args=ARGS, handle=open_device("cpu"),
                               settings=LoadSettings(micro_batch=1, seq_len=SEQ, dtype="fp32",
                                                     stop_file=stop, limit_s=60,
                                                     ready_file=ready),
                               progress=progress)
    assert ready.exists() and report.steps == 3 and seen == [1, 2, 3]
    assert report.stopped_by == "stop file"
    assert report.step_s > 0
    # Through the CLI: a time limit, and refusals before any work.
    assert main(["profile-load", GPT, "--device", "cpu", "-a", "size=tiny", "-a", "layers=2",
                 "--seq-len", str(SEQ), "--dtype", "fp32", "--limit", "0.5"]) == 0
    assert "stopped by the time limit" in capsys.readouterr().err
    assert main(["profile-load", GPT, "--device", "cpu", "--until", str(stop)]) == 2
    assert "stop file exists already" in capsys.readouterr().err
    assert main(["profile-load", GPT, "--device", "cpu", "--limit", "nan"]) == 2


def test_profile_records_the_load_it_ran_under(tmp_path: Path) -> None:
    out = tmp_path / "loaded.csv"
    note = "h200-mps33, h200-mps20: profile-load gpt.py size=1.3b mb 2"
    assert main(["profile", GPT, "--device", "cpu", "--chip", CHIP, "--micro-batch", "1",
                 "--seq-len", "16", "--dtype", "fp32", "-a", "size=tiny", "-a", "layers=1",
                 "--repeats", "2", "--warmup", "0", "--max-rounds", "1", "--threads", "1",
                 "--load", note, "-o", str(out)]) == 0
    rows = read_rows(out)
    assert rows and {r.load for r in rows} == {note}
    assert all("--load" in r.command and r.rounds == 1 for r in rows)


@pytest.mark.parametrize("accumulate", [True, False])
def test_timed_backwards_add_into_existing_weight_gradients(accumulate: bool) -> None:
    """Training's micro-batches after the first add into the weight gradients; the profile
    times that backward by default, and the first micro-batch's with ``accumulate=False``.
    The hook runs before autograd stores the new gradient, so it sees what was there."""
    handle = open_device("cpu")
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    seen: list[bool] = []
    layer.weight.register_hook(lambda g: seen.append(layer.weight.grad is not None))
    time_piece(handle, lambda: layer(x), params=list(layer.parameters()), leaves=[x],
               warmup=1, repeats=4, recompute=True, accumulate=accumulate)
    timed = seen[2:]  # the warm-up's backward and its recompute backward come first
    assert len(timed) == 8
    assert all(timed) if accumulate else not any(timed)
    assert layer.weight.grad is None and x.grad is None  # nothing left behind
