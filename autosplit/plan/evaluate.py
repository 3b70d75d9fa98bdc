"""Re-cost any plan — searched or hand-edited — under the cost model.

Validation comes first and is explicit, because a runtime handed an invalid plan fails in
confusing ways far from the cause: every unit must be owned exactly once, in order; every
device must exist, match the stage's chip and be used once; batch shares must add up.
"""

from __future__ import annotations

from dataclasses import replace

from autosplit.cluster.schema import Cluster
from autosplit.config import SCHEDULES, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.cost.predict import StageAssignment, peak_flops_of, predict
from autosplit.cost.stage import StageShape, build_tables, make_context
from autosplit.errors import BadInputError
from autosplit.model.types import ModelProfile
from autosplit.plan.schema import Plan
from autosplit.protocols.cost import LayerCostProvider

__all__ = ["evaluate_plan", "validate_plan", "training_of", "assignments_of"]


def training_of(plan: Plan) -> TrainingConfig:
    """The training settings a plan was made for."""
    return TrainingConfig(global_batch=plan.global_batch, seq_len=plan.model.seq_len,
                          dtype=plan.model.dtype, schedule=plan.schedule, zero1=plan.zero1,
                          memory_reserve_gb=plan.memory_reserve_gb)


def validate_plan(plan: Plan, *, model: ModelProfile, cluster: Cluster, source: str = "") -> None:
    """Raise ``BadInputError`` naming the first problem found."""
    src = source or None

    def bad(field: str, msg: str, fix: str) -> BadInputError:
        return BadInputError(msg, file=src, field=field, fix=fix)

    if plan.schedule not in SCHEDULES:
        raise bad("schedule", f"unknown schedule {plan.schedule!r}",
                  f"use one of {', '.join(SCHEDULES)}")
    if plan.micro_batch_count < 1 or plan.global_batch % plan.micro_batch_count:
        raise bad("micro_batch_count", f"{plan.micro_batch_count} micro-batches do not divide "
                  f"the global batch of {plan.global_batch}", "choose a divisor")
    if plan.model.num_layers != model.num_layers:
        raise bad("model.num_layers", f"the plan was made for a model with "
                  f"{plan.model.num_layers} units; {model.source_file} has {model.num_layers}",
                  "re-run `autosplit search` for this model (or pass the right model args)")
    if not plan.stages:
        raise bad("stages", "the plan has no stages", "add at least one stage")
    expected = 0
    for k, st in enumerate(plan.stages):
        if st.layer_start != expected:
            what = (f"units {expected}..{st.layer_start - 1} are missing"
                    if st.layer_start > expected else
                    f"units {st.layer_start}..{expected - 1} are assigned twice")
            raise bad(f"stages[{k}].layer_start", what,
                      f"make stage {k} start at unit {expected}")
        if st.layer_end <= st.layer_start:
            raise bad(f"stages[{k}].layer_end", "a stage must own at least one unit",
                      f"set layer_end > {st.layer_start}")
        expected = st.layer_end
    if expected != model.num_layers:
        raise bad(f"stages[{len(plan.stages) - 1}].layer_end",
                  f"units {expected}..{model.num_layers - 1} are missing"
                  if expected < model.num_layers else
                  f"the model has only {model.num_layers} units (0..{model.num_layers - 1})",
                  f"make the last stage end at {model.num_layers}")
    used: dict[tuple[str, int], int] = {}
    b_mb = plan.micro_batch_samples
    for k, st in enumerate(plan.stages):
        if st.chip not in cluster.chips:
            raise bad(f"stages[{k}].chip", f"chip {st.chip!r} is not in the cluster",
                      f"use one of {', '.join(cluster.chips)}")
        if st.tp < 1 or not st.replicas:
            raise bad(f"stages[{k}]", "a stage needs tp ≥ 1 and at least one replica",
                      "fix tp/replicas")
        for q, rep in enumerate(st.replicas):
            path = f"stages[{k}].replicas[{q}]"
            try:
                node = cluster.node(rep.node)
            except KeyError:
                raise bad(f"{path}.node", f"node {rep.node!r} does not exist in "
                          f"{cluster.source_file or cluster.name}",
                          f"use one of {', '.join(n.name for n in cluster.nodes)}") from None
            if node.chip != st.chip and not cluster.can_share_collective(node.chip, st.chip):
                raise bad(f"{path}.node", f"node {rep.node!r} holds {node.chip}, the stage "
                          f"says {st.chip}, and the two cannot share a collective group",
                          "make the stage's chip match its devices, or list both chips "
                          "under interconnect.collective_groups in the cluster file")
            if rep.chip and rep.chip != node.chip:
                raise bad(f"{path}.chip", f"node {rep.node!r} holds {node.chip}, the replica "
                          f"says {rep.chip}", f"set chip to {node.chip!r} (or leave it out)")
            if len(rep.local_indices) != st.tp:
                raise bad(f"{path}.local_indices", f"{len(rep.local_indices)} devices for "
                          f"TP={st.tp}", "a replica holds exactly tp devices of one node")
            for i in rep.local_indices:
                if not 0 <= i < node.devices:
                    raise bad(f"{path}.local_indices", f"device {rep.node}:{i} does not exist "
                              f"({rep.node} has {node.devices} devices)",
                              f"use indices 0..{node.devices - 1}")
                if (rep.node, i) in used:
                    raise bad(f"{path}.local_indices", f"device {rep.node}:{i} is used twice "
                              f"(also by stage {used[(rep.node, i)]})",
                              "give every device to one stage only")
                used[(rep.node, i)] = k
            if rep.batch_share < 1:
                raise bad(f"{path}.batch_share", "each replica needs at least one sample",
                          "set batch_share ≥ 1")
        total = sum(rep.batch_share for rep in st.replicas)
        if total != b_mb:
            raise bad(f"stages[{k}].replicas", f"batch shares add up to {total}, but a "
                      f"micro-batch has {b_mb} samples (global batch {plan.global_batch} / "
                      f"{plan.micro_batch_count} micro-batches)",
                      "make each stage's batch_share values sum to the micro-batch size")


