"""Turn a fully specified pipeline (stages with layer ranges) into a ``Prediction``.

Shared by the search (to report the plan it picked) and by ``autosplit evaluate`` (to
re-cost any plan), so both always agree. The pipeline time, the bubble and the iteration come
from the event simulation of the plan's schedule (``cost.schedule_sim``), the one definition
the report draws too; ``iteration_time`` is the closed form the search ranks candidates by
(``cost.pipeline``: exact for GPipe and 1F1B with equal stages, see docs/cost-model.md §4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from autosplit.cluster.schema import Cluster
from autosplit.config import TrainingConfig
from autosplit.cost.memory import (
    optimizer_bytes_per_param,
    static_bytes_per_param,
    unusable_bytes,
)
from autosplit.cost.pipeline import pipeline_time, tail_time
from autosplit.cost.schedule import WEIGHT_GRAD_SHARE, get_schedule
from autosplit.cost.schedule_sim import stage_times_from_prediction
from autosplit.cost.stage import (
    StageContext,
    boundary_p2p,
    compute_time,
    drain_time,
    lane_activation_terms,
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
    drain: list[float]  # what later stages' tails hide behind (``cost.stage.drain_time``)
    in_flight: list[int]

    def pipeline(self, micro_batches: int) -> float:
        return pipeline_time(self.busy, micro_batches=micro_batches, p2p=self.fill,
                             in_flight=self.in_flight)

    def tail(self) -> float:
        return tail_time(dp_s=self.dp, opt_s=self.opt, drain_s=self.drain)


def _parts(stages: Sequence[StageAssignment]) -> _Parts:
    parts = _Parts([], [], [], [], [], [])
    for st in stages:
        parts.busy.append(_float(range_busy(st.ctx, st.start, st.end, st.recompute)))
        parts.fill.append(0.0 if StageContext.blocking(st.ctx.link_out)
                          else _float(boundary_p2p(st.ctx, st.end)))
        d, o = range_tail(st.ctx, st.start, st.end)
        parts.dp.append(_float(d))
        parts.opt.append(_float(o))
        parts.drain.append(_float(drain_time(st.ctx, st.start, st.end, st.recompute)))
        parts.in_flight.append(st.ctx.in_flight)
    return parts


def iteration_time(stages: Sequence[StageAssignment], *, micro_batches: int) -> float:
    """The objective the search minimises: pipeline time plus the post-pipeline tail."""
    parts = _parts(stages)
    return parts.pipeline(micro_batches) + parts.tail()


def predict(stages: Sequence[StageAssignment], *, micro_batches: int, model: ModelProfile,
            training: TrainingConfig, peak_flops: float) -> Prediction:
    """Full prediction: per-stage times and memory, iteration time, throughput and MFU.

    ``peak_flops`` is the summed dense peak of the devices the plan uses; MFU counts model
    FLOPs only (recomputation excluded), as in Chowdhery et al. 2022 (PaLM).
    """
    schedule = get_schedule(training.schedule, virtual_stages=training.virtual_stages)
    preds: list[StagePrediction] = []
    per_mb: list[float] = []
    work: list[float] = []
    parts = _parts(stages)
    for k, st in enumerate(stages):
        c, t, i, j = st.ctx, st.ctx.tables, st.start, st.end
        p2p_out = _float(boundary_p2p(c, j))
        p2p_in = 0.0
        if st.ctx.index > 0:
            prev = stages[st.ctx.index - 1]
            p2p_in = _float(boundary_p2p(prev.ctx, prev.end))
        lane, static, act = lane_memory(c, i, j, st.recompute)
        per, ws = lane_activation_terms(c, lane, i, j, st.recompute)
        per_mb.append(per)
        work.append(ws)
        tp, dp = c.shape.tp, c.shape.dp
        params = (t.params[j] - t.params[i]) / tp
        weights = params * training.dtype_bytes
        grads = params * (static_bytes_per_param(training) - training.dtype_bytes)
        optim = params * optimizer_bytes_per_param(training, dp=dp)
        assert abs(weights + grads + optim - float(static)) < 1e-3 * max(1.0, float(static))
        # Times of the slowest lane (the one that paces the stage).
        t = max((ln.tables for ln in c.all_lanes()),
                key=lambda tb: float(compute_time(tb, i, j, st.recompute)))
        bwd = float(t.bwd[j] - t.bwd[i])
        preds.append(StagePrediction(
            index=c.index,
            fwd_s=float(t.fwd[j] - t.fwd[i]),
            bwd_s=bwd,
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
                workspace=lane.chip.workspace_bytes,
                capacity=lane.capacity + unusable_bytes(lane.chip, training),
            ),
            in_flight=c.in_flight,
            bwd_weight_s=WEIGHT_GRAD_SHARE * bwd,
            blocking_out=StageContext.blocking(c.link_out),
        ))
    if schedule.virtual_stages > 1:
        ranks = [schedule.rank_of(s, schedule.num_ranks(len(preds))) for s in range(len(preds))]
        peaks = schedule.rank_activation_peaks(per_mb, work, micro_batches)
        preds = _rank_memory(preds, ranks, peaks)
    busy_l, dp_l, opt_l = parts.busy, parts.dp, parts.opt
    sim = schedule.simulate(stage_times_from_prediction(preds), micro_batches)
    total = sim.makespan_s
    samples = training.global_batch
    tokens = samples * model.tokens_per_sample
    model_flops = model.flops_per_sample * samples
    bottleneck = max(range(len(busy_l)), key=lambda k: busy_l[k]) if busy_l else 0
    return Prediction(
        iteration_s=total,
        tokens_per_s=tokens / total if total > 0 else 0.0,
        samples_per_s=samples / total if total > 0 else 0.0,
        mfu=model_flops / (total * peak_flops) if total > 0 and peak_flops > 0 else 0.0,
        pipeline_s=sim.pipeline_s,
        bubble_s=sim.bubble_s,
        dp_sync_s=max(dp_l) if dp_l else 0.0,
        optimizer_s=max(opt_l) if opt_l else 0.0,
        bottleneck_stage=bottleneck,
        stages=tuple(preds),
    )


def _rank_memory(preds: list[StagePrediction], ranks: Sequence[int],
                 activation_peaks: Sequence[float]) -> list[StagePrediction]:
    """Give each virtual stage the memory of its rank's devices, which hold every chunk of
    the rank: the chunks' weights, gradients and optimizer states add up, and the
    activations are the rank's peak along its order of passes (``activation_peaks``, one
    per rank), when the chunks' live micro-batches are summed at each moment."""
    total: dict[int, MemoryBreakdown] = {}
    for sp, r in zip(preds, ranks, strict=True):
        mem = sp.memory
        acc = total.get(r)
        total[r] = mem if acc is None else replace(
            acc, weights=acc.weights + mem.weights, gradients=acc.gradients + mem.gradients,
            optimizer=acc.optimizer + mem.optimizer)
    return [replace(sp, memory=replace(total[r], activations=float(activation_peaks[r])))
            for sp, r in zip(preds, ranks, strict=True)]


def peak_flops_of(stages: Sequence[StageAssignment], cluster: Cluster, dtype: str) -> float:
    """Summed dense peak FLOP/s of the devices the stages use (the MFU denominator); each
    replica counts at its own chip's peak, which differs between replicas of a mixed stage.
    The virtual stages of one rank share its devices, which count once."""
    total = 0.0
    seen: set[tuple[str, tuple[int, ...]]] = set()
    for st in stages:
        for rep in st.ctx.shape.replicas:
            if (rep.node, rep.local_indices) in seen:
                continue
            seen.add((rep.node, rep.local_indices))
            chip = cluster.chips[rep.chip or st.ctx.shape.chip]
            total += chip.peak_tflops(dtype) * 1e12 * st.ctx.shape.tp
    return total
