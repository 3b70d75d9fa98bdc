"""The CLI end to end: a real search, re-costing, and clean messages + exit codes for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autosplit.cli import main
from autosplit.plan.schema import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]
GPT = str(ROOT / "experiments/models/gpt.py")
SMALL = str(ROOT / "experiments/clusters/small_2type.yaml")


def _search(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "plan.json"
    rc = main(["search", GPT, "-a", "size=tiny", "-c", SMALL, "--seq-len", "128",
               "--global-batch", "16", "-o", str(out), "-q", *extra])
    return rc, out


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plan")
    rc, out = _search(tmp)
    assert rc == 0
    return out


def test_search_writes_a_valid_plan(plan_file: Path):
    data = json.loads(plan_file.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    units = [(s["layer_start"], s["layer_end"]) for s in data["stages"]]
    assert units[0][0] == 0 and units[-1][1] == data["model"]["num_layers"]
    assert all(a[1] == b[0] for a, b in zip(units, units[1:], strict=False))
    assert data["prediction"]["iteration_s"] > 0
    assert data["search"]["optimality_gap"] >= 0


def test_search_json_to_stdout(tmp_path, capsys):
    rc = main(["search", GPT, "-a", "size=tiny", "-c", SMALL, "--seq-len", "128",
               "--global-batch", "16", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stages"]


def test_evaluate_recosts_the_same(plan_file, tmp_path):
    out = tmp_path / "again.json"
    assert main(["evaluate", str(plan_file), "-o", str(out)]) == 0
    a = json.loads(plan_file.read_text())["prediction"]["iteration_s"]
    b = json.loads(out.read_text())["prediction"]["iteration_s"]
    assert b == pytest.approx(a, rel=1e-9)


def _edited(plan_file: Path, tmp_path: Path, edit) -> Path:
    data = json.loads(plan_file.read_text())
    edit(data)
    p = tmp_path / "edited.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["stages"][-1].__setitem__("layer_end", d["stages"][-1]["layer_end"] - 1),
     "missing"),
    (lambda d: d["stages"][-1].__setitem__("layer_start", d["stages"][-1]["layer_start"] - 1)
     if len(d["stages"]) > 1 else d["stages"][0].__setitem__("layer_start", -1),
     "twice"),
    (lambda d: d["stages"][0]["replicas"][0].__setitem__("node", "nowhere"), "does not exist"),
    (lambda d: d["stages"][0]["replicas"][0].__setitem__("local_indices",
                                                         [99] * d["stages"][0]["tp"]),
     "does not exist"),
    (lambda d: d["stages"][0]["replicas"].append(dict(d["stages"][0]["replicas"][0])),
     "used twice"),
    (lambda d: d.__setitem__("micro_batch_count", 7), "divide"),
    (lambda d: d.pop("stages"), "missing field"),
    (lambda d: d["model"].__setitem__("num_layers", 99), "units"),
])
def test_evaluate_rejects_invalid_plans(plan_file, tmp_path, capsys, edit, needle):
    bad = _edited(plan_file, tmp_path, edit)
    rc = main(["evaluate", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle in err and "fix:" in err
    assert "Traceback" not in err


def test_malformed_plan_json(tmp_path, capsys):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    assert main(["evaluate", str(p)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("content,needle", [
    ("nodes: [", "YAML"),
    ("nodes:\n  - name: a\n    chip: NoSuchChip\n    devices: 4\n", "NoSuchChip"),
    ("nodes:\n  - name: a\n    chip: H100\n    devices: 0\n", "devices"),
])
def test_bad_cluster_exit_2_and_no_output(tmp_path, capsys, content, needle):
    cl = tmp_path / "c.yaml"
    cl.write_text(content)
    out = tmp_path / "plan.json"
    rc = main(["search", GPT, "-a", "size=tiny", "-c", str(cl), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle in err and str(cl) in err
    assert not out.exists()


def test_model_file_that_fails_to_import(tmp_path, capsys):
    m = tmp_path / "broken.py"
    m.write_text("import torch\nraise RuntimeError('boom')\n")
    out = tmp_path / "plan.json"
    rc = main(["search", str(m), "-c", SMALL, "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "broken.py" in err and "boom" in err
    assert "Traceback" not in err and not out.exists()


def test_impossible_memory_exit_3_with_numbers(tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = main(["search", GPT, "-a", "size=175b", "-c", SMALL, "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "TB" in err and "parameters" in err
    assert not out.exists()


@pytest.mark.parametrize("args,needle", [
    (["--schedule", "zigzag"], "--schedule"),
    (["--dtype", "fp8"], "--dtype"),
    (["--global-batch", "0"], "--global-batch"),
    (["--micro-batch-sizes", "a,b"], "--micro-batch-sizes"),
    (["-a", "size"], "--model-arg"),
])
def test_bad_options_exit_2(tmp_path, capsys, args, needle):
    rc = main(["search", GPT, "-c", SMALL, "-q", *args])
    assert rc == 2
    assert needle in capsys.readouterr().err


def test_chips_lists_library(capsys):
    assert main(["chips", "--json"]) == 0
    names = {c["name"] for c in json.loads(capsys.readouterr().out)}
    assert {"H100", "A100", "Ascend910B", "MI300X"} <= names


# ---- the command line itself: version, help, stdout, progress, timing ------------------


def test_version_flag(capsys):
    from autosplit import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"autosplit {__version__}"


@pytest.mark.parametrize("command", ["search", "evaluate", "export", "report", "run",
                                     "validate", "bench", "chips"])
def test_help_has_no_type_placeholders(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "--help" in text
    for placeholder in ("<bool>", "<path>", "<int>", "<float>", "<str>", "list["):
        assert placeholder not in text, (placeholder, text)


def test_search_output_dash_writes_the_plan_to_stdout(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["search", GPT, "-a", "size=tiny", "-c", SMALL, "--seq-len", "128",
               "--global-batch", "16", "-o", "-", "-q"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["stages"]
    assert not (tmp_path / "-").exists()


def test_evaluate_and_export_output_dash(plan_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(plan_file), "-o", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["prediction"]["iteration_s"] > 0
    assert main(["export", str(plan_file), "--to", "megatron", "-o", "-"]) == 0
    assert "--pipeline-model-parallel-size" in capsys.readouterr().out
    assert not (tmp_path / "-").exists()


def test_summary_prints_the_whole_process_time(tmp_path, capsys):
    rc, _ = _search(tmp_path)
    assert rc == 0
    out = capsys.readouterr().out
    assert "whole process: " in out and "whole command" not in out


def test_progress_is_quiet_when_not_a_terminal(tmp_path, capsys):
    """Without -q, but with stderr captured (not a TTY): no spinner frames, only lines."""
    rc = main(["search", GPT, "-a", "size=tiny", "-c", SMALL, "--seq-len", "128",
               "--global-batch", "16", "-o", str(tmp_path / "p.json")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "searching" not in err and "\r" not in err and "\x1b" not in err


def test_progress_reporter_draws_on_a_terminal():
    import io

    from rich.console import Console

    from autosplit.cli.progress import reporter

    buf = io.StringIO()
    shown = reporter(quiet=False, console=Console(file=buf, force_terminal=True, width=80))
    with shown.phase("searching") as phase:
        phase.update("best so far 1.0 ms")
    assert shown.enabled and shown.updates == 1
    assert "searching" in buf.getvalue()
    assert not reporter(quiet=True, console=Console(file=io.StringIO(),
                                                    force_terminal=True)).enabled


def test_idle_devices_are_counted_per_node_group():
    from autosplit.report.idle import idle_summary

    many = [f"h100-{n}:{i}" for n in range(192) for i in range(8)] + ["a100:0", "a100:1"]
    assert idle_summary(many) == "h100-* 1,536 on 192 nodes, a100 2 on 1 node"
    assert idle_summary(["a100:0", "a100:1"]) == "a100:0, a100:1"


def test_chips_table_fits_80_columns():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "autosplit", "chips"], capture_output=True,
                          text=True, env={**__import__("os").environ, "COLUMNS": "80"})
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert not any("…" in line for line in lines)  # nothing cut off
