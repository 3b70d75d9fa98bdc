"""File formats: safe reading, JSON Schemas, plan paths and plan identity, through the CLI.

The per-format bad-input cases (exit code, message, no output left behind) are data in
tests/badinput/cases_files.py; this file tests what a case record cannot express: that the
schemas are current and accept every shipped file, that plans work from another folder and
when moved, that another model or cluster is refused, and that imported profiles reach
``evaluate``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from autosplit.cli import main
from autosplit.errors import BadInputError
from autosplit.inputs.files import check_input_file, read_input_bytes, read_input_text
from autosplit.inputs.json_schema import SCHEMA_FILES, schema_text
from autosplit.inputs.yaml_file import read_yaml_mapping
from autosplit.plan.io import load_plan, plan_sources

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "docs" / "schemas"
GPT = REPO / "experiments" / "models" / "gpt.py"
SMALL = REPO / "experiments" / "clusters" / "small_2type.yaml"


# ---- safe reading ----------------------------------------------------------------------


def test_reader_refuses_what_is_not_a_plain_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    for path, words in ((fifo, "FIFO"), (zero, "a device"), (tmp_path, "a folder"),
                        (tmp_path / "none.yaml", "not found")):
        with pytest.raises(BadInputError) as info:
            read_input_bytes(path, what="cluster file")
        assert words in info.value.render() and info.value.fix
        assert info.value.file == str(path)


def test_reader_bounds_size_and_refuses_binary(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(2049)
    with pytest.raises(BadInputError, match="at most 2,048 bytes"):
        read_input_bytes(big, what="plan file", limit=2048)
    assert check_input_file(big, what="plan file", limit=4096) == big
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"nodes: []\n\x00")
    with pytest.raises(BadInputError, match="NUL bytes"):
        read_input_text(nul, what="cluster file")
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffnodes: []\n".encode())
    assert read_input_text(bom, what="cluster file") == "nodes: []\n"


def test_yaml_anchors_for_defaults_still_work(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("defaults: &d {chip: H100, devices: 8}\n"
                    "nodes: [{<<: *d, name: a}, {<<: *d, name: b, devices: 4}]\n")
    data = read_yaml_mapping(path, what="cluster file")
    assert data["nodes"] == [{"chip": "H100", "devices": 8, "name": "a"},
                             {"chip": "H100", "devices": 4, "name": "b"}]


def test_largest_legal_cluster_loads(tmp_path: Path) -> None:
    from autosplit.cluster.file_format import MAX_DEVICES, MAX_NODES
    from autosplit.cluster.load import load_cluster

    path = tmp_path / "big.yaml"
    path.write_text(f"network: {{nic_bw_gbs: 50}}\n"
                    f"nodes: [{{chip: H100, devices: {MAX_DEVICES // MAX_NODES}, "
                    f"count: {MAX_NODES}}}]\n")
    cluster = load_cluster(path)
    assert cluster.num_devices == MAX_DEVICES and len(cluster.nodes) == MAX_NODES


# ---- JSON Schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_committed_schema_is_current(name: str) -> None:
    committed = (SCHEMAS / name).read_text(encoding="utf-8")
    assert committed == schema_text(name), (
        f"docs/schemas/{name} is out of date: run python -m autosplit.inputs.json_schema")


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schemas_accept_every_shipped_file(plan_file: Path) -> None:
    cluster, chip, plan = (_validator(n) for n in ("cluster.schema.json", "chip.schema.json",
                                                    "plan.schema.json"))
    clusters = sorted((REPO / "experiments" / "clusters").glob("*.yaml"))
    chips = sorted((REPO / "profiles").glob("*/chip.yaml"))
    assert clusters and chips
    for path in clusters:
        assert not list(cluster.iter_errors(yaml.safe_load(path.read_text()))), path
    for path in chips:
        assert not list(chip.iter_errors(yaml.safe_load(path.read_text()))), path
    for path in [plan_file, *sorted((REPO / "experiments" / "runtime").glob("plan_*.json"))]:
        assert not list(plan.iter_errors(json.loads(path.read_text()))), path


def test_schemas_refuse_what_autosplit_refuses() -> None:
    cluster, plan = _validator("cluster.schema.json"), _validator("plan.schema.json")
    assert not cluster.is_valid({"nodes": [{"chip": "H100", "devices": 1000000000000}]})
    assert not cluster.is_valid({"nodes": [{"chip": "H100", "devices": 8, "device": 8}]})
    assert not cluster.is_valid({"nodes": [{"chip": "H100", "devices": 8}],
                                 "interconnect": {"cross_vendor": "pigeon"}})
    good = json.loads((REPO / "experiments" / "runtime" / "plan_searched.json").read_text())
    assert plan.is_valid(good)
    assert not plan.is_valid({**good, "memory_reserve_gb": "2"})
    assert not plan.is_valid({**good, "recompte": True})


# ---- plan paths ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder: model, cluster and a plan searched from it with relative paths."""
    root = tmp_path_factory.mktemp("project")
    (root / "models").mkdir()
    (root / "clusters").mkdir()
    (root / "plans").mkdir()
    shutil.copy(GPT, root / "models" / "gpt.py")
    shutil.copy(SMALL, root / "clusters" / "small.yaml")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["search", "models/gpt.py", "-a", "size=tiny", "-c", "clusters/small.yaml",
                     "--seq-len", "128", "--global-batch", "16", "-o", "plans/plan.json",
                     "-q"]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture(scope="module")
def plan_file(workspace: Path) -> Path:
    return workspace / "plans" / "plan.json"


