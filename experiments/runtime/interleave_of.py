"""Write the interleaved-1F1B form of a one-chunk plan: the same ranks and devices and the same
number of units per rank, each rank's units dealt out in two chunks (the first the larger),
stage ``s`` on rank ``s mod p``, units in stage order. Re-cost the result with
`autosplit evaluate OUT.json -o OUT.json`. For when `autosplit search --schedule
interleaved-1f1b` keeps no finalist and a comparison on the same devices is still wanted.

    python3 experiments/runtime/interleave_of.py PLAN.json OUT.json

A rank with a single unit cannot hold two chunks: exit code 2, naming the stage.
"""

from __future__ import annotations

import dataclasses
import sys

from autosplit.model.loader import build_on_meta, load_model_source
from autosplit.plan.io import load_plan, plan_sources, save_plan
from autosplit.plan.schema import Plan, StagePlan
from autosplit.runtime.stage_builder import model_partition

CHUNKS = 2


def interleave(plan: Plan, *, path: str) -> Plan:
    """``plan`` with every rank's units in ``CHUNKS`` chunks, looped over the ranks."""
    if plan.virtual_stages != 1:
        print(f"error: {path}: field 'virtual_stages': the plan already has "
              f"{plan.virtual_stages} chunks per rank; fix: pass a one-chunk plan",
              file=sys.stderr)
        raise SystemExit(2)
    for st in plan.stages:
        if st.num_layers < CHUNKS:
            print(f"error: {path}: field 'stages[{st.index}]': {st.num_layers} unit(s) cannot "
                  f"make {CHUNKS} chunks; fix: use a plan whose ranks hold {CHUNKS} units or "
                  "more each", file=sys.stderr)
            raise SystemExit(2)
    source = load_model_source(plan.model.source_file, dict(plan.model.model_args))
    units = model_partition(source, build_on_meta(source),
                            seq_len=plan.model.seq_len).unit_modules()
    sizes = [((st.num_layers + 1) // 2, st.num_layers // 2) for st in plan.stages]
    stages: list[StagePlan] = []
    start = 0
    for chunk in range(CHUNKS):
        for rank, st in enumerate(plan.stages):
            end = start + sizes[rank][chunk]
            stages.append(dataclasses.replace(
                st, index=len(stages), rank=rank, layer_start=start, layer_end=end,
                layer_names=tuple(u[0] for u in units[start:end]),
                module_names=tuple(m for u in units[start:end] for m in u[2])))
            start = end
    return dataclasses.replace(plan, stages=tuple(stages), schedule="interleaved-1f1b",
                               virtual_stages=CHUNKS, prediction=None, alternatives=())


def main(src: str, dst: str) -> int:
    plan = load_plan(src)
    # Absolute paths here; save_plan writes them relative to the new file's folder.
    where = plan_sources(plan, src)
    plan = dataclasses.replace(
        plan, model=dataclasses.replace(plan.model, source_file=where.model_file),
        cluster=dataclasses.replace(plan.cluster, source_file=where.cluster_file,
                                    chip_dirs=where.chip_dirs))
    save_plan(interleave(plan, path=src), dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
