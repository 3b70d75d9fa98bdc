"""The search against the exhaustive optimum of the whole plan schema, on small problems.

For the fixed cases of ``experiments/bench/exhaustive_cases.yaml`` and ``--random N`` random
small problems (``autosplit.bench.referee.random_case``: two chip types of the library, one
or two nodes of each, one to four devices per node, at most eight devices, a collective group
or not, GPT or Llama with two to eight small layers), runs the current search and the
exhaustive enumeration (``autosplit.bench.exhaustive``) and prints, as Markdown, one line per
case (searched and optimal plans, the gap, the optimum's perfect-balance ratio) and a summary:
cases, plans costed, max and median gap, the share of cases within 0.5 %, and the range of the
optima's perfect-balance ratios. Everything is costed by the analytic cost model, so the
figures do not depend on the machine. Run from the repository root:

    .venv/bin/python experiments/bench/exhaustive.py [--random 40] [--seed 0] [-o out.md]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from autosplit.bench.referee import (
    GAP_LIMIT,
    SearchGap,
    build_random_case,
    case_gap,
    random_case,
    search_gap,
)
from autosplit.bench.suite import load_suite

REPO = Path(__file__).resolve().parents[2]
CASES = REPO / "experiments" / "bench" / "exhaustive_cases.yaml"


def _row(name: str, gap: SearchGap) -> str:
    return (f"| {name} | {gap.searched} | {gap.optimum.summary} | {gap.gap:+.2%} | "
            f"{gap.balance:.2f} | {gap.optimum.plans:,} |")


def _summary(title: str, gaps: list[SearchGap]) -> list[str]:
    values = [g.gap for g in gaps]
    within = sum(v <= GAP_LIMIT for v in values)
    balance = [g.balance for g in gaps if g.balance == g.balance]
    return [
        f"**{title}**: {len(gaps)} cases, {sum(g.optimum.plans for g in gaps):,} plans costed "
        f"({sum(g.optimum.pipelines for g in gaps):,} pipelines bounded or costed); search gap "
        f"max {max(values):.2%}, median {statistics.median(values):.2%}; within "
        f"{GAP_LIMIT:.1%} in {within} of {len(gaps)} ({within / len(gaps):.0%}); optimum's "
        f"perfect-balance ratio {min(balance):.2f}–{max(balance):.2f}.",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=40, help="random cases (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random cases")
    parser.add_argument("-o", "--output", type=Path, help="also write the Markdown here")
    args = parser.parse_args()
    head = ["| case | searched plan | exhaustive optimum | gap | balance | plans |",
            "| --- | --- | --- | ---: | ---: | ---: |"]
    t0 = time.process_time()
    lines: list[str] = []
    fixed: list[SearchGap] = []
    table = list(head)
    for case in load_suite(CASES).cases:
        gap = case_gap(case)
        fixed.append(gap)
        table.append(_row(case.name, gap))
        print(table[-1], file=sys.stderr, flush=True)
    lines += _summary("Fixed cases", fixed) + table + [""]
    rng = random.Random(args.seed)
    drawn: list[SearchGap] = []
    table = list(head)
    for _ in range(args.random):
        case = random_case(rng)
        model, cluster, training = build_random_case(case)
        gap = search_gap(model=model, cluster=cluster, training=training)
        drawn.append(gap)
        table.append(_row(case.describe(), gap))
        print(table[-1], file=sys.stderr, flush=True)
    if drawn:
        lines += _summary(f"Random cases (seed {args.seed})", drawn) + table + [""]
    lines.append(f"CPU time {time.process_time() - t0:.0f} s "
                 "(`.venv/bin/python experiments/bench/exhaustive.py "
                 f"--random {args.random} --seed {args.seed}`).")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
