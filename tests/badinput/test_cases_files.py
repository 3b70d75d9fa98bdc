"""Runs the file-format bad-input cases (cases_files.py) through the CLI.

Each case gets an empty folder, its files, and the command; the command must exit with the
case's code, name the file, field and fix the case expects, never show a traceback, and leave
no output file behind. Cases with FIFOs, devices and the like run in a subprocess with a
timeout, so a reader that blocked on one fails the test instead of hanging the run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autosplit.cli import main

from .cases_files import CASES, Case, fill, materialise

#: A case is one command on small files; this is a hang, not a slow machine.
TIMEOUT_S = 120


def _run(case: Case, tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    argv = [fill(a, tmp) for a in case.argv]
    if case.special:
        done = subprocess.run([sys.executable, "-m", "autosplit", *argv], cwd=tmp,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        return done.returncode, done.stderr
    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_file(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    materialise(case, tmp_path)
    rc, err = _run(case, tmp_path, capsys)
    assert rc == case.exit_code, err
    assert "Traceback" not in err, err
    for word in case.message:
        assert fill(word, tmp_path) in err, (word, err)
    for rel in case.absent:
        assert not (tmp_path / rel).exists(), f"{rel} left behind"


def test_corpus_covers_every_reader() -> None:
    names = {c.name.split("-")[0] for c in CASES}
    assert {"cluster", "chip", "plan", "suite", "baseline", "measured", "profile", "sailor",
            "metis"} <= names
    assert len({c.name for c in CASES}) == len(CASES)
