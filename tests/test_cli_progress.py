"""Progress lines through the command line, on a fake terminal: the search's gap, the
profile import's files and rows; nothing with -q.

The fake terminal is rich's own switch (``TTY_COMPATIBLE=1``, ``TTY_INTERACTIVE=1``): the
commands' consoles then draw as on a real one, into the captured standard error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autosplit.cli import main
from autosplit.cli.progress_lines import import_line, search_line
from autosplit.profiler.importers import ImportProgress, import_profiles
from autosplit.report.fmt import fmt_pct
from autosplit.search.progress import SearchProgress

ROOT = Path(__file__).resolve().parents[1]
GPT = str(ROOT / "experiments/models/gpt.py")
SMALL = str(ROOT / "experiments/clusters/small_2type.yaml")
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard error looks like a wide, interactive terminal to the commands' consoles."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "250")


def _frames(err: str, phase: str) -> list[str]:
    """The lines ``phase`` drew, from its name on (after the spinner), escape sequences
    removed: a live display redraws its line after a ``\\r``."""
    plain = _ESCAPES.sub("", err)
    return [line[line.index(phase):].strip() for line in re.split(r"[\r\n]", plain)
            if phase in line]


def _search(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "plan.json"
    rc = main(["search", GPT, "-a", "size=tiny", "-c", SMALL, "--seq-len", "128",
               "--global-batch", "16", "-o", str(out), *extra])
    return rc, out


def _metis_folder(root: Path, gpus: tuple[str, ...] = ("A100", "V100")) -> Path:
    """Metis' layout: one DeviceType.<GPU>_tp<T>_bs<B>.json per GPU, TP and batch size."""
    folder = root / "metis"
    folder.mkdir()
    for gpu in gpus:
        for tp, bs in ((1, 1), (1, 2), (2, 2)):
            times = [0.3] + [30.0 * bs / tp] * 3 + [0.4 * bs]
            data = {"model": {"model_name": "GPT3", "num_layers": len(times)},
                    "execution_time": {"layer_compute_total_ms": times}}
            (folder / f"DeviceType.{gpu}_tp{tp}_bs{bs}.json").write_text(json.dumps(data))
    return folder


# ---- search ------------------------------------------------------------------------------


def test_search_line_shows_the_gap_of_the_plan_it_ends_with(tmp_path, capsys, terminal):
    rc, out = _search(tmp_path)
    assert rc == 0, capsys.readouterr().err
    frames = _frames(capsys.readouterr().err, "searching:")
    assert frames, "no progress line was drawn"
    # Frames in between depend on the refresh rate; the last is drawn as the phase ends.
    shown = [f for f in frames if "best so far" in f]
    assert shown and all(re.search(r"\d candidates? explored", f) for f in shown)
    gap = fmt_pct(json.loads(out.read_text())["search"]["optimality_gap"], 2)
    assert f"gap {gap} to the bound" in shown[-1], (gap, shown[-1])


def test_search_line_is_not_drawn_with_quiet(tmp_path, capsys, terminal):
    rc, out = _search(tmp_path, "-q")
    assert rc == 0 and out.exists()
    err = capsys.readouterr().err
    assert "searching" not in err and "gap" not in err and "\r" not in err


def test_search_line_wording() -> None:
    before = SearchProgress(pools=2, device_groups=3, candidates=0, lower_bound_s=0.0123)
    assert search_line(before) == ("2 pools, 3 device groups, no plan yet, bound 12.3 ms, "
                                   "0 candidates explored")
    found = SearchProgress(pools=2, device_groups=3, candidates=1, best_s=0.016,
                           micro_batches=8, stages=4, lower_bound_s=0.012)
    assert search_line(found) == ("best so far 16 ms (m=8, 4 stages), gap 25.00% to the "
                                  "bound 12 ms, 1 candidate explored")
    unbounded = SearchProgress(pools=1, device_groups=1, candidates=1200, best_s=1.5,
                               micro_batches=1, stages=1)
    assert search_line(unbounded) == "best so far 1.5 s (m=1, 1 stages), 1,200 candidates explored"


# ---- profile-import ----------------------------------------------------------------------


def test_import_reports_files_read_and_profiles_written(tmp_path: Path) -> None:
    said: list[ImportProgress] = []
    report = import_profiles(_metis_folder(tmp_path), fmt="metis", output=tmp_path / "out",
                             seq_len=2048, progress=said.append)
    reading = [e for e in said if not e.profiles_total]
    writing = [e for e in said if e.profiles_total]
    assert [e.files_read for e in reading] == list(range(1, 7))
    assert {e.files_total for e in reading} == {6}
    assert [e.rows_read for e in reading] == [3 * k for k in range(1, 7)]
    assert [e.profiles_written for e in writing] == [1, 2] == [1, len(report.files)]
    assert all(e.profiles_total == 2 and e.rows_read == report.rows == 18 and
               e.files_read == e.files_total == 6 for e in writing)


def test_import_line_wording() -> None:
    assert import_line(ImportProgress(files_read=3, files_total=40, rows_read=1200)) == (
        "3 of 40 files read, 1,200 rows")
    assert import_line(ImportProgress(files_read=40, files_total=40, rows_read=1200,
                                      profiles_written=1, profiles_total=2)) == (
        "40 of 40 files read, 1,200 rows, 1 of 2 profiles written")


def test_profile_import_draws_its_progress_on_a_terminal(tmp_path, capsys, terminal):
    rc = main(["profile-import", str(_metis_folder(tmp_path)), "--format", "metis",
               "--seq-len", "2048", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 0, err
    frames = _frames(err, "importing metis profiles")
    assert frames, err
    assert "6 of 6 files read, 18 rows, 2 of 2 profiles written" in frames[-1]
    assert "18 rows in 2 file(s)" in err


@pytest.mark.parametrize("quiet", [True, False])
def test_profile_import_is_quiet_with_q_or_off_a_terminal(tmp_path, capsys, monkeypatch,
                                                           quiet):
    for key in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR"):
        monkeypatch.delenv(key, raising=False)
    if quiet:  # a terminal, but -q
        monkeypatch.setenv("TTY_COMPATIBLE", "1")
        monkeypatch.setenv("TTY_INTERACTIVE", "1")
    rc = main(["profile-import", str(_metis_folder(tmp_path)), "--format", "metis",
               "--seq-len", "2048", "-o", str(tmp_path / "out"), *(["-q"] if quiet else [])])
    err = capsys.readouterr().err
    assert rc == 0
    assert "importing" not in err and "files read" not in err and "\r" not in err
    assert "18 rows in 2 file(s)" in err  # what was written is still said


# ---- bench -------------------------------------------------------------------------------


def test_bench_draws_the_case_it_runs_on_a_terminal(tmp_path, capsys, terminal):
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({
        "name": "t", "defaults": {"global_batch": 16, "seq_len": 128},
        "cases": [{"name": "tiny-gpt", "model": GPT, "model_args": {"size": "tiny"},
                   "cluster": SMALL, "options": {"max_stages": 2}}]}), encoding="utf-8")
    assert main(["bench", str(suite), "-o", str(tmp_path / "r.csv")]) == 0
    frames = _frames(capsys.readouterr().err, "benchmarking 1 case(s)")
    assert frames and "case 1 of 1: tiny-gpt" in frames[-1], frames
    assert main(["bench", str(suite), "-q", "-o", str(tmp_path / "r.csv")]) == 0
    assert "benchmarking" not in capsys.readouterr().err