def assignments_of(plan: Plan, *, model: ModelProfile, cluster: Cluster,
                   costs: LayerCostProvider) -> list[StageAssignment]:
    """Bind each plan stage to the cost model (after ``validate_plan``)."""
    training = training_of(plan)
    shapes = [StageShape(chip=st.chip, tp=st.tp, replicas=st.replicas) for st in plan.stages]
    out = []
    for s, (st, shape) in enumerate(zip(plan.stages, shapes, strict=True)):
        node = cluster.node(shape.replicas[0].node)
        tables = build_tables(model=model, chip=cluster.chips[st.chip], node=node, tp=st.tp,
                              share=shape.max_share, costs=costs, dtype=training.dtype)

        def lane_tables(chip: str, lane_node, share: int, _tp: int = st.tp):
            return build_tables(model=model, chip=cluster.chips[chip], node=lane_node, tp=_tp,
                                share=share, costs=costs, dtype=training.dtype)

        ctx = make_context(cluster=cluster, shape=shape, tables=tables, index=s,
                           num_stages=len(shapes), micro_batches=plan.micro_batch_count,
                           training=training, prev=shapes[s - 1] if s else None,
                           nxt=shapes[s + 1] if s + 1 < len(shapes) else None,
                           lane_tables=lane_tables)
        out.append(StageAssignment(ctx=ctx, start=st.layer_start, end=st.layer_end,
                                   recompute=st.recompute))
    return out


def evaluate_plan(plan: Plan, *, model: ModelProfile, cluster: Cluster,
                  costs: LayerCostProvider | None = None, source: str = "") -> Plan:
    """Validate ``plan`` and return it with a fresh ``prediction``."""
    costs = costs or AnalyticCosts()
    validate_plan(plan, model=model, cluster=cluster, source=source)
    stages = assignments_of(plan, model=model, cluster=cluster, costs=costs)
    pred = predict(stages, micro_batches=plan.micro_batch_count, model=model,
                   training=training_of(plan),
                   peak_flops=peak_flops_of(stages, cluster, plan.model.dtype))
    new_stages = tuple(replace(st, cost_source=a.ctx.tables.cost_source(a.start, a.end))
                       for st, a in zip(plan.stages, stages, strict=True))
    return replace(plan, prediction=pred, stages=new_stages)
