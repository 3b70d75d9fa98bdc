"""Importing Sailor and Metis profiles (small synthetic files in their formats)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from autosplit.chips.spec import ChipSpec
from autosplit.cli import main
from autosplit.errors import BadInputError
from autosplit.model.ingest import ingest_model
from autosplit.profiler.importers import UnitKinds, import_profiles
from autosplit.profiler.provider import cost_provider_for
from autosplit.profiler.store import read_rows

GPT = str(Path(__file__).resolve().parents[1] / "experiments" / "models" / "gpt.py")


def _sailor_layers(n: int, scale: float) -> dict[str, list[float]]:
    """Layer 0 embedding, 1..n-2 blocks (the first a little slower), n-1 head."""
    layers = {"0": [0.001 * scale, 1e-6, 0.002]}
    for i in range(1, n - 1):
        block = 0.011 if i == 1 else 0.010
        layers[str(i)] = [block * scale, 2 * block * scale, 0.002]
    layers[str(n - 1)] = [0.005 * scale, 0.006 * scale, 0.002]
    return layers


def _write_sailor(root: Path, n: int = 5) -> Path:
    folder = root / "GPT-Test" / "A100-40"
    folder.mkdir(parents=True)
    profile = {"1": {"1": _sailor_layers(n, 1.0), "2": _sailor_layers(n, 0.6)},
               "2": {"1": _sailor_layers(n, 1.9), "2": _sailor_layers(n, 1.1)}}
    (folder / "profile.json").write_text(json.dumps(profile))
    info = {"model": "GPT-Test",
            "1": {"params_floats": [100.0] * n, "act_output_floats": [10.0] + [50.0] * (n - 2)
                  + [80.0]},
            "2": {"params_floats": [50.0] * n, "act_output_floats": [10.0] + [30.0] * (n - 2)
                  + [40.0]}}
    (folder / "llm_info.json").write_text(json.dumps(info))
    return folder


def test_sailor_rows(tmp_path: Path) -> None:
    folder = _write_sailor(tmp_path)
    files = import_profiles(folder, fmt="sailor", output=tmp_path / "out", seq_len=1024)
    assert files == [tmp_path / "out" / "a100-40" / "measured"
                     / "imported-sailor-GPT-Test-s1024-bf16.csv"]
    rows = {(r.layer_kind, r.micro_batch, r.tp): r for r in read_rows(files[0])}
    assert len(rows) == 3 * 2 * 2
    block = rows[("GPT-Test:block", 1, 1)]
    assert block.fwd_s == pytest.approx(0.010)  # median over blocks, not the odd first one
    assert block.bwd_s == pytest.approx(0.020)
    assert math.isnan(block.recompute_bwd_s) and math.isnan(block.peak_bwd_bytes)
    assert block.activation_bytes == pytest.approx(50.0 * 2)  # floats x bf16 bytes x mb 1
    assert rows[("GPT-Test:block", 2, 1)].activation_bytes == pytest.approx(50.0 * 2 * 2)
    assert rows[("GPT-Test:post", 2, 2)].fwd_s == pytest.approx(0.005 * 1.1)
    assert rows[("GPT-Test:pre", 1, 1)].bwd_s == pytest.approx(1e-6)
    assert block.chip == "A100-40" and block.method == "imported-sailor"


def test_sailor_with_model_kinds_feeds_the_provider(tmp_path: Path) -> None:
    model = ingest_model(GPT, model_args={"size": "tiny"}, seq_len=64, dtype="bf16")
    folder = _write_sailor(tmp_path, n=model.num_layers)
    units = UnitKinds.from_model(GPT, model_args={"size": "tiny"}, seq_len=64, dtype="bf16")
    out = tmp_path / "out"
    import_profiles(folder, fmt="sailor", output=out, seq_len=64, units=units)
    costs = cost_provider_for(model=model, chips=["A100-40"], extra_dirs=[out])
    chip = ChipSpec(name="A100-40", vendor="NVIDIA", tflops_bf16=312, tflops_fp16=312,
                    tflops_fp32=19.5, memory_gb=40, memory_bw_gbs=1555,
                    intra_node_link="nvlink", intra_node_bw_gbs=300, collective_library="nccl")
    timing = costs.layer_timing(model.layers[2], chip, micro_batch=2, tp=1, dtype="bf16")
    assert timing.source == "measured"
    assert timing.fwd_s == pytest.approx(0.010 * 1.9)
    assert timing.recompute_s == pytest.approx(timing.fwd_s)  # Sailor has no recompute


def test_sailor_errors(tmp_path: Path) -> None:
    folder = _write_sailor(tmp_path)
    with pytest.raises(BadInputError, match="sequence length"):
        import_profiles(folder, fmt="sailor", output=tmp_path / "o")
    (folder / "profile.json").write_text('{"1": {"1": {"0": [1, 1], "2": [1, 1]}}}')
    with pytest.raises(BadInputError, match="without gaps"):
        import_profiles(folder, fmt="sailor", output=tmp_path / "o", seq_len=8)
    (folder / "profile.json").write_text('{"x": {}}')
    with pytest.raises(BadInputError, match="not an integer"):
        import_profiles(folder, fmt="sailor", output=tmp_path / "o", seq_len=8)
    (folder / "profile.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        import_profiles(folder, fmt="sailor", output=tmp_path / "o", seq_len=8)
    with pytest.raises(BadInputError, match="unknown format"):
        import_profiles(folder, fmt="amp", output=tmp_path / "o", seq_len=8)
    assert not (tmp_path / "o").exists()


def _metis(tp: int, bs: int, times: list[float]) -> dict:
    n = len(times)
    return {"model": {"model_name": "GPT3", "num_layers": n,
                      "parameters": {"total_parameters_bytes": 1000 * n,
                                     "parameters_per_layer_bytes": [1000] * n}},
            "execution_time": {"total_time_ms": sum(times), "layer_compute_total_ms": times,
                               "optimizer_time_ms": 1.0},
            "execution_memory": {"total_memory": 100, "layer_memory_total_mb": [10] * (n - 1)}}


def test_metis_rows_and_cli(tmp_path: Path) -> None:
    src = tmp_path / "metis"
    src.mkdir()
    for tp, bs in ((1, 1), (1, 2), (2, 2)):
        times = [0.3] + [30.0 * bs / tp] * 3 + [0.4 * bs]
        (src / f"DeviceType.A100_tp{tp}_bs{bs}.json").write_text(json.dumps(_metis(tp, bs,
                                                                                   times)))
    (src / "README.txt").write_text("not a profile")
    out = tmp_path / "out"
    assert main(["profile-import", str(src), "--format", "metis", "--seq-len", "2048",
                 "-o", str(out)]) == 0
    files = sorted(out.rglob("*.csv"))
    assert [f.name for f in files] == ["imported-metis-GPT3-s2048-bf16.csv"]
    rows = {(r.layer_kind, r.micro_batch, r.tp): r for r in read_rows(files[0])}
    assert len(rows) == 3 * 3
    block = rows[("GPT3:block", 2, 2)]
    assert block.fwd_s + block.bwd_s == pytest.approx(0.030)
    assert block.bwd_s == pytest.approx(2 * block.fwd_s)  # 1 : 2 split, recorded in method
    assert block.method == "imported-metis-split-1:2" and block.chip == "A100"
    assert math.isnan(block.activation_bytes)
    assert "profile-import" in block.command


def test_metis_errors(tmp_path: Path) -> None:
    src = tmp_path / "m"
    src.mkdir()
    bad = _metis(1, 1, [1.0, 2.0, 3.0])
    bad["model"]["num_layers"] = 4
    (src / "DeviceType.V100_tp1_bs1.json").write_text(json.dumps(bad))
    with pytest.raises(BadInputError, match="num_layers"):
        import_profiles(src, fmt="metis", output=tmp_path / "o", seq_len=8)
    del bad["execution_time"]
    (src / "DeviceType.V100_tp1_bs1.json").write_text(json.dumps(bad))
    with pytest.raises(BadInputError) as err:
        import_profiles(src, fmt="metis", output=tmp_path / "o", seq_len=8)
    assert err.value.field == "execution_time.layer_compute_total_ms"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["profile-import", str(empty), "--format", "metis", "--seq-len", "8",
                 "-o", str(tmp_path / "o")]) == 2
