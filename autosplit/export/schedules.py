"""Which pipeline schedules each uniform runtime is exported with, and what it needs of them.

The names come from one place, the schedule registry (``cost.schedule``, each schedule's
``export_names``): a target runs a schedule exactly when the schedule names it there, so an
exporter never keeps a table of its own. What this module adds is what a runtime demands of a
plan beyond the name — Megatron-LM interleaves only across two or more ranks and in groups of
at least as many micro-batches as ranks; every runtime needs the schedule to accept the
plan's micro-batch count — so the search (through ``expressibility_problems``) keeps only
plans the runtime starts, and the exporters can rely on it.
"""

from __future__ import annotations

from autosplit.cost.schedule import SCHEDULE_NAMES, get_schedule
from autosplit.errors import BadInputError
from autosplit.plan.schema import Plan
from autosplit.protocols.schedule import Schedule

__all__ = ["UNIFORM_TARGETS", "TARGET_SCHEDULES", "plan_schedule", "export_schedule_name",
           "schedule_problems", "schedule_problems_for", "microbatch_group_size"]

#: Targets that take one TP and one DP size for all stages.
UNIFORM_TARGETS: tuple[str, ...] = ("megatron", "torchtitan", "deepspeed")

#: Pipeline schedules each uniform target is exported with (plan spelling, registry order):
#: those whose ``export_names`` name the target.
TARGET_SCHEDULES: dict[str, tuple[str, ...]] = {
    t: tuple(n for n in SCHEDULE_NAMES if t in get_schedule(n).export_names)
    for t in UNIFORM_TARGETS}


#: Why a target lacks the schedules it lacks (checked in the installed releases' source).
_WHY_MISSING: dict[str, str] = {
    "megatron": "megatron-core 0.19 has no zero-bubble or GPipe pipeline schedule, only "
                "1F1B with or without interleaving (megatron/core/pipeline_parallel/"
                "schedules.py)",
    "deepspeed": "DeepSpeed's PipelineEngine runs only its TrainSchedule (1F1B)",
}


def plan_schedule(plan: Plan) -> Schedule:
    """The plan's schedule object, with the plan's chunks per rank."""
    return get_schedule(plan.schedule, virtual_stages=plan.virtual_stages)


def export_schedule_name(plan: Plan, target: str) -> str:
    """``target``'s name for the plan's schedule (``BadInputError`` when it has none)."""
    name = plan_schedule(plan).export_names.get(target)
    if name is None:
        raise BadInputError(f"{target} does not run the {plan.schedule} schedule",
                            field="schedule",
                            fix=f"use one of {', '.join(TARGET_SCHEDULES[target])}")
    return name


def schedule_problems(plan: Plan, target: str) -> list[str]:
    """Sentences naming why ``target`` cannot run the plan's schedule as planned."""
    return schedule_problems_for(target, plan.schedule, virtual_stages=plan.virtual_stages,
                                 ranks=plan.num_ranks, micro_batches=plan.micro_batch_count)


def schedule_problems_for(target: str, schedule: str, *, virtual_stages: int, ranks: int,
                          micro_batches: int) -> list[str]:
    """``schedule_problems`` for a plan not built yet: a schedule with ``virtual_stages``
    chunks on each of ``ranks`` pipeline ranks, running ``micro_batches`` micro-batches.

    One pipeline rank is no pipeline: the runtime runs every micro-batch through the whole
    model in turn (no pipeline flags are exported), the same passes on the same devices as
    any schedule runs there, with at most as many activations alive.
    """
    if schedule not in TARGET_SCHEDULES[target]:
        why = _WHY_MISSING.get(target, "")
        return [f"schedule '{schedule}' is not available in {target} (it runs "
                f"{', '.join(TARGET_SCHEDULES[target])})" + (f": {why}" if why else "")]
    placed = get_schedule(schedule, virtual_stages=virtual_stages)
    try:
        placed.check(ranks, micro_batches)
    except BadInputError as exc:
        return [f"{schedule} cannot run this plan's micro-batches in {target}: {exc.message}"]
    if target == "megatron" and virtual_stages > 1 and ranks > 1 and micro_batches < ranks:
        return [f"{schedule} with {micro_batches} micro-batches on {ranks} ranks: megatron's "
                "interleaved schedule needs at least one micro-batch per rank "
                "(--microbatch-group-size-per-virtual-pipeline-stage ≥ pipeline size)"]
    return []


def microbatch_group_size(plan: Plan) -> int:
    """Micro-batches each chunk runs back to back before the next chunk takes over.

    Read off the order the cost model prices (rank 0's forwards of stage 0 before its first
    forward of another stage), so the Megatron-LM export's
    ``--microbatch-group-size-per-virtual-pipeline-stage`` makes Megatron run that order
    (its warm-up count, ``2·(p − 1 − r) + (v − 1)·group``, is the registry's).
    """
    first = plan_schedule(plan).order(plan.num_ranks, plan.micro_batch_count)[0]
    count = 0
    for ps in first:
        if ps.kind != "F":
            continue
        if ps.stage != 0:
            break
        count += 1
    return count
