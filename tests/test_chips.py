"""The chip library: shipped chips, user chip folders, and every bad-input message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from autosplit.chips.library import (
    CHIP_KEYS,
    CHIP_PATH_ENV,
    load_chip_library,
    resolve_chip,
)
from autosplit.chips.spec import CONFIDENCE_LEVELS, ChipSpec
from autosplit.cli import main
from autosplit.errors import EXIT_BAD_INPUT, BadInputError

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"

#: The chips the brief promises, by canonical name.
REQUIRED_CHIPS = ("A100", "A800", "H100", "H200", "H20", "L40S", "V100", "MI250X", "MI300X",
                  "Gaudi2", "Ascend910B", "MLU370", "DCU-Z100", "BI-V100")
FIGURES = ("tflops_bf16", "tflops_fp16", "tflops_fp32", "memory_gb", "memory_bw_gbs",
           "intra_node_bw_gbs", "compute_efficiency", "memory_efficiency", "host_bw_gbs")

GOOD_CHIP = {
    "name": "MyChip",
    "vendor": "Acme",
    "tflops_bf16": 200,
    "tflops_fp16": 200,
    "tflops_fp32": 50,
    "memory_gb": 64,
    "memory_bw_gbs": 2000,
    "intra_node_link": "pcie",
    "intra_node_bw_gbs": 32,
    "collective_library": "ACCL",
    "aliases": ["acme-1"],
    "provenance": {"tflops_bf16": {"source": "vendor sheet", "confidence": "medium"}},
}


@pytest.fixture(autouse=True)
def _no_env_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CHIP_PATH_ENV, raising=False)


@pytest.fixture(scope="module")
def library() -> dict[str, ChipSpec]:
    return load_chip_library()


def _write_chip(root: Path, data: object, folder: str = "mychip") -> Path:
    path = root / folder / "chip.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


# ---- shipped chips ---------------------------------------------------------------------


def test_every_required_chip_is_shipped(library: dict[str, ChipSpec]) -> None:
    missing = [name for name in REQUIRED_CHIPS if name not in library]
    assert not missing


def test_every_shipped_chip_folder_loads_and_matches(library: dict[str, ChipSpec]) -> None:
    folders = sorted(p.parent.name for p in PROFILES.glob("*/chip.yaml"))
    assert folders
    assert sorted(c.name.lower() for c in library.values()) == folders
    assert all(f == f.lower() for f in folders)


@pytest.mark.parametrize("name", REQUIRED_CHIPS)
def test_shipped_chip_is_sane_and_sourced(library: dict[str, ChipSpec], name: str) -> None:
    chip = library[name]
    for figure in FIGURES:
        assert getattr(chip, figure) > 0, figure
        assert figure in chip.provenance, f"{name}: no source for {figure}"
    for key, prov in chip.provenance.items():
        assert prov.source.strip(), key
        assert prov.confidence in CONFIDENCE_LEVELS
    assert 0 < chip.compute_efficiency <= 1 and 0 < chip.memory_efficiency <= 1
    assert chip.tflops_fp32 <= max(chip.tflops_bf16, chip.tflops_fp16)
    assert chip.description and chip.vendor and chip.collective_library


def test_nvidia_nvlink_is_per_direction(library: dict[str, ChipSpec]) -> None:
    # NVIDIA quotes the bidirectional total: 900 GB/s for Hopper, 600 for the A100.
    assert library["H100"].intra_node_bw_gbs == pytest.approx(900 / 2)
    assert library["A100"].intra_node_bw_gbs == pytest.approx(600 / 2)
    assert library["A800"].intra_node_bw_gbs < library["A100"].intra_node_bw_gbs


def test_h200_efficiency_is_the_measured_one(library: dict[str, ChipSpec]) -> None:
    h200 = library["H200"]
    assert h200.provenance["compute_efficiency"].confidence == "measured"
    assert 790 / 989 <= h200.compute_efficiency <= 808 / 989 + 0.01


def test_uncertain_vendors_say_so(library: dict[str, ChipSpec]) -> None:
    for name in ("DCU-Z100", "Ascend910B"):
        assert library[name].provenance["tflops_bf16"].confidence == "low"
    assert library["BI-V100"].lowest_confidence == "low"


def test_ratio_of_the_two_type_cluster(library: dict[str, ChipSpec]) -> None:
    ratio = library["H100"].tflops_bf16 / library["A100"].tflops_bf16
    assert 3.1 < ratio < 3.3


# ---- lookup ----------------------------------------------------------------------------


@pytest.mark.parametrize("spelling,expected", [
    ("h100", "H100"), ("H100-SXM", "H100"), ("ascend910b", "Ascend910B"), ("910B", "Ascend910B"),
    ("z100", "DCU-Z100"), ("mi250x", "MI250X"), ("GAUDI2", "Gaudi2"), ("bi-v100", "BI-V100"),
])
def test_resolve_is_case_insensitive_with_aliases(library: dict[str, ChipSpec], spelling: str,
                                                  expected: str) -> None:
    assert resolve_chip(spelling, library).name == expected


def test_unknown_chip_suggests_nearest_and_fix(library: dict[str, ChipSpec]) -> None:
    with pytest.raises(BadInputError) as info:
        resolve_chip("H10O", library, file="c.yaml", field="nodes[0].chip")
    text = info.value.render()
    assert "unknown chip 'H10O'" in text
    assert "'H100'" in text
    assert "profiles/h10o/chip.yaml" in text and "chips:" in text
    assert "c.yaml" in text and "nodes[0].chip" in text


def test_unknown_chip_without_near_names_lists_known(library: dict[str, ChipSpec]) -> None:
    with pytest.raises(BadInputError) as info:
        resolve_chip("zzzzzzzz", library)
    assert "A100" in info.value.fix and "MI300X" in info.value.fix


# ---- user chips ------------------------------------------------------------------------


def test_user_chip_folder_is_picked_up(tmp_path: Path, library: dict[str, ChipSpec]) -> None:
    _write_chip(tmp_path, GOOD_CHIP)
    (tmp_path / "mychip" / "measured.json").write_text("{not yaml at all", encoding="utf-8")
    lib = load_chip_library(extra_dirs=[tmp_path])
    assert set(lib) == set(library) | {"MyChip"}
    chip = resolve_chip("ACME-1", lib)
    assert chip.name == "MyChip" and chip.tflops_bf16 == 200.0
    assert chip.compute_efficiency == ChipSpec.__dataclass_fields__["compute_efficiency"].default
    assert chip.provenance["tflops_bf16"].confidence == "medium"


def test_workspace_is_read_in_megabytes_with_a_documented_default(tmp_path: Path) -> None:
    _write_chip(tmp_path, {**GOOD_CHIP, "workspace_mb": 12.5})
    assert resolve_chip("MyChip", load_chip_library(extra_dirs=[tmp_path])
                        ).workspace_bytes == pytest.approx(12.5e6)
    other = tmp_path / "plain"
    _write_chip(other, GOOD_CHIP)
    default = resolve_chip("MyChip", load_chip_library(extra_dirs=[other])).workspace_bytes
    assert default == 2 * 32 * 2**20  # two 32 MiB cuBLAS workspaces (docs/chips.md)


def test_env_path_and_later_dir_replaces_shipped_chip(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir, user_dir = tmp_path / "env", tmp_path / "user"
    _write_chip(env_dir, GOOD_CHIP)
    recal = {**yaml.safe_load((PROFILES / "h100" / "chip.yaml").read_text()),
             "compute_efficiency": 0.5}
    _write_chip(user_dir, recal, folder="h100")
    monkeypatch.setenv(CHIP_PATH_ENV, str(env_dir))
    lib = load_chip_library(extra_dirs=[user_dir])
    assert "MyChip" in lib
    assert lib["H100"].compute_efficiency == 0.5


def test_env_path_missing_dir_is_reported(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHIP_PATH_ENV, str(tmp_path / "nope"))
    with pytest.raises(BadInputError) as info:
        load_chip_library()
    assert info.value.field == CHIP_PATH_ENV


def test_every_chip_key_is_documented() -> None:
    doc = (REPO / "docs" / "chips.md").read_text(encoding="utf-8")
    assert all(f"`{key}`" in doc for key in CHIP_KEYS)


# ---- bad chip files: Python API and CLI ------------------------------------------------

BAD_CASES = [
    # (file content, expected field, expected words in the message/fix)
    ("name: MyChip\nvendor: [unclosed\n", None, ["line", "YAML syntax"]),
    ("- just\n- a list\n", None, ["mapping"]),
    ({k: v for k, v in GOOD_CHIP.items() if k != "memory_gb"}, "memory_gb",
     ["missing required field", "add `memory_gb"]),
    ({**GOOD_CHIP, "tflops_bf16": -5}, "tflops_bf16", ["greater than 0"]),
    ({**GOOD_CHIP, "memory_bw_gbs": "fast"}, "memory_bw_gbs", ["expected a number"]),
    ({**GOOD_CHIP, "compute_efficiency": 1.5}, "compute_efficiency", ["(0, 1]"]),
    ({**GOOD_CHIP, "tflops_bf61": 3}, "tflops_bf61", ["unknown key", "tflops_bf16"]),
    ({**GOOD_CHIP, "intra_node_link": "nvlnk"}, "intra_node_link", ["nvlink"]),
    ({**GOOD_CHIP, "supports_rdma": "yes please"}, "supports_rdma", ["true or false"]),
    ({**GOOD_CHIP, "provenance": {"tflops_bf16": {"source": "x", "confidence": "sure"}}},
     "provenance.tflops_bf16.confidence", ["measured"]),
    ({**GOOD_CHIP, "provenance": {"tflops": {"source": "x"}}}, "provenance.tflops",
     ["unknown key"]),
    ({**GOOD_CHIP, "name": "Other"}, "name", ["folder", "mychip"]),
    ("name: MyChip\nname: MyChip\n", None, ["given twice"]),
    ({**GOOD_CHIP, "compute_surface": {"gemm": {"bf16": {"peak_fraction": 1.4, "m_half": 64,
                                                         "n_half": 64, "k_half": 64}},
                                       "launch_us": 5, "memory_fraction": 0.9, "source": "x"}},
     "compute_surface.gemm.bf16.peak_fraction", ["(0, 1]"]),
    ({**GOOD_CHIP, "compute_surface": {"gemm": {"int8": {"peak_fraction": 0.5, "m_half": 64,
                                                         "n_half": 64, "k_half": 64}},
                                       "launch_us": 5, "memory_fraction": 0.9, "source": "x"}},
     "compute_surface.gemm.int8", ["bf16"]),
    ({**GOOD_CHIP, "compute_surface": {"gemm": {}, "launch_us": 5, "memory_fraction": 0.9,
                                       "source": "x"}},
     "compute_surface.gemm", ["bf16"]),
    ({**GOOD_CHIP, "intra_node_latency_us": -1}, "intra_node_latency_us", ["0"]),
]


@pytest.mark.parametrize("content,field,words", BAD_CASES)
def test_bad_chip_file_api(tmp_path: Path, content: object, field: str | None,
                           words: list[str]) -> None:
    path = _write_chip(tmp_path, content)
    with pytest.raises(BadInputError) as info:
        load_chip_library(extra_dirs=[tmp_path])
    err = info.value
    assert err.file == str(path)
    assert err.field == field
    assert err.fix
    text = err.render()
    for word in words:
        assert word in text


@pytest.mark.parametrize("content,field,words", BAD_CASES[:6])
def test_bad_chip_file_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object,
                           field: str | None, words: list[str]) -> None:
    path = _write_chip(tmp_path, content)
    assert main(["chips", "--dir", str(tmp_path)]) == EXIT_BAD_INPUT
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    assert str(path) in out.err and "fix:" in out.err
    if field:
        assert field in out.err
    for word in words:
        assert word in out.err


def test_duplicate_name_in_one_directory(tmp_path: Path) -> None:
    _write_chip(tmp_path, GOOD_CHIP, folder="mychip")
    clash = {**GOOD_CHIP, "name": "other", "aliases": ["MyChip"]}
    _write_chip(tmp_path, clash, folder="other")
    with pytest.raises(BadInputError) as info:
        load_chip_library(extra_dirs=[tmp_path])
    assert "MyChip" in info.value.message and info.value.fix


def test_wrong_file_name_is_reported(tmp_path: Path) -> None:
    (tmp_path / "mychip").mkdir()
    (tmp_path / "mychip" / "chip.yml").write_text(yaml.safe_dump(GOOD_CHIP), encoding="utf-8")
    with pytest.raises(BadInputError) as info:
        load_chip_library(extra_dirs=[tmp_path])
    assert "chip.yaml" in info.value.fix


def test_cli_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chips", "--dir", str(tmp_path / "nope")]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["chips", "--dir", str(tmp_path / "a-file")]) == EXIT_BAD_INPUT
    assert "is a file, not a directory" in capsys.readouterr().err


# ---- the command -----------------------------------------------------------------------


def test_cli_table_lists_every_chip(capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch,
                                    library: dict[str, ChipSpec]) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["chips"]) == 0
    out = capsys.readouterr().out
    for name in library:
        assert name in out


def test_cli_json_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_chip(tmp_path, GOOD_CHIP)
    assert main(["chips", "--json", "--dir", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {d["name"]: d for d in data}
    assert by_name["MyChip"]["tflops_bf16"] == 200.0
    assert by_name["MyChip"]["aliases"] == ["acme-1"]
    assert by_name["H200"]["provenance"]["compute_efficiency"]["confidence"] == "measured"
    assert {d["lowest_confidence"] for d in data} <= set(CONFIDENCE_LEVELS)
