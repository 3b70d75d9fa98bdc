"""Runs the generated command-line and model-file cases (cases_cli.py) through the CLI.

In-process like the file cases (fast); the model-file cases go through the ingestion child
process the CLI starts, so a model that exits or loops is what is tested. Each must exit 2,
name the option (or file) and the fix, show no traceback and leave no output file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autosplit.cli import main

from .cases_cli import CLI_CASES, MODEL_CASES, OUTPUT_CASES, RANGE_CASES
from .cases_files import Case, fill, materialise
from .corpus import ALL_CASES, case_env


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_bad_command_line(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    materialise(case, tmp_path)
    for key, value in case_env(case, tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    rc = main([fill(a, tmp_path) for a in case.argv])
    err = capsys.readouterr().err
    assert rc == case.exit_code, err
    assert "Traceback" not in err, err
    for word in case.message:
        assert fill(word, tmp_path) in err, (word, err)
    for rel in case.absent:
        assert not (tmp_path / rel).exists(), f"{rel} left behind"


def test_corpus_is_large_and_covers_every_class() -> None:
    assert len(ALL_CASES) >= 100
    assert len({c.name for c in ALL_CASES}) == len(ALL_CASES)
    assert len(RANGE_CASES) >= 30 and len(OUTPUT_CASES) >= 12 and len(MODEL_CASES) >= 8
