"""Plans for the H200 MPS experiment, made here (the device has no OR-Tools): the searched
plan and the uniform split over the same stages and devices, both re-costed by the same model.

    .venv/bin/python experiments/runtime/make_plans.py

writes experiments/runtime/plan_searched.json and experiments/runtime/plan_uniform.json.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from autosplit.plan.context import load_plan_context
from autosplit.plan.io import load_plan, save_plan
from autosplit.search.baselines import uniform_split

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SEARCH = ["search", "experiments/models/gpt.py", "--model-arg", "size=1.3b",
          "--cluster", "experiments/clusters/h200_mps_3to1.yaml", "--global-batch", "16",
          "--seq-len", "2048", "--tp", "1", "--no-idle", "--schedule", "1f1b", "--quiet",
          "--output", "experiments/runtime/plan_searched.json"]


def main() -> int:
    subprocess.run([sys.executable, "-m", "autosplit", *SEARCH], cwd=REPO, check=True)
    searched_path = HERE / "plan_searched.json"
    plan = load_plan(searched_path)
    ctx = load_plan_context(plan, plan_file=str(searched_path))
    uniform = uniform_split(plan, model=ctx.model, cluster=ctx.cluster, costs=ctx.costs)
    save_plan(uniform, HERE / "plan_uniform.json")
    for name, p in (("searched", plan), ("uniform", uniform)):
        units = " | ".join(f"{s.chip}:{s.layer_start}-{s.layer_end - 1}" for s in p.stages)
        print(f"{name}: {units}, predicted {p.prediction.iteration_s * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
