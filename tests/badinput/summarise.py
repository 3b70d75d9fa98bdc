"""Summarise the whole bad-input corpus: cases, clean, tracebacks, wrong codes, hangs,
partial files (and messages missing the expected words).

Every case runs as ``python -m autosplit`` in a subprocess with a timeout, from an empty
folder of its own. Usage, from the repository root::

    python -m tests.badinput.summarise            # this checkout
    python -m tests.badinput.summarise -v         # and list the failing cases
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .corpus import ALL_CASES, KINDS, run_case

__all__ = ["main"]


def _one(case: object, timeout_s: float) -> str:
    with tempfile.TemporaryDirectory() as folder:
        return run_case(case, Path(folder), timeout_s)  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("-v", "--verbose", action="store_true", help="list failing cases")
    parser.add_argument("-k", "--only", action="append", default=[],
                        help="run only the cases with this name (repeatable)")
    args = parser.parse_args()
    cases = [c for c in ALL_CASES if not args.only or c.name in args.only]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        kinds = list(pool.map(lambda c: _one(c, args.timeout), cases))
    counts = Counter(kinds)
    if args.verbose:
        for case, kind in zip(cases, kinds, strict=True):
            if kind != "clean":
                print(f"{kind:12} {case.name}")
    print(f"{len(cases)} cases: " + ", ".join(f"{counts[k]} {k}" for k in KINDS)
          + f" ({time.perf_counter() - t0:.0f} s)")
    return 0 if counts["clean"] == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
