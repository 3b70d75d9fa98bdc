"""What a plan must satisfy on its own, before any model or cluster is loaded.

Every command that reads a plan (``evaluate``, ``report``, ``export``, ``run``, ``validate``)
gets it from ``autosplit.plan.io.load_plan``, which runs these checks, so a plan that one
command refuses is refused by all of them with the same message — a plan missing its last
stage cannot be exported while ``evaluate`` rejects it. The checks that need the model or the
cluster (unit count of the model file, nodes and chips that exist) are
``autosplit.plan.evaluate.validate_plan``, which runs this first.
"""

from __future__ import annotations

from collections.abc import Callable

from autosplit.config import DTYPE_BYTES
from autosplit.cost.schedule import get_schedule
from autosplit.errors import BadInputError
from autosplit.plan.schema import Plan, StagePlan

__all__ = ["check_plan_structure"]

_Bad = Callable[[str, str, str], BadInputError]


def check_plan_structure(plan: Plan, *, source: str = "") -> None:
    """Raise ``BadInputError`` naming the first inconsistency of ``plan`` with itself."""
    src = source or None

    def bad(field: str, msg: str, fix: str) -> BadInputError:
        return BadInputError(msg, file=src, field=field, fix=fix)

    if plan.model.dtype not in DTYPE_BYTES:
        raise bad("model.dtype", f"unknown dtype {plan.model.dtype!r}",
                  f"use one of {', '.join(DTYPE_BYTES)}")
    for field, value in (("global_batch", plan.global_batch),
                         ("model.num_layers", plan.model.num_layers),
                         ("model.seq_len", plan.model.seq_len)):
        if value < 1:
            raise bad(field, f"must be at least 1, got {value}", "give a positive whole number")
    if plan.memory_reserve_gb < 0:
        raise bad("memory_reserve_gb", f"must be 0 or more, got {plan.memory_reserve_gb:g}",
                  "give the GB per device kept free for the framework, e.g. 2")
    if plan.micro_batch_count < 1 or plan.global_batch % plan.micro_batch_count:
        raise bad("micro_batch_count", f"{plan.micro_batch_count} micro-batches do not divide "
                  f"the global batch of {plan.global_batch}", "choose a divisor")
    if not plan.stages:
        raise bad("stages", "the plan has no stages", "add at least one stage")
    _validate_schedule(plan, src)
    _check_coverage(plan, bad)
    used: dict[tuple[str, int], int] = {}
    for k, st in enumerate(plan.stages):
        _check_stage(plan, k, st, used, bad)


def _check_coverage(plan: Plan, bad: _Bad) -> None:
    """Stages own the units 0 … num_layers-1 contiguously, each exactly once, in order."""
    expected = 0
    for k, st in enumerate(plan.stages):
        if st.index != k:
            raise bad(f"stages[{k}].index", f"stage {k} says index {st.index}",
                      f"set index to {k} (stages are listed in pipeline order)")
        if st.layer_start != expected:
            what = (f"units {expected}..{st.layer_start - 1} are missing"
                    if st.layer_start > expected else
                    f"units {st.layer_start}..{expected - 1} are assigned twice")
            after = ("the pipeline starts at unit 0" if k == 0 else
                     f"the previous stage ended at unit {expected}")
            raise bad(f"stages[{k}].layer_start", f"stage {k} covers units [{st.layer_start}, "
                      f"{st.layer_end}) but {after}: {what}",
                      f"make stage {k} start at unit {expected}")
        if st.layer_end <= st.layer_start:
            raise bad(f"stages[{k}].layer_end", "a stage must own at least one unit",
                      f"set layer_end > {st.layer_start}")
        expected = st.layer_end
    units = plan.model.num_layers
    if expected != units:
        last = len(plan.stages) - 1
        what = (f"units {expected}..{units - 1} are missing" if expected < units else
                f"units {units}..{expected - 1} do not exist")
        raise bad(f"stages[{last}].layer_end",
                  f"the stages cover units 0..{expected - 1}, but the model has {units} units "
                  f"(model.num_layers): {what}",
                  f"make the last stage end at {units} (or correct model.num_layers)")


def _check_stage(plan: Plan, k: int, st: StagePlan, used: dict[tuple[str, int], int],
                 bad: _Bad) -> None:
    if st.tp < 1 or not st.replicas:
        raise bad(f"stages[{k}]", "a stage needs tp ≥ 1 and at least one replica",
                  "fix tp/replicas")
    for q, rep in enumerate(st.replicas):
        path = f"stages[{k}].replicas[{q}]"
        if len(rep.local_indices) != st.tp:
            raise bad(f"{path}.local_indices", f"{len(rep.local_indices)} device(s) for "
                      f"tensor parallelism of degree {st.tp} (tp={st.tp})",
                      "a replica holds exactly tp devices of one node")
        for i in rep.local_indices:
            if i < 0:
                raise bad(f"{path}.local_indices", f"device {rep.node}:{i} does not exist "
                          "(indices start at 0)", "use indices 0, 1, …")
            other = used.get((rep.node, i))
            if other is not None and (other == k or plan.stages[other].pipeline_rank
                                      != st.pipeline_rank):
                raise bad(f"{path}.local_indices", f"device {rep.node}:{i} is used twice "
                          f"(also by stage {other})",
                          "give every device to one stage only (only the virtual stages of "
                          "one rank share devices)")
            used[(rep.node, i)] = k
        if rep.batch_share < 1:
            raise bad(f"{path}.batch_share", "each replica needs at least one sample",
                      "set batch_share ≥ 1")
    total = sum(rep.batch_share for rep in st.replicas)
    if total != plan.micro_batch_samples:
        raise bad(f"stages[{k}].replicas", f"batch shares add up to {total}, but a "
                  f"micro-batch has {plan.micro_batch_samples} samples (global batch "
                  f"{plan.global_batch} / {plan.micro_batch_count} micro-batches)",
                  "make each stage's batch_share values sum to the micro-batch size")


def _validate_schedule(plan: Plan, src: str | None) -> None:
    """The schedule exists, takes this many micro-batches, and the stages sit on its ranks:
    stage ``s`` on ``rank_of(s)``, and the virtual stages of one rank on the same devices
    (same chip, TP degree and replicas), since they are chunks of one pipeline position."""
    try:
        schedule = get_schedule(plan.schedule, virtual_stages=plan.virtual_stages)
        ranks = schedule.num_ranks(len(plan.stages)) if plan.stages else 0
        if ranks:
            schedule.check(ranks, plan.micro_batch_count)
    except BadInputError as exc:
        raise BadInputError(exc.message, file=src, field=exc.field, fix=exc.fix) from None
    first: dict[int, int] = {}
    for k, st in enumerate(plan.stages):
        want = schedule.rank_of(k, ranks)
        if st.pipeline_rank != want:
            raise BadInputError(f"{plan.schedule} with {plan.virtual_stages} virtual stage(s) "
                                f"per rank runs stage {k} on rank {want}, the plan says "
                                f"{st.pipeline_rank}", file=src, field=f"stages[{k}].rank",
                                fix=f"set rank to {want}")
        lead = first.setdefault(want, k)
        head = plan.stages[lead]
        if (st.chip, st.tp, st.replicas) != (head.chip, head.tp, head.replicas):
            raise BadInputError(f"stages {lead} and {k} are virtual stages of rank {want} but "
                                "run on different devices", file=src,
                                field=f"stages[{k}].replicas",
                                fix=f"give stage {k} the chip, tp and replicas of stage {lead}")
