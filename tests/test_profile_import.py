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


def _write_sailor(root: Path, n: int = 5, gpu: str = "A100-40") -> Path:
    """Sailor's layout: Planner/sailor_planner/profiles/<model>/<gpu>/profile.json, and one
    Planner/llm_info.json for every model."""
    folder = root / "Planner" / "sailor_planner" / "profiles" / "GPT-Test" / gpu
    folder.mkdir(parents=True)
    profile = {"1": {"1": _sailor_layers(n, 1.0), "2": _sailor_layers(n, 0.6)},
               "2": {"1": _sailor_layers(n, 1.9), "2": _sailor_layers(n, 1.1)}}
    (folder / "profile.json").write_text(json.dumps(profile))

    def layers(acts: list[float]) -> dict[str, dict[str, float]]:
        return {str(i): {"params_floats": 100.0, "act_mem_floats": a, "act_output_floats": 1.0}
                for i, a in enumerate(acts)}

    info = {"GPT-Test": {"1": layers([10.0] + [50.0] * (n - 2) + [80.0]),
                         "2": layers([10.0] + [30.0] * (n - 2) + [40.0])},
            "OPT-350": {"1": layers([1.0] * 26)}}
    (root / "Planner" / "llm_info.json").write_text(json.dumps(info))
    return folder


def test_sailor_rows(tmp_path: Path) -> None:
    folder = _write_sailor(tmp_path)
    report = import_profiles(folder, fmt="sailor", output=tmp_path / "out", seq_len=1024)
    assert report.files == (tmp_path / "out" / "a100" / "measured"
                            / "imported-sailor-GPT-Test-s1024-bf16.csv",)
    rows = {(r.layer_kind, r.micro_batch, r.tp): r for r in read_rows(report.files[0])}
    assert len(rows) == report.rows == 3 * 2 * 2
    block = rows[("GPT-Test:block", 1, 1)]
    assert block.fwd_s == pytest.approx(0.010)  # median over blocks, not the odd first one
    assert block.bwd_s == pytest.approx(0.020)
    assert math.isnan(block.recompute_bwd_s) and math.isnan(block.peak_bwd_bytes)
    assert block.activation_bytes == pytest.approx(50.0 * 2)  # floats x bf16 bytes x mb 1
    assert rows[("GPT-Test:block", 2, 1)].activation_bytes == pytest.approx(50.0 * 2 * 2)
    assert rows[("GPT-Test:block", 2, 2)].activation_bytes == pytest.approx(30.0 * 2 * 2)
    assert rows[("GPT-Test:post", 2, 2)].fwd_s == pytest.approx(0.005 * 1.1)
    assert rows[("GPT-Test:pre", 1, 1)].bwd_s == pytest.approx(1e-6)
    # Sailor's A100-40 is the library's A100 (rows a search on A100 nodes uses), and says so.
    assert block.chip == "A100" and block.device == "A100-40"
    assert block.method == "imported-sailor"
    notes = " ".join(report.notes)
    assert "'A100-40' is stored as chip 'A100'" in notes and "memory_gb: 40" in notes
    assert str(tmp_path / "Planner" / "llm_info.json") in notes
    assert "--dtype bf16" in notes and "--seq-len 1024" in notes and "--model FILE" in notes


def test_sailor_model_folder_and_missing_llm_info(tmp_path: Path) -> None:
    folder = _write_sailor(tmp_path)
    (tmp_path / "Planner" / "llm_info.json").unlink()
    second = folder.parent / "V100-16"
    second.mkdir()
    (second / "profile.json").write_text((folder / "profile.json").read_text())
    report = import_profiles(folder.parent, fmt="sailor", output=tmp_path / "out",
                             seq_len=1024)
    assert [f.parent.parent.name for f in report.files] == ["a100", "v100"]
    rows = read_rows(report.files[1])
    assert {r.chip for r in rows} == {"V100"} and all(math.isnan(r.activation_bytes)
                                                       for r in rows)
    assert any("no llm_info.json found" in n for n in report.notes)


def test_sailor_unknown_gpu_names_the_fix(tmp_path: Path) -> None:
    folder = _write_sailor(tmp_path, gpu="GH-96")
    with pytest.raises(BadInputError) as info:
        import_profiles(folder, fmt="sailor", output=tmp_path / "out", seq_len=1024)
    text = info.value.render()
    assert "'GH-96'" in text and "aliases" in text and "--chip" in text
    assert not (tmp_path / "out").exists()
    # --chip stores the rows under a library chip (checked against the library too).
    report = import_profiles(folder, fmt="sailor", output=tmp_path / "out", seq_len=1024,
                             chip="h200")
    assert {r.chip for r in read_rows(report.files[0])} == {"H200"}
    with pytest.raises(BadInputError, match="unknown chip 'GH200'"):
        import_profiles(folder, fmt="sailor", output=tmp_path / "o2", seq_len=1024,
                        chip="GH200")


