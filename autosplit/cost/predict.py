"""Turn a fully specified pipeline (stages with layer ranges) into a ``Prediction``.

Shared by the search (to report the plan it picked) and by ``autosplit evaluate`` (to
re-cost any plan), so both always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autosplit.cluster.schema import Cluster
from autosplit.config import TrainingConfig
from autosplit.cost.memory import optimizer_bytes_per_param, static_bytes_per_param
from autosplit.cost.pipeline import pipeline_time, tail_time
from autosplit.cost.stage import (
    StageContext,
    _lane_busy,
    boundary_p2p,
    lane_memory,
    range_busy,
    range_tail,
)
from autosplit.model.types import ModelProfile
from autosplit.plan.schema import MemoryBreakdown, Prediction, StagePrediction

__all__ = ["StageAssignment", "predict", "iteration_time", "peak_flops_of"]


@dataclass(frozen=True)
class StageAssignment:
    """A stage context with its unit range ``[start, end)`` and recompute choice."""

    ctx: StageContext
    start: int
    end: int
    recompute: bool


def _float(x) -> float:
    return float(x)


@dataclass(frozen=True)
class _Parts:
    """Per-stage ingredients of the iteration time, in stage order."""

    busy: list[float]
    fill: list[float]  # one-way transfer out over an overlapping link (0 when blocking)
    dp: list[float]
    opt: list[float]
    bwd: list[float]

    def pipeline(self, micro_batches: int) -> float:
        return pipeline_time(self.busy, micro_batches=micro_batches, p2p=self.fill)

    def tail(self) -> float:
        return tail_time(dp_s=self.dp, opt_s=self.opt, bwd_s=self.bwd)


def _parts(stages: Sequence[StageAssignment]) -> _Parts:
    parts = _Parts([], [], [], [], [])
    for st in stages:
        parts.busy.append(_float(range_busy(st.ctx, st.start, st.end, st.recompute)))
        parts.fill.append(0.0 if StageContext.blocking(st.ctx.link_out)
                          else _float(boundary_p2p(st.ctx, st.end)))
        d, o = range_tail(st.ctx, st.start, st.end)
        parts.dp.append(_float(d))
        parts.opt.append(_float(o))
        parts.bwd.append(_bwd_part(st))
    return parts


def iteration_time(stages: Sequence[StageAssignment], *, micro_batches: int) -> float:
    """The objective the search minimises: pipeline time plus the post-pipeline tail."""
    parts = _parts(stages)
    return parts.pipeline(micro_batches) + parts.tail()


def _bwd_part(st: StageAssignment) -> float:
    t = st.ctx.tables
    i, j = st.start, st.end
    b = (t.bwd[j] - t.bwd[i]) + (t.tpc[j] - t.tpc[i]) / 2
    if st.recompute:
        b += t.rec[j] - t.rec[i]
    return float(b)


def predict(stages: Sequence[StageAssignment], *, micro_batches: int, model: ModelProfile,
            training: TrainingConfig, peak_flops: float) -> Prediction:
    """Full prediction: per-stage times and memory, iteration time, throughput and MFU.

    ``peak_flops`` is the summed dense peak of the devices the plan uses; MFU counts model
    FLOPs only (recomputation excluded), as in Chowdhery et al. 2022 (PaLM).
    """
    preds: list[StagePrediction] = []
    parts = _parts(stages)
    for k, st in enumerate(stages):
        c, t, i, j = st.ctx, st.ctx.tables, st.start, st.end
        p2p_out = _float(boundary_p2p(c, j))
        p2p_in = 0.0
        if st.ctx.index > 0:
            prev = stages[st.ctx.index - 1]
            p2p_in = _float(boundary_p2p(prev.ctx, prev.end))
        lane, static, act = lane_memory(c, i, j, st.recompute)
        tp, dp = c.shape.tp, c.shape.dp
        params = (t.params[j] - t.params[i]) / tp
        weights = params * training.dtype_bytes
        grads = params * (static_bytes_per_param(training) - training.dtype_bytes)
        optim = params * optimizer_bytes_per_param(training, dp=dp)
        assert abs(weights + grads + optim - float(static)) < 1e-3 * max(1.0, float(static))
        # Times of the slowest lane (the one that paces the stage).
        t = max((ln.tables for ln in c.all_lanes()),
                key=lambda tb: float(_lane_busy(tb, i, j, st.recompute)))
        preds.append(StagePrediction(
            index=c.index,
            fwd_s=float(t.fwd[j] - t.fwd[i]),
            bwd_s=float(t.bwd[j] - t.bwd[i]),
            recompute_s=float(t.rec[j] - t.rec[i]) if st.recompute else 0.0,
            tp_comm_s=float(t.tpc[j] - t.tpc[i]),
            p2p_in_s=p2p_in,
            p2p_out_s=p2p_out,
            busy_s=parts.busy[k],
            dp_allreduce_s=parts.dp[k],
            optimizer_s=parts.opt[k],
            memory=MemoryBreakdown(
                weights=float(weights), gradients=float(grads), optimizer=float(optim),
                activations=_float(act), reserve=training.memory_reserve_gb * 1e9,
                capacity=lane.capacity + training.memory_reserve_gb * 1e9,
            ),
            in_flight=c.in_flight,
        ))
    busy_l, dp_l, opt_l = parts.busy, parts.dp, parts.opt
    pipe = parts.pipeline(micro_batches)
    total = pipe + parts.tail()
    samples = training.global_batch
    tokens = samples * model.tokens_per_sample
    model_flops = model.flops_per_sample * samples
    bottleneck = max(range(len(busy_l)), key=lambda k: busy_l[k]) if busy_l else 0
    ideal = sum(busy_l) / max(len(busy_l), 1) * micro_batches
    return Prediction(
        iteration_s=total,
        tokens_per_s=tokens / total if total > 0 else 0.0,
        samples_per_s=samples / total if total > 0 else 0.0,
        mfu=model_flops / (total * peak_flops) if total > 0 and peak_flops > 0 else 0.0,
        pipeline_s=pipe,
        bubble_s=max(pipe - ideal, 0.0),
        dp_sync_s=max(dp_l) if dp_l else 0.0,
        optimizer_s=max(opt_l) if opt_l else 0.0,
        bottleneck_stage=bottleneck,
        stages=tuple(preds),
    )


def peak_flops_of(stages: Sequence[StageAssignment], cluster: Cluster, dtype: str) -> float:
    """Summed dense peak FLOP/s of the devices the stages use (the MFU denominator); each
    replica counts at its own chip's peak, which differs between replicas of a mixed stage."""
    total = 0.0
    for st in stages:
        for rep in st.ctx.shape.replicas:
            chip = cluster.chips[rep.chip or st.ctx.shape.chip]
            total += chip.peak_tflops(dtype) * 1e12 * st.ctx.shape.tp
    return total
