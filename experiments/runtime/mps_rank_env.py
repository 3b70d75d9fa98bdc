"""Print the ``--rank-env`` options that give each stage of a plan its CUDA MPS SM share.

The MPS "chips" are named by their share (``h200-mps70`` runs at 70 % of the SMs), so a plan
says which percentage each rank needs. Used by the run scripts beside this file:

    python3 experiments/runtime/mps_rank_env.py PLAN.json
    # --rank-env 0:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=20 \
    #   --rank-env 1:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=70
"""

from __future__ import annotations

import json
import sys

_PREFIX = "h200-mps"


def rank_env(plan_path: str) -> str:
    with open(plan_path) as fh:
        stages = json.load(fh)["stages"]
    options = []
    for s in stages:
        if not s["chip"].startswith(_PREFIX):
            raise SystemExit(f"{plan_path}: stage {s['index']} runs on {s['chip']}, not an "
                             f"MPS chip ({_PREFIX}NN)")
        share = s["chip"].removeprefix(_PREFIX)
        options.append(f"--rank-env {s['index']}:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={share}")
    return " ".join(options)


if __name__ == "__main__":
    print(rank_env(sys.argv[1]))