def test_sailor_with_model_kinds_feeds_the_provider(tmp_path: Path) -> None:
    model = ingest_model(GPT, model_args={"size": "tiny"}, seq_len=64, dtype="bf16")
    folder = _write_sailor(tmp_path, n=model.num_layers)
    units = UnitKinds.from_model(GPT, model_args={"size": "tiny"}, seq_len=64, dtype="bf16")
    out = tmp_path / "out"
    import_profiles(folder, fmt="sailor", output=out, seq_len=64, units=units)
    costs = cost_provider_for(model=model, chips=["A100"], extra_dirs=[out])
    chip = ChipSpec(name="A100", vendor="NVIDIA", tflops_bf16=312, tflops_fp16=312,
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
    (folder / "profile.json").write_text('{"1": {"1": {"0": [NaN, 1], "1": [1, 1], '
                                         '"2": [1, 1]}}}')
    with pytest.raises(BadInputError, match="finite seconds"):
        import_profiles(folder, fmt="sailor", output=tmp_path / "o", seq_len=8)
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
    (src / "DeviceType.V100_tp1_bs1.json").write_text("[1, 2]")
    with pytest.raises(BadInputError, match="expected a JSON object"):
        import_profiles(src, fmt="metis", output=tmp_path / "o", seq_len=8)
    (src / "DeviceType.V100_tp1_bs1.json").write_text(json.dumps(_metis(1, 1, [1.0, -2.0, 3.0])))
    with pytest.raises(BadInputError) as err:
        import_profiles(src, fmt="metis", output=tmp_path / "o", seq_len=8)
    assert err.value.field == "execution_time.layer_compute_total_ms[1]"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00binary", b"\xff\xfe\x00x"])
def test_binary_profile_is_exit_2_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   content: bytes) -> None:
    folder = _write_sailor(tmp_path)
    (folder / "profile.json").write_bytes(content)
    rc = main(["profile-import", str(folder), "--format", "sailor", "--seq-len", "8",
               "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "profile.json" in err and "fix:" in err
    assert not (tmp_path / "out").exists()


def test_cli_says_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _write_sailor(tmp_path)
    assert main(["profile-import", str(folder), "--format", "sailor", "--seq-len", "1024",
                 "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "'A100-40' is stored as chip 'A100'" in err and "activation memory from" in err
    assert "12 rows in 1 file(s)" in err


def test_search_and_evaluate_name_imported_rows_of_another_dtype(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = ingest_model(GPT, model_args={"size": "tiny"}, seq_len=64, dtype="bf16")
    folder = _write_sailor(tmp_path, n=model.num_layers)
    out = tmp_path / "chips"
    assert main(["profile-import", str(folder), "--format", "sailor", "--seq-len", "64",
                 "--model", GPT, "-a", "size=tiny", "-o", str(out)]) == 0
    stored = out / "a100" / "measured" / "imported-sailor-GPT-Test-s64-bf16.csv"
    assert all(r.structure for r in read_rows(stored))
    capsys.readouterr()
    cluster = Path(GPT).parents[1] / "clusters" / "small_2type.yaml"
    plan = tmp_path / "plan.json"
    assert main(["search", GPT, "-a", "size=tiny", "-c", str(cluster), "--seq-len", "64",
                 "--dtype", "fp16", "--global-batch", "8", "--tp", "1", "--chips-dir", str(out),
                 "-o", str(plan), "-q"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"profile {stored} (A100, 12 rows) is not used: rows are bf16, the model is costed " \
           "in fp16 (--dtype)" in err
    assert "--dtype fp16 -o " + str(stored.with_name("imported-sailor-GPT-Test-s64-fp16.csv")) \
        in err
    assert main(["evaluate", str(plan), "--json"]) == 0
    assert "rows are bf16, the model is costed in fp16" in capsys.readouterr().err
    # Searched in the dtype the rows were taken in: used, and nothing to say.
    assert main(["search", GPT, "-a", "size=tiny", "-c", str(cluster), "--seq-len", "64",
                 "--global-batch", "8", "--tp", "1", "--chips-dir", str(out), "-o",
                 str(plan), "-q"]) == 0
    assert "is not used" not in capsys.readouterr().err
    stages = json.loads(plan.read_text())["stages"]
    assert {s["cost_source"] for s in stages if s["chip"] == "A100"} <= {"measured"}
