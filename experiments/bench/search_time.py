"""Whole-process search time and peak memory of the headline problem.

Runs, as a child process, exactly what a user types:

    autosplit search experiments/models/llama.py -a size=70b --seq-len 4096 \\
        -c experiments/clusters/three_vendor_128.yaml

and reports its wall time (interpreter start, imports, model ingestion, search, report) and
its peak resident memory (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``). Targets: 5 s
and 1 GB. Run from the repository root:

    .venv/bin/python experiments/bench/search_time.py [--repeat 3] [extra search options]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMAND = ["search", "experiments/models/llama.py", "-a", "size=70b", "--seq-len", "4096",
           "-c", "experiments/clusters/three_vendor_128.yaml"]
TARGET_S = 5.0
TARGET_MIB = 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs (the fastest counts)")
    args, extra = parser.parse_known_args()
    cmd = [sys.executable, "-m", "autosplit", *COMMAND, *extra]
    print("$ autosplit " + " ".join(COMMAND + extra))
    walls = []
    last = ""
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - t0)
        if proc.returncode:
            print(proc.stdout + proc.stderr)
            return proc.returncode
        last = proc.stdout
    # ru_maxrss is in KiB on Linux and the largest of all waited-for children.
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    search_line = next((ln for ln in last.splitlines() if ln.startswith("search:")), "")
    wall = min(walls)
    print(f"wall time  {wall:.1f} s (target {TARGET_S:.0f} s: "
          f"{'met' if wall <= TARGET_S else 'NOT met'}); runs: "
          + ", ".join(f"{w:.1f}" for w in walls))
    print(f"peak RSS   {peak_mib:.0f} MiB (target {TARGET_MIB:.0f} MiB: "
          f"{'met' if peak_mib <= TARGET_MIB else 'NOT met'})")
    if search_line:
        print(search_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
