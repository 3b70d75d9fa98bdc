"""Replay a pipeline schedule as events, so the report can draw what each stage does when.

The cost model predicts an iteration time from a closed formula; a Gantt chart needs the
actual start and end of every forward and backward pass. This module simulates one iteration
of the plan's schedule from per-stage times:

- ``F(s, k)`` (forward of micro-batch ``k`` on stage ``s``) may start once ``F(s-1, k)`` has
  finished and its activations have crossed the link (``p2p`` of the boundary ``s-1 → s``);
- ``B(s, k)`` may start once ``B(s+1, k)`` has finished and its gradients have crossed back
  (the same boundary, the same transfer time); the last stage's ``B(s, k)`` follows its own
  ``F(s, k)``;
- each stage runs its passes one at a time, in the order its schedule dictates. Under 1F1B
  stage ``s`` of ``p`` first runs ``min(p - s, m)`` forwards (its warm-up), then alternates
  one backward and one forward until the forwards run out, then drains its backwards; under
  GPipe it runs all ``m`` forwards, then all ``m`` backwards.

Transfers do not occupy the stage (the send is asynchronous), they only delay the receiver;
they are recorded as intervals of their own so the chart can show them. After its last
backward each stage runs its data-parallel gradient all-reduce and its optimizer step.

With ``p`` equal stages of forward ``f`` and backward ``b`` and free transfers both schedules
take ``(m + p - 1)·(f + b)``; the tests check that and the dependency rules above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autosplit.config import SCHEDULES
from autosplit.errors import BadInputError
from autosplit.plan.schema import Prediction, StagePrediction

__all__ = [
    "StageTimes",
    "Interval",
    "Timeline",
    "simulate",
    "stage_order",
    "stage_times_from_prediction",
]

#: Interval kinds, in the order a legend lists them.
KINDS: tuple[str, ...] = ("F", "B", "p2p_fwd", "p2p_bwd", "dp_sync", "optimizer")


@dataclass(frozen=True)
class StageTimes:
    """What one stage costs, in seconds.

    ``fwd_s``/``bwd_s`` are the full durations of one forward and one backward pass of a
    micro-batch: compute, tensor-parallel collectives, recomputation (backward) and any
    transfer over a *blocking* link, which the stage performs itself. ``p2p_next_s`` is the
    delay a transfer to the next stage adds over a link that overlaps with compute (zero for a
    blocking link, whose cost is already inside the passes). ``dp_sync_s`` and
    ``optimizer_s`` are paid once per iteration after the stage's last backward.

    The remaining fields only say how to draw a pass: ``recompute_s`` is the part of the
    backward spent recomputing, ``recv_s`` the blocking transfer with the previous stage (at
    the start of a forward, at the end of a backward) and ``send_s`` the blocking transfer
    with the next stage (at the end of a forward, at the start of a backward).
    """

    fwd_s: float
    bwd_s: float
    p2p_next_s: float = 0.0
    dp_sync_s: float = 0.0
    optimizer_s: float = 0.0
    recompute_s: float = 0.0
    recv_s: float = 0.0
    send_s: float = 0.0


@dataclass(frozen=True)
class Interval:
    """One thing that happens on a stage (or, for transfers, on the link below it)."""

    stage: int
    kind: str  # one of KINDS
    micro_batch: int  # -1 for the per-iteration tails
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Timeline:
    """One simulated iteration."""

    schedule: str
    num_stages: int
    micro_batches: int
    intervals: tuple[Interval, ...]
    #: End of the last backward pass on any stage (the pipeline part of the iteration).
    pipeline_s: float
    #: End of the last optimizer step: the whole iteration.
    makespan_s: float
    #: The inputs the iteration was simulated from.
    stage_times: tuple[StageTimes, ...] = ()

    def of_stage(self, stage: int, *kinds: str) -> list[Interval]:
        """Intervals of one stage (optionally only some kinds), in start order."""
        return sorted((iv for iv in self.intervals
                       if iv.stage == stage and (not kinds or iv.kind in kinds)),
                      key=lambda iv: (iv.start_s, iv.kind))

    def busy_s(self, stage: int) -> float:
        """Seconds the stage computes during the pipeline part (forwards and backwards)."""
        return sum(iv.duration_s for iv in self.of_stage(stage, "F", "B"))

    def idle_s(self, stage: int) -> float:
        """Bubble of one stage: pipeline time it spends neither computing nor synchronising."""
        return max(0.0, self.pipeline_s - self.busy_s(stage))

    def bubble_fraction(self) -> float:
        """Idle share of all stages' pipeline time (0 = no bubble)."""
        if self.pipeline_s <= 0 or self.num_stages == 0:
            return 0.0
        idle = sum(self.idle_s(s) for s in range(self.num_stages))
        return idle / (self.pipeline_s * self.num_stages)

    def max_in_flight(self, stage: int) -> int:
        """Most micro-batches whose forward has run on ``stage`` but whose backward has not
        yet finished, at any moment: the activations the stage must hold."""
        events: list[tuple[float, int]] = []
        for iv in self.of_stage(stage, "F", "B"):
            # A forward adds a micro-batch when it starts; a backward frees it when it ends.
            events.append((iv.start_s, 1) if iv.kind == "F" else (iv.end_s, -1))
        events.sort(key=lambda e: (e[0], e[1]))
        live = peak = 0
        for _, delta in events:
            live += delta
            peak = max(peak, live)
        return peak


