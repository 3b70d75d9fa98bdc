"""Re-cost any plan — searched or hand-edited — under the cost model.

Validation comes first and is explicit, because a runtime handed an invalid plan fails in
confusing ways far from the cause: every unit must be owned exactly once, in order; every
device must exist, match the stage's chip and be used once; batch shares must add up. What the
plan must satisfy on its own is ``autosplit.plan.check`` (run by every reader of a plan file);
what it must satisfy against the model and the cluster is ``validate_plan`` here.
"""

from __future__ import annotations

from dataclasses import replace

from autosplit.cluster.schema import Cluster
from autosplit.config import TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.cost.predict import StageAssignment, iteration_time, peak_flops_of, predict
from autosplit.cost.stage import StageShape, build_tables, make_context
from autosplit.errors import BadInputError
from autosplit.model.types import ModelProfile
from autosplit.plan.check import check_plan_structure
from autosplit.plan.schema import Plan
from autosplit.protocols.cost import LayerCostProvider

__all__ = ["evaluate_plan", "validate_plan", "training_of", "assignments_of", "closed_form_time"]


def training_of(plan: Plan) -> TrainingConfig:
    """The training settings a plan was made for."""
    return TrainingConfig(global_batch=plan.global_batch, seq_len=plan.model.seq_len,
                          dtype=plan.model.dtype, schedule=plan.schedule,
                          virtual_stages=plan.virtual_stages, zero1=plan.zero1,
                          memory_reserve_gb=plan.memory_reserve_gb,
                          grad_bucket_mb=plan.grad_bucket_mb, grad_overlap=plan.grad_overlap)


def validate_plan(plan: Plan, *, model: ModelProfile, cluster: Cluster, source: str = "") -> None:
    """Raise ``BadInputError`` naming the first problem found: the plan's own consistency
    (``check_plan_structure``), then its fit to the model and the cluster."""
    check_plan_structure(plan, source=source)
    src = source or None

    def bad(field: str, msg: str, fix: str) -> BadInputError:
        return BadInputError(msg, file=src, field=field, fix=fix)

    if plan.model.num_layers != model.num_layers:
        raise bad("model.num_layers", f"the plan was made for a model with "
                  f"{plan.model.num_layers} units; {model.source_file} has {model.num_layers}",
                  "re-run `autosplit search` for this model (or pass the right model args)")
    for k, st in enumerate(plan.stages):
        if st.chip not in cluster.chips:
            raise bad(f"stages[{k}].chip", f"chip {st.chip!r} is not in the cluster",
                      f"use one of {', '.join(cluster.chips)}")
        for q, rep in enumerate(st.replicas):
            path = f"stages[{k}].replicas[{q}]"
            try:
                node = cluster.node(rep.node)
            except KeyError:
                raise bad(f"{path}.node", f"node {rep.node!r} does not exist in "
                          f"{cluster.source_file or cluster.name}",
                          f"use one of {_few(n.name for n in cluster.nodes)}") from None
            if node.chip != st.chip and not cluster.can_share_collective(node.chip, st.chip):
                raise bad(f"{path}.node", f"node {rep.node!r} holds {node.chip}, the stage "
                          f"says {st.chip}, and the two cannot share a collective group",
                          "make the stage's chip match its devices, or list both chips "
                          "under interconnect.collective_groups in the cluster file")
            if rep.chip and rep.chip != node.chip:
                raise bad(f"{path}.chip", f"node {rep.node!r} holds {node.chip}, the replica "
                          f"says {rep.chip}", f"set chip to {node.chip!r} (or leave it out)")
            for i in rep.local_indices:
                if i >= node.devices:
                    raise bad(f"{path}.local_indices", f"device {rep.node}:{i} does not exist "
                              f"({rep.node} has {node.devices} devices)",
                              f"use indices 0..{node.devices - 1}")
        chips = sorted({cluster.node(rep.node).chip for rep in st.replicas})
        if st.replicas and st.chip not in chips:
            # The stage's chip names the tables its costs are read from: it must be one its
            # devices have.
            raise bad(f"stages[{k}].chip", f"the stage says {st.chip} but its devices are "
                      f"{', '.join(chips)}", f"set chip to {chips[0]!r} (the faster chip of "
                      "a mixed stage)")


def _few(names, limit: int = 8) -> str:
    """The first few names of a possibly huge list, for a message."""
    names = list(names)
    more = f", … ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


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


def closed_form_time(plan: Plan, *, model: ModelProfile, cluster: Cluster,
                     costs: LayerCostProvider | None = None) -> float:
    """The search's objective for ``plan``: the closed-form iteration time
    ``Σu + (m − 1)·max u`` plus transfers and tail (``cost.predict.iteration_time``), which the
    search's bounds hold for. The plan's prediction is its schedule's simulation, which the
    closed form estimates; the referee and the benchmark compare the search under this one."""
    stages = assignments_of(plan, model=model, cluster=cluster, costs=costs or AnalyticCosts())
    return iteration_time(stages, micro_batches=plan.micro_batch_count)
