"""Hand-built plans for the report tests: a three-stage, two-vendor split with every field
set, so the report can be checked without running a search."""

from __future__ import annotations

from dataclasses import replace

from autosplit.plan.schema import (
    Alternative,
    ClusterRef,
    MemoryBreakdown,
    ModelRef,
    Plan,
    Prediction,
    Replica,
    SearchStats,
    StagePlan,
    StagePrediction,
)

MS = 1e-3
GB = 1e9
NUM_UNITS = 26  # pre, layers.0 … layers.23, post


def unit_names(start: int, end: int) -> tuple[str, ...]:
    names = ["embed"] + [f"layers.{i}" for i in range(NUM_UNITS - 2)] + ["head"]
    return tuple(names[start:end])


def _stage_pred(index: int, *, fwd: float, bwd: float, rec: float, tp: float, p2p_in: float,
                p2p_out: float, blocking_in: bool, blocking_out: bool, weights: float,
                act: float, capacity: float, in_flight: int) -> StagePrediction:
    busy = fwd + bwd + rec + tp + (2 * p2p_in if blocking_in else 0.0) + (
        2 * p2p_out if blocking_out else 0.0)
    return StagePrediction(
        index=index, fwd_s=fwd, bwd_s=bwd, recompute_s=rec, tp_comm_s=tp, p2p_in_s=p2p_in,
        p2p_out_s=p2p_out, busy_s=busy, dp_allreduce_s=30 * MS, optimizer_s=10 * MS,
        memory=MemoryBreakdown(weights=weights, gradients=weights, optimizer=6 * weights,
                               activations=act, reserve=2 * GB, capacity=capacity),
        in_flight=in_flight)


def example_plan(*, schedule: str = "1f1b", blocking: bool = True,
                 micro_batches: int = 16) -> Plan:
    """H100 (tp2×dp2) → Ascend 910B (tp4, recompute, measured) → H100 (tp2×dp2)."""
    stages = (
        StagePlan(index=0, chip="H100", layer_start=0, layer_end=10,
                  layer_names=unit_names(0, 10),
                  module_names=("tok_embeddings",) + tuple(f"layers.{i}" for i in range(9)),
                  tp=2, replicas=(Replica("h100-a", (0, 1), 2), Replica("h100-a", (2, 3), 2)),
                  recompute=False),
        StagePlan(index=1, chip="Ascend910B", layer_start=10, layer_end=18,
                  layer_names=unit_names(10, 18),
                  module_names=tuple(f"layers.{i}" for i in range(9, 17)),
                  tp=4, replicas=(Replica("ascend-a", (0, 1, 2, 3), 4),), recompute=True,
                  cost_source="measured"),
        StagePlan(index=2, chip="H100", layer_start=18, layer_end=26,
                  layer_names=unit_names(18, 26),
                  module_names=tuple(f"layers.{i}" for i in range(17, 24)) + ("norm", "output"),
                  tp=2, replicas=(Replica("h100-a", (4, 5), 2), Replica("h100-a", (6, 7), 2)),
                  recompute=False),
    )
    preds = (
        _stage_pred(0, fwd=20 * MS, bwd=40 * MS, rec=0.0, tp=6 * MS, p2p_in=0.0,
                    p2p_out=4 * MS, blocking_in=False, blocking_out=blocking,
                    weights=1.6 * GB, act=21.0 * GB, capacity=80 * GB, in_flight=3),
        _stage_pred(1, fwd=16 * MS, bwd=32 * MS, rec=16 * MS, tp=6 * MS, p2p_in=4 * MS,
                    p2p_out=4 * MS, blocking_in=blocking, blocking_out=blocking,
                    weights=1.4 * GB, act=44.5 * GB, capacity=64 * GB, in_flight=2),
        _stage_pred(2, fwd=18 * MS, bwd=36 * MS, rec=0.0, tp=6 * MS, p2p_in=4 * MS,
                    p2p_out=0.0, blocking_in=blocking, blocking_out=False,
                    weights=1.9 * GB, act=6.2 * GB, capacity=80 * GB, in_flight=1),
    )
    busy = [sp.busy_s for sp in preds]
    fill = 0.0 if blocking else 2 * 4 * MS * 2
    pipe = sum(busy) + (micro_batches - 1) * max(busy) + fill
    total = pipe + 40 * MS
    tokens = 64 * 2048
    pred = Prediction(
        iteration_s=total, tokens_per_s=tokens / total, samples_per_s=64 / total, mfu=0.3812,
        pipeline_s=pipe, bubble_s=pipe - sum(busy) / 3 * micro_batches, dp_sync_s=30 * MS,
        optimizer_s=10 * MS, bottleneck_stage=1, stages=preds)
    return Plan(
        model=ModelRef(name="gpt-1.3b", source_file="experiments/models/gpt.py",
                       fingerprint="abc123", num_layers=NUM_UNITS, params=1_310_000_000,
                       seq_len=2048, dtype="bf16", tokens_per_sample=2048, block_list="layers",
                       model_args={"size": "1.3b"}),
        cluster=ClusterRef(name="h100+910b", source_file="experiments/clusters/x.yaml",
                           num_devices=16, chips=("H100", "Ascend910B")),
        global_batch=64, micro_batch_count=micro_batches, schedule=schedule, zero1=False,
        stages=stages, prediction=pred,
        idle_devices=("ascend-a:4", "ascend-a:5", "ascend-a:6", "ascend-a:7"),
        idle_note="Using all 16 devices is 4.1% slower (stage 1 memory-bound).",
        search=SearchStats(time_s=3.21, explored=18_422, pruned={"memory": 9_120, "bound": 7_310},
                           level1_candidates=64, exact_solves=211, solver="dp",
                           lower_bound_s=total * 0.97, optimality_gap=0.0309,
                           notes=("stage order fixed by chip speed",)),
        alternatives=(Alternative(summary="H100 tp4 → 910B tp4", iteration_s=total * 1.06,
                                  ratio_to_best=1.06,
                                  stages=({"layer_start": 0, "layer_end": 14},
                                          {"layer_start": 14, "layer_end": 26})),),
    )


def slower_variant(plan: Plan, *, factor: float, bounds: tuple[int, ...]) -> Plan:
    """The same devices with other layer bounds and a prediction ``factor`` times slower."""
    assert plan.prediction is not None
    edges = (0, *bounds, NUM_UNITS)
    stages = tuple(replace(st, layer_start=edges[i], layer_end=edges[i + 1],
                           layer_names=unit_names(edges[i], edges[i + 1]), recompute=False)
                   for i, st in enumerate(plan.stages))
    pred = plan.prediction
    new_pred = replace(pred, iteration_s=pred.iteration_s * factor,
                       tokens_per_s=pred.tokens_per_s / factor, mfu=pred.mfu / factor)
    return replace(plan, stages=stages, prediction=new_pred, alternatives=())
