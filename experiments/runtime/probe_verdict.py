"""Stop a run when an MPS share computes wrong GEMMs: read mps_gemm_probe.py's lines, judge each.

At some CUDA MPS SM shares cuBLAS leaves parts of bf16 GEMM outputs unwritten without an error
(README.md, "The MPS fault"); timings and losses taken there are not valid. The run scripts
probe every share they use with the model's own shapes and call this before they profile:

    python3 experiments/runtime/probe_verdict.py PROBE.jsonl 55 30 15

prints one line per share and exits 0 when every share was probed and is clean, 3 when one
faults or did not answer (naming it, with the shares that were clean on the driver tested),
2 when the file cannot be read.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProbeResult", "main", "read_probes", "verdict"]

#: Shares whose GEMMs were correct on driver 580.159.04 (results/mps_probe_sweep.jsonl).
CLEAN_BEFORE = (100, 90, 70, 50, 33, 20)


@dataclass(frozen=True)
class ProbeResult:
    """One probe line: the client's share, its SM count and how many products went wrong."""

    share: int
    sm_count: int
    calls: int
    bad: int
    first_bad: str | None


def read_probes(path: Path) -> list[ProbeResult]:
    """Every JSON line of ``path``; ValueError naming the line when one is not a probe."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append(ProbeResult(share=int(d["mps_percentage"]), sm_count=int(d["sm_count"]),
                                   calls=int(d["calls"]),
                                   bad=int(d["nonfinite"]) + int(d["wrong"]) + int(d["errors"]),
                                   first_bad=d.get("first_bad")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: line {number} is not a probe result ({exc})") from None
    return out


def verdict(results: list[ProbeResult], shares: list[int]) -> list[str]:
    """The problems: a share with a wrong product, or one with no probe line."""
    problems = []
    for share in shares:
        mine = [r for r in results if r.share == share]
        if not mine:
            problems.append(f"share {share}%: no probe result (the probe failed or timed out)")
        for r in mine:
            if r.bad or not r.calls:
                problems.append(f"share {share}% ({r.sm_count} SMs): {r.bad} of {r.calls} "
                                f"GEMMs wrong or not written, first {r.first_bad}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not all(a.isdigit() for a in argv[1:]):
        print("usage: probe_verdict.py PROBE.jsonl SHARE [SHARE ...]", file=sys.stderr)
        return 2
    path, shares = Path(argv[0]), [int(a) for a in argv[1:]]
    try:
        results = read_probes(path)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(f"probe: {r.share}% ({r.sm_count} SMs): {r.bad} of {r.calls} GEMMs bad")
    problems = verdict(results, shares)
    if problems:
        for p in problems:
            print(f"STOP: {p}", file=sys.stderr)
        print("STOP: timings at a faulty share are not valid; choose other shares (clean on "
              f"the driver tested: {' '.join(map(str, CLEAN_BEFORE))})", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