def stage_order(schedule: str, *, stage: int, num_stages: int,
                micro_batches: int) -> list[tuple[str, int]]:
    """The order in which ``stage`` runs its passes: a list of ``("F"|"B", micro_batch)``."""
    m, p = micro_batches, num_stages
    if schedule == "gpipe":
        return [("F", k) for k in range(m)] + [("B", k) for k in range(m)]
    if schedule != "1f1b":
        raise BadInputError(f"unknown pipeline schedule {schedule!r}", field="schedule",
                            fix=f"use one of {', '.join(SCHEDULES)}")
    warmup = min(p - stage, m)
    order: list[tuple[str, int]] = [("F", k) for k in range(warmup)]
    next_f, next_b = warmup, 0
    while next_b < m:
        order.append(("B", next_b))
        next_b += 1
        if next_f < m:
            order.append(("F", next_f))
            next_f += 1
    return order


def simulate(stages: Sequence[StageTimes], *, micro_batches: int,
             schedule: str = "1f1b") -> Timeline:
    """Simulate one iteration of ``schedule`` over ``stages`` and return every interval."""
    p, m = len(stages), micro_batches
    if p == 0 or m <= 0:
        return Timeline(schedule, p, max(m, 0), (), 0.0, 0.0, tuple(stages))
    for st in stages:
        if min(st.fwd_s, st.bwd_s, st.p2p_next_s, st.dp_sync_s, st.optimizer_s) < 0:
            raise BadInputError("negative stage time in the prediction", field="prediction",
                                fix="re-run `autosplit evaluate` on the plan")
    orders = [stage_order(schedule, stage=s, num_stages=p, micro_batches=m) for s in range(p)]
    end: dict[tuple[str, int, int], float] = {}  # (kind, stage, micro_batch) -> end time
    free = [0.0] * p  # when each stage is next free
    cursor = [0] * p  # next position in each stage's order
    intervals: list[Interval] = []

    def ready_time(kind: str, s: int, k: int) -> float | None:
        """When the inputs of pass (kind, s, k) have arrived, or None if not yet known."""
        if kind == "F":
            if s == 0:
                return 0.0
            prev = end.get(("F", s - 1, k))
            return None if prev is None else prev + stages[s - 1].p2p_next_s
        if s == p - 1:
            return end.get(("F", s, k))
        nxt = end.get(("B", s + 1, k))
        return None if nxt is None else nxt + stages[s].p2p_next_s

    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for s in range(p):
            while cursor[s] < len(orders[s]):
                kind, k = orders[s][cursor[s]]
                ready = ready_time(kind, s, k)
                if ready is None:
                    break
                start = max(free[s], ready)
                dur = stages[s].fwd_s if kind == "F" else stages[s].bwd_s
                end[(kind, s, k)] = start + dur
                free[s] = start + dur
                intervals.append(Interval(s, kind, k, start, start + dur))
                cursor[s] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # pragma: no cover - both schedules are deadlock-free
            raise RuntimeError(f"schedule {schedule!r} deadlocked in the simulation")

    for s in range(p - 1):  # the transfers, for drawing
        hop = stages[s].p2p_next_s
        if hop <= 0:
            continue
        for k in range(m):
            f_end, b_end = end[("F", s, k)], end[("B", s + 1, k)]
            intervals.append(Interval(s, "p2p_fwd", k, f_end, f_end + hop))
            intervals.append(Interval(s, "p2p_bwd", k, b_end, b_end + hop))

    pipeline_s = max(free)
    makespan = 0.0
    for s, st in enumerate(stages):
        t = free[s]
        if st.dp_sync_s > 0:
            intervals.append(Interval(s, "dp_sync", -1, t, t + st.dp_sync_s))
            t += st.dp_sync_s
        if st.optimizer_s > 0:
            intervals.append(Interval(s, "optimizer", -1, t, t + st.optimizer_s))
            t += st.optimizer_s
        makespan = max(makespan, t)
    intervals.sort(key=lambda iv: (iv.stage, iv.start_s, KINDS.index(iv.kind), iv.micro_batch))
    return Timeline(schedule, p, m, tuple(intervals), pipeline_s, makespan, tuple(stages))


