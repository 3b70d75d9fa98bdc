"""Print the ``--rank-env`` options that give each rank of a plan its CUDA MPS SM share.

The MPS "chips" are named by their share (``h200-mps70`` runs at 70 % of the SMs;
``h200-mps33-trio`` at 33 %), so a plan says which percentage each rank needs: ranks are
numbered as the runtime numbers them (pipeline position by position, then replica, then
tensor-parallel index; the virtual stages of one position share its ranks), each taking its
replica's chip. With ``--with-devices`` the ``--cuda-devices`` option
that puts every rank on GPU 0 comes first (clients sharing one card). With
``--gpu-of-node NODE=GPU`` (once per node) a rank runs on GPU ``GPU + its local index`` of its
replica's node instead (one chip per GPU of a multi-GPU host). Used by the run scripts beside
this file:

    python3 experiments/runtime/mps_rank_env.py PLAN.json
    # --rank-env 0:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=20 \
    #   --rank-env 1:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=70
    python3 experiments/runtime/mps_rank_env.py --gpu-of-node gpu0=0 --gpu-of-node gpu1=1 PLAN
    # --cuda-devices 1,0 --rank-env 0:...=33 --rank-env 1:...=100
"""

from __future__ import annotations

import argparse
import json
import re
import sys

_CHIP = re.compile(r"^h200-mps(\d+)(-[a-z0-9]+)?$")


def rank_env(plan_path: str, *, with_devices: bool = False,
             gpu_of_node: dict[str, int] | None = None) -> str:
    """The options, as one line; SystemExit (code 2) naming the stage for a chip that is not
    an MPS chip or a node without a GPU."""
    with open(plan_path) as fh:
        stages = json.load(fh)["stages"]
    # One entry per pipeline position (its first stage), in position order.
    positions: dict[int, dict] = {}
    for s in stages:
        positions.setdefault(s["index"] if s.get("rank") is None else s["rank"], s)
    options = []
    gpus: list[int] = []
    rank = 0
    for s in (positions[k] for k in sorted(positions)):
        for replica in s["replicas"]:
            chip = replica.get("chip") or s["chip"]
            match = _CHIP.match(chip)
            if match is None:
                print(f"error: {plan_path}: stage {s['index']} runs on {chip}, not an MPS chip "
                      "(h200-mpsNN)", file=sys.stderr)
                raise SystemExit(2)
            if gpu_of_node is not None and replica["node"] not in gpu_of_node:
                print(f"error: {plan_path}: stage {s['index']} runs on node {replica['node']}, "
                      f"which --gpu-of-node does not name (it names {sorted(gpu_of_node)})",
                      file=sys.stderr)
                raise SystemExit(2)
            for local in replica["local_indices"][:s["tp"]]:
                options.append(f"--rank-env {rank}:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="
                               f"{match.group(1)}")
                gpus.append(0 if gpu_of_node is None else gpu_of_node[replica["node"]] + local)
                rank += 1
    devices = ([f"--cuda-devices {','.join(map(str, gpus))}"]
               if with_devices or gpu_of_node is not None else [])
    return " ".join(devices + options)


def _node_gpu(text: str) -> tuple[str, int]:
    node, sep, gpu = text.partition("=")
    if not sep or not gpu.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: write NODE=GPU, e.g. gpu1=1")
    return node, int(gpu)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-devices", action="store_true")
    parser.add_argument("--gpu-of-node", type=_node_gpu, action="append")
    parser.add_argument("plan")
    ns = parser.parse_args()
    print(rank_env(ns.plan, with_devices=ns.with_devices,
                   gpu_of_node=dict(ns.gpu_of_node) if ns.gpu_of_node else None))
