"""Summarise the file-format bad-input cases: how many are clean, and how the others fail.

Every case runs as ``python -m autosplit`` in a subprocess (the autosplit on ``PYTHONPATH``,
so another checkout can be measured too) with a timeout, and is classified as clean, or as a
traceback, a wrong exit code, a hang, a partial output file or a message missing the expected
words. Usage, from the repository root::

    python tests/badinput/summarise_files.py                       # this checkout
    PYTHONPATH=/path/to/other/checkout python tests/badinput/summarise_files.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases_files import CASES, Case, fill, materialise  # noqa: E402

KINDS = ("clean", "traceback", "wrong code", "hang", "partial file", "message")


def classify(case: Case, timeout_s: float) -> str:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        materialise(case, tmp)
        argv = [fill(a, tmp) for a in case.argv]
        try:
            done = subprocess.run([sys.executable, "-m", "autosplit", *argv], cwd=tmp,
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return "hang"
        if "Traceback" in done.stderr:
            return "traceback"
        if done.returncode != case.exit_code:
            return "wrong code"
        if any((tmp / rel).exists() for rel in case.absent):
            return "partial file"
        if not all(fill(w, tmp) in done.stderr for w in case.message):
            return "message"
        return "clean"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("-v", "--verbose", action="store_true", help="list failing cases")
    args = parser.parse_args()
    counts: Counter[str] = Counter()
    for case in CASES:
        kind = classify(case, args.timeout)
        counts[kind] += 1
        if args.verbose and kind != "clean":
            print(f"{kind:12} {case.name}")
    with tempfile.TemporaryDirectory() as folder:  # where the cases run: no checkout there
        package = subprocess.run([sys.executable, "-c",
                                  "import autosplit; print(autosplit.__file__)"], cwd=folder,
                                 capture_output=True, text=True).stdout.strip()
    print(f"{package}: {len(CASES)} cases, " + ", ".join(f"{counts[k]} {k}" for k in KINDS))
    return 0 if counts["clean"] == len(CASES) else 1


if __name__ == "__main__":
    sys.exit(main())