def _blocking_links(preds: Sequence[StagePrediction]) -> list[bool]:
    """Which boundaries (``s → s+1``) the cost model treated as blocking.

    The prediction counts a blocking transfer in the busy time of both its stages (twice:
    activation and gradient), an overlapping one in neither. So what a stage's busy time holds
    beyond compute and TP collectives, less what its input link already explains, is either
    about ``2·p2p_out`` (blocking) or about zero; the midpoint ``p2p_out`` separates them.
    """
    blocking: list[bool] = []
    explained = 0.0  # the part of the current stage's extra owed to its input link
    for i, sp in enumerate(preds[:-1]):
        extra = sp.busy_s - (sp.fwd_s + sp.bwd_s + sp.recompute_s + sp.tp_comm_s) - explained
        hop = sp.p2p_out_s or preds[i + 1].p2p_in_s
        is_blocking = hop > 0 and extra > hop
        blocking.append(is_blocking)
        explained = 2 * (preds[i + 1].p2p_in_s or hop) if is_blocking else 0.0
    return blocking


def stage_times_from_prediction(prediction: Prediction) -> list[StageTimes]:
    """Per-stage simulator inputs from a plan's prediction.

    Tensor-parallel communication is split evenly between the forward and the backward (each
    runs the same number of collectives) and recomputation runs inside the backward, as the
    cost model has it. A transfer over a blocking link (the CPU relay) is performed by both
    stages inside their passes; one over an overlapping link delays only the receiver. Either
    way, a pass's duration summed over forward and backward equals the stage's ``busy_s``.
    """
    preds = sorted(prediction.stages, key=lambda sp: sp.index)
    blocking = _blocking_links(preds)
    out: list[StageTimes] = []
    for i, sp in enumerate(preds):
        hop_next = (sp.p2p_out_s or preds[i + 1].p2p_in_s) if i + 1 < len(preds) else 0.0
        hop_prev = (sp.p2p_in_s or preds[i - 1].p2p_out_s) if i > 0 else 0.0
        send = hop_next if i + 1 < len(preds) and blocking[i] else 0.0
        recv = hop_prev if i > 0 and blocking[i - 1] else 0.0
        out.append(StageTimes(
            fwd_s=sp.fwd_s + sp.tp_comm_s / 2 + recv + send,
            bwd_s=sp.bwd_s + sp.recompute_s + sp.tp_comm_s / 2 + recv + send,
            p2p_next_s=0.0 if send else hop_next,
            dp_sync_s=sp.dp_allreduce_s,
            optimizer_s=sp.optimizer_s,
            recompute_s=sp.recompute_s,
            recv_s=recv,
            send_s=send,
        ))
    return out
