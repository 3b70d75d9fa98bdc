"""The whole bad-input corpus: the file-format cases and the generated command-line and
model-file cases, with one way to run a case (used by the tests and the summary)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .cases_cli import CLI_CASES
from .cases_files import CASES as FILE_CASES
from .cases_files import Case, fill, materialise

__all__ = ["ALL_CASES", "Outcome", "run_in_subprocess", "classify"]

ALL_CASES: list[Case] = [*FILE_CASES, *CLI_CASES]

#: What a case can come to: clean, or one of the failure kinds the summary counts.
KINDS = ("clean", "traceback", "wrong code", "hang", "partial file", "message")


class Outcome:
    """A finished command: exit code and standard error (``None`` code: it hung)."""

    def __init__(self, code: int | None, stderr: str) -> None:
        self.code = code
        self.stderr = stderr


def case_env(case: Case, tmp: Path) -> dict[str, str]:
    """The case's environment variables, ``{tmp}`` filled in."""
    return {k: fill(v, tmp) for k, v in case.env.items()}


def run_in_subprocess(case: Case, tmp: Path, timeout_s: float) -> Outcome:
    """``python -m autosplit ARGV`` in the case's folder, with its environment."""
    argv = [fill(a, tmp) for a in case.argv]
    env = {**os.environ, **case_env(case, tmp)}
    try:
        done = subprocess.run([sys.executable, "-m", "autosplit", *argv], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Outcome(None, "")
    return Outcome(done.returncode, done.stderr)


def classify(case: Case, tmp: Path, outcome: Outcome) -> str:
    """Which of ``KINDS`` the outcome is."""
    if outcome.code is None:
        return "hang"
    if "Traceback" in outcome.stderr:
        return "traceback"
    if outcome.code != case.exit_code:
        return "wrong code"
    if any((tmp / rel).exists() for rel in case.absent):
        return "partial file"
    if not all(fill(w, tmp) in outcome.stderr for w in case.message):
        return "message"
    return "clean"


def run_case(case: Case, folder: Path, timeout_s: float) -> str:
    """Materialise, run and classify one case in ``folder`` (empty)."""
    materialise(case, folder)
    return classify(case, folder, run_in_subprocess(case, folder, timeout_s))