def test_plan_records_paths_relative_to_itself(plan_file: Path) -> None:
    data = json.loads(plan_file.read_text())
    assert data["schema_version"] == "1.1"
    assert data["model"]["source_file"] == "../models/gpt.py"
    assert data["cluster"]["source_file"] == "../clusters/small.yaml"
    assert len(data["cluster"]["fingerprint"]) == 16


def test_plan_works_from_another_folder(plan_file: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "again.json"
    assert main(["evaluate", str(plan_file), "-o", str(out)]) == 0
    before = json.loads(plan_file.read_text())["prediction"]["iteration_s"]
    assert json.loads(out.read_text())["prediction"]["iteration_s"] == pytest.approx(before)
    # The re-costed plan, written elsewhere, points at the same files from its own folder.
    sources = plan_sources(load_plan(out), out)
    assert Path(sources.model_file) == plan_file.parent.parent / "models" / "gpt.py"
    assert main(["export", str(plan_file), "--to", "deepspeed", "-o",
                 str(tmp_path / "ds.json")]) == 0
    capsys.readouterr()


def test_plan_moved_with_its_files_still_works(workspace: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(workspace, moved)
    assert main(["evaluate", str(moved / "plans" / "plan.json"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["source_file"] == str(moved / "models" / "gpt.py")  # stdout: absolute


def test_plan_of_schema_1_0_resolves_from_the_working_directory(
        workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads((workspace / "plans" / "plan.json").read_text())
    data["schema_version"] = "1.0"
    data["model"]["source_file"] = "models/gpt.py"  # as typed in the project folder
    data["cluster"]["source_file"] = "clusters/small.yaml"
    for key in ("fingerprint", "chip_dirs"):
        del data["cluster"][key]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    monkeypatch.chdir(workspace)
    sources = plan_sources(load_plan(old), old)
    assert sources.model_file == str(workspace / "models" / "gpt.py")
    assert main(["evaluate", str(old), "--json"]) == 0


def test_missing_model_file_names_the_option(plan_file: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    lone = tmp_path / "lone.json"
    shutil.copy(plan_file, lone)
    assert main(["evaluate", str(lone)]) == 2
    err = capsys.readouterr().err
    assert "model.source_file" in err and "was not found" in err and "--model PATH" in err


# ---- plan identity ---------------------------------------------------------------------


def test_evaluate_refuses_another_model(plan_file: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "llama.py"
    shutil.copy(REPO / "experiments" / "models" / "llama.py", other)
    out = tmp_path / "out.json"
    assert main(["evaluate", str(plan_file), "--model", str(other), "-a", "size=tiny",
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the plan was made for another model" in err and "model.fingerprint" in err
    assert "gpt(size=tiny)" in err and not out.exists()


def test_evaluate_refuses_another_cluster(plan_file: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    other = REPO / "experiments" / "clusters" / "two_type_3to1.yaml"
    assert main(["evaluate", str(plan_file), "-c", str(other), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the plan was made for cluster 'small-2type'" in err and "two-type-3to1" in err
    assert not out.exists()


def test_evaluate_with_an_edited_cluster_records_it(plan_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    edited = tmp_path / "faster.yaml"
    text = (plan_file.parent.parent / "clusters" / "small.yaml").read_text()
    edited.write_text(text + "\n# NICs upgraded\n")
    out = tmp_path / "out.json"
    assert main(["evaluate", str(plan_file), "-c", str(edited), "-o", str(out)]) == 0
    assert "changed since the plan was made" in capsys.readouterr().err
    written = json.loads(out.read_text())["cluster"]
    assert written["source_file"] == "faster.yaml"
    assert written["fingerprint"] != json.loads(plan_file.read_text())["cluster"]["fingerprint"]


# ---- imported profiles reach evaluate ---------------------------------------------------


def test_evaluate_sees_the_profiles_the_plan_was_searched_with(
        workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    units = 6  # GPT "tiny": pre, 4 blocks, post
    layers = {str(i): [1e-8, 2e-8, 0.0] for i in range(units)}  # faster than the roofline
    sailor = tmp_path / "GPT-tiny" / "H100-80"
    sailor.mkdir(parents=True)
    (sailor / "profile.json").write_text(json.dumps({"1": {"1": layers}, "2": {"1": layers}}))
    chips = tmp_path / "measured_chips"
    assert main(["profile-import", str(sailor), "--format", "sailor", "--seq-len", "128",
                 "--model", str(GPT), "-a", "size=tiny", "-o", str(chips)]) == 0
    assert "'H100-80' is stored as chip 'H100'" in capsys.readouterr().err
    plan = tmp_path / "plan.json"
    assert main(["search", str(GPT), "-a", "size=tiny", "-c", str(SMALL), "--seq-len", "128",
                 "--global-batch", "16", "--tp", "1", "--chips-dir", str(chips), "-o", str(plan),
                 "-q"]) == 0
    recorded = json.loads(plan.read_text())
    assert recorded["cluster"]["chip_dirs"] == ["measured_chips"]
    h100 = [s["cost_source"] for s in recorded["stages"] if s["chip"] == "H100"]
    assert h100 and set(h100) == {"measured"}
    capsys.readouterr()
    assert main(["evaluate", str(plan), "--json"]) == 0  # the recorded directory
    again = json.loads(capsys.readouterr().out)
    assert [s["cost_source"] for s in again["stages"]] == [s["cost_source"]
                                                           for s in recorded["stages"]]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(plan), "--chips-dir", str(empty), "--json"]) == 0
    analytic = json.loads(capsys.readouterr().out)
    assert {s["cost_source"] for s in analytic["stages"]} == {"analytic"}
