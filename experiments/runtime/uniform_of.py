"""Write the uniform split of a plan (same stages and devices, units split evenly), re-costed.

    python3 experiments/runtime/uniform_of.py PLAN.json OUT.json
"""

from __future__ import annotations

import sys

from autosplit.plan.context import load_plan_context
from autosplit.plan.io import load_plan, save_plan
from autosplit.search.baselines import uniform_split


def main(src: str, dst: str) -> int:
    plan = load_plan(src)
    ctx = load_plan_context(plan, plan_file=src)
    save_plan(uniform_split(plan, model=ctx.model, cluster=ctx.cluster, costs=ctx.costs), dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
