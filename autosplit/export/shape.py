"""The one parallel shape a uniform runtime sees in a plan.

Megatron-LM, torchtitan and DeepSpeed describe a job by one TP size, one DP size, one
micro-batch size per replica and one recompute switch. Every exporter reads those numbers from
here, after ``expressibility_problems`` has said the plan has them, so the three exporters
cannot disagree about what the plan means.

Ranks: all three runtimes put the pipeline dimension outermost, so rank ``r`` belongs to
pipeline rank ``r // (TP·DP)``; the launcher must start pipeline rank ``i``'s processes on the
devices the plan gives it. Under an interleaved or V schedule a pipeline rank runs several
stages (model chunks) on the same devices, so ``pp`` counts ranks, not stages, and
``rank_stages`` gives each rank's devices once.
"""

from __future__ import annotations

from dataclasses import dataclass

from autosplit.errors import BadInputError
from autosplit.plan.schema import Plan, StagePlan

__all__ = ["UniformShape", "uniform_shape", "unit_count", "blocks_per_stage", "rank_stages",
           "check_structure"]


@dataclass(frozen=True)
class UniformShape:
    """What a uniform runtime needs: sizes, batch split and the recompute switch."""

    tp: int
    #: Pipeline ranks (the runtime's pipeline-parallel size).
    pp: int
    dp: int
    #: Samples each data-parallel replica processes per micro-batch.
    micro_batch_size: int
    micro_batches: int
    global_batch: int
    recompute: bool
    schedule: str
    #: Stages (model chunks) per pipeline rank: the plan has ``pp · virtual_stages`` stages.
    virtual_stages: int = 1

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp


def uniform_shape(plan: Plan, target: str) -> UniformShape:
    """The plan's shape; ``BadInputError`` listing the problems when it has none.

    Call ``project_plan`` first for plans that are not expressible.
    """
    from autosplit.export.expressible import expressibility_problems

    problems = expressibility_problems(plan, target)
    if problems:
        raise BadInputError(
            f"the plan cannot be expressed in {target}: " + "; ".join(problems),
            fix=f"export without --no-project to get the nearest plan {target} can run")
    first = plan.stages[0]
    share = first.replicas[0].batch_share
    return UniformShape(
        tp=first.tp,
        pp=plan.num_ranks,
        dp=first.dp,
        micro_batch_size=share,
        micro_batches=plan.micro_batch_count,
        global_batch=plan.global_batch,
        recompute=first.recompute,
        schedule=plan.schedule,
        virtual_stages=plan.virtual_stages,
    )


def unit_count(plan: Plan) -> int:
    """Partition units in the model: pre, one per block, post."""
    return max(s.layer_end for s in plan.stages)


def blocks_per_stage(plan: Plan) -> tuple[int, ...]:
    """Transformer blocks each stage owns (the pre and post units do not count)."""
    last = unit_count(plan) - 1
    out = []
    for s in plan.stages:
        lo = max(s.layer_start, 1)
        hi = min(s.layer_end, last)
        out.append(max(0, hi - lo))
    return tuple(out)


def rank_stages(plan: Plan) -> tuple[StagePlan, ...]:
    """Each pipeline rank's first stage, in rank order: the devices of each rank once (the
    other stages of a rank are chunks on the same devices)."""
    first: dict[int, StagePlan] = {}
    for s in plan.stages:
        first.setdefault(s.pipeline_rank, s)
    return tuple(first[r] for r in sorted(first))


def check_structure(plan: Plan, *, source: str = "") -> None:
    """Reject plans no exporter can read: no stages, stages without devices, a TP group whose
    size is not the stage's TP, non-contiguous units. (``evaluate_plan`` checks the rest
    against the model and cluster.)"""
    file = source or None
    fix = "re-run `autosplit search`, or fix the hand edit (see docs/plan-schema.md)"
    if not plan.stages:
        raise BadInputError("the plan has no stages", file=file, field="stages", fix=fix)
    expected = 0
    for k, s in enumerate(plan.stages):
        where = f"stages[{k}]"
        if s.layer_start != expected or s.layer_end <= s.layer_start:
            raise BadInputError(f"stage {k} owns units {s.layer_start}..{s.layer_end - 1}; "
                                f"it should start at unit {expected} and own at least one",
                                file=file, field=f"{where}.layer_start", fix=fix)
        expected = s.layer_end
        if s.tp < 1 or not s.replicas:
            raise BadInputError(f"stage {k} has no devices (TP={s.tp}, {s.dp} replicas)",
                                file=file, field=f"{where}.replicas", fix=fix)
        for j, r in enumerate(s.replicas):
            if len(r.local_indices) != s.tp:
                raise BadInputError(f"replica {j} of stage {k} has {len(r.local_indices)} "
                                    f"devices but the stage's TP is {s.tp}", file=file,
                                    field=f"{where}.replicas[{j}].local_indices", fix=fix)
            if r.batch_share < 1:
                raise BadInputError(f"replica {j} of stage {k} takes {r.batch_share} samples",
                                    file=file, field=f"{where}.replicas[{j}].batch_share",
                                    fix=fix)
