"""One iteration of a pipeline schedule, event by event: the one truth of how long it takes.

The cost model's ``Prediction.pipeline_s``, ``bubble_s`` and ``iteration_s``, the report's
timeline and its bubble figures all come from ``simulate``, so they cannot disagree. The rules:

- ``F(s, k)`` (forward of micro-batch ``k`` on stage ``s``) starts once ``F(s − 1, k)`` has
  finished and its activations have crossed the link ``s − 1 → s``;
- ``B(s, k)`` starts once ``B(s + 1, k)`` has finished and its gradient has crossed back (the
  same link, the same time); the last stage's ``B(s, k)`` follows its own ``F(s, k)``;
- ``W(s, k)`` (weight gradient, split-backward schedules only) follows ``B(s, k)``;
- a rank runs its passes one at a time, in the order its schedule gives (``Schedule.order``).

A transfer over a link that overlaps with compute only delays the receiver (the send is
asynchronous); a transfer between two stages of the same rank (the turn of a V schedule) is
free. A transfer over a *blocking* link (the CPU relay) is part of both stages' passes
already (``StageTimes``). After its last pass each rank all-reduces its gradients over its
data-parallel replicas and steps its optimizer, stage by stage.

Definitions used everywhere (docs/cost-model.md, section 4):

- ``pipeline_s``: end of the last pass on any rank; ``makespan_s``: end of the last optimizer
  step — the iteration; ``tail_s = makespan_s − pipeline_s``;
- ``bubble_s = pipeline_s − mean_r busy_r`` where ``busy_r`` is the time rank ``r`` spends
  in its passes; the bubble share is ``bubble_s / pipeline_s`` — the idle share of all
  ranks' pipeline time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autosplit.errors import BadInputError
from autosplit.plan.schema import StagePrediction
from autosplit.protocols.schedule import Schedule

__all__ = ["KINDS", "StageTimes", "Interval", "Simulation", "simulate",
           "stage_times_from_prediction"]

#: Interval kinds, in the order a legend lists them.
KINDS: tuple[str, ...] = ("F", "B", "W", "p2p_fwd", "p2p_bwd", "dp_sync", "optimizer")


@dataclass(frozen=True)
class StageTimes:
    """What one (virtual) stage costs per micro-batch, in seconds.

    ``fwd_s``/``bwd_s`` are the full durations of one forward and one backward: compute,
    tensor-parallel collectives, recomputation (backward) and any transfer over a *blocking*
    link, which the stage performs itself. ``wgt_s`` is the part of ``bwd_s`` that computes
    weight gradients: a split-backward schedule runs it as its own pass (W) and the rest as
    the input-gradient pass (B). ``p2p_next_s`` is the delay a transfer to the next stage
    adds over a link that overlaps with compute (zero for a blocking link). ``dp_sync_s`` and
    ``optimizer_s`` are paid once per iteration after the rank's last pass.

    The remaining fields only say how to draw a pass: ``recompute_s`` is the part of the
    backward spent recomputing, ``recv_s`` the blocking transfer with the previous stage (at
    the start of a forward, at the end of a backward) and ``send_s`` the blocking transfer
    with the next stage (at the end of a forward, at the start of a backward).
    """

    fwd_s: float
    bwd_s: float
    wgt_s: float = 0.0
    p2p_next_s: float = 0.0
    dp_sync_s: float = 0.0
    optimizer_s: float = 0.0
    recompute_s: float = 0.0
    recv_s: float = 0.0
    send_s: float = 0.0


@dataclass(frozen=True)
class Interval:
    """One thing that happens on a rank; for transfers, on the link out of ``stage``
    (towards ``stage + 1`` for activations, back from it for gradients), drawn at the
    sending rank."""

    rank: int
    stage: int
    kind: str  # one of KINDS
    micro_batch: int  # -1 for the per-iteration tails
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


_PASSES = ("F", "B", "W")


@dataclass(frozen=True)
class Simulation:
    """One simulated iteration."""

    schedule: str
    virtual_stages: int
    micro_batches: int
    #: The rank of each stage.
    ranks: tuple[int, ...]
    intervals: tuple[Interval, ...]
    #: End of the last pass on any rank (the pipeline part of the iteration).
    pipeline_s: float
    #: End of the last optimizer step: the whole iteration.
    makespan_s: float
    #: The inputs the iteration was simulated from, per stage.
    stage_times: tuple[StageTimes, ...] = ()

    @property
    def num_stages(self) -> int:
        return len(self.ranks)

    @property
    def num_ranks(self) -> int:
        return max(self.ranks) + 1 if self.ranks else 0

    @property
    def tail_s(self) -> float:
        """Gradient all-reduce and optimizer step beyond the end of the pipeline."""
        return self.makespan_s - self.pipeline_s

    def stages_of(self, rank: int) -> list[int]:
        return [s for s, r in enumerate(self.ranks) if r == rank]

    def of_rank(self, rank: int, *kinds: str) -> list[Interval]:
        """Intervals of one rank (optionally only some kinds), in start order."""
        return sorted((iv for iv in self.intervals
                       if iv.rank == rank and (not kinds or iv.kind in kinds)),
                      key=lambda iv: (iv.start_s, KINDS.index(iv.kind)))

    def of_stage(self, stage: int, *kinds: str) -> list[Interval]:
        """Intervals of one stage (optionally only some kinds), in start order."""
        return sorted((iv for iv in self.intervals
                       if iv.stage == stage and (not kinds or iv.kind in kinds)),
                      key=lambda iv: (iv.start_s, KINDS.index(iv.kind)))

    def busy_s(self, rank: int) -> float:
        """Seconds the rank spends in its passes (forwards, backwards, weight gradients)."""
        return sum(iv.duration_s for iv in self.intervals
                   if iv.rank == rank and iv.kind in _PASSES)

    def idle_s(self, rank: int) -> float:
        """Bubble of one rank: pipeline time it spends in no pass."""
        return max(0.0, self.pipeline_s - self.busy_s(rank))

    @property
    def bubble_s(self) -> float:
        """``pipeline_s`` minus the mean rank's busy time (the mean rank's idle time)."""
        if not self.ranks:
            return 0.0
        busy = sum(self.busy_s(r) for r in range(self.num_ranks)) / self.num_ranks
        return max(0.0, self.pipeline_s - busy)

    def bubble_fraction(self) -> float:
        """Idle share of all ranks' pipeline time (0 = no bubble)."""
        return self.bubble_s / self.pipeline_s if self.pipeline_s > 0 else 0.0

    def max_in_flight(self, stage: int) -> int:
        """Most micro-batches whose forward has started on ``stage`` and whose last backward
        pass (W under a split backward, else B) has not yet ended: the activations the stage
        holds, measured on the events (``Schedule.in_flight`` counts it on the order)."""
        frees = "W" if any(iv.kind == "W" for iv in self.intervals) else "B"
        events: list[tuple[float, int]] = []
        for iv in self.of_stage(stage, "F", frees):
            events.append((iv.start_s, 1) if iv.kind == "F" else (iv.end_s, -1))
        events.sort(key=lambda e: (e[0], e[1]))
        live = peak = 0
        for _, delta in events:
            live += delta
            peak = max(peak, live)
        return peak


def _check_times(times: Sequence[StageTimes]) -> None:
    for st in times:
        values = (st.fwd_s, st.bwd_s, st.wgt_s, st.p2p_next_s, st.dp_sync_s, st.optimizer_s)
        if min(values) < 0 or st.wgt_s > st.bwd_s:
            raise BadInputError("negative stage time in the prediction", field="prediction",
                                fix="re-run `autosplit evaluate` on the plan")


def simulate(schedule: Schedule, times: Sequence[StageTimes], *,
             micro_batches: int) -> Simulation:
    """Simulate one iteration of ``schedule`` over ``times`` (one entry per stage)."""
    n, m = len(times), micro_batches
    if n == 0 or m <= 0:
        return Simulation(schedule.name, schedule.virtual_stages, max(m, 0), (), (), 0.0, 0.0,
                          tuple(times))
    _check_times(times)
    p = schedule.num_ranks(n)
    orders = schedule.order(p, m)
    ranks = tuple(schedule.rank_of(s, p) for s in range(n))
    split = schedule.splits_backward

    def duration(kind: str, s: int) -> float:
        st = times[s]
        if kind == "F":
            return st.fwd_s
        if kind == "W":
            return st.wgt_s
        return st.bwd_s - st.wgt_s if split else st.bwd_s

    def hop(s: int) -> float:
        """Delay of the link between stages ``s`` and ``s + 1``."""
        return times[s].p2p_next_s if ranks[s] != ranks[s + 1] else 0.0

    end: dict[tuple[str, int, int], float] = {}

    def ready(kind: str, s: int, k: int) -> float | None:
        """When the inputs of pass (kind, s, k) have arrived, or None if not yet known."""
        if kind == "F":
            if s == 0:
                return 0.0
            prev = end.get(("F", s - 1, k))
            return None if prev is None else prev + hop(s - 1)
        if kind == "W":
            return end.get(("B", s, k))
        if s == n - 1:
            return end.get(("F", s, k))
        nxt = end.get(("B", s + 1, k))
        return None if nxt is None else nxt + hop(s)

    free = [0.0] * p
    cursor = [0] * p
    intervals: list[Interval] = []
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for r in range(p):
            while cursor[r] < len(orders[r]):
                ps = orders[r][cursor[r]]
                at = ready(ps.kind, ps.stage, ps.micro_batch)
                if at is None:
                    break
                start = max(free[r], at)
                free[r] = start + duration(ps.kind, ps.stage)
                end[(ps.kind, ps.stage, ps.micro_batch)] = free[r]
                intervals.append(Interval(r, ps.stage, ps.kind, ps.micro_batch, start, free[r]))
                cursor[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError(f"the {schedule.name} order deadlocks: every rank waits")

    for s in range(n - 1):  # the transfers, for drawing
        if hop(s) <= 0:
            continue
        for k in range(m):
            f_end, b_end = end[("F", s, k)], end[("B", s + 1, k)]
            intervals.append(Interval(ranks[s], s, "p2p_fwd", k, f_end, f_end + hop(s)))
            intervals.append(Interval(ranks[s + 1], s, "p2p_bwd", k, b_end, b_end + hop(s)))

    makespan = 0.0
    for r in range(p):
        t = free[r]
        mine = [s for s in range(n) if ranks[s] == r]
        for kind in ("dp_sync", "optimizer"):
            for s in mine:
                dur = times[s].dp_sync_s if kind == "dp_sync" else times[s].optimizer_s
                if dur > 0:
                    intervals.append(Interval(r, s, kind, -1, t, t + dur))
                    t += dur
        makespan = max(makespan, t)
    intervals.sort(key=lambda iv: (iv.rank, iv.start_s, KINDS.index(iv.kind), iv.stage,
                                   iv.micro_batch))
    return Simulation(schedule.name, schedule.virtual_stages, m, ranks, tuple(intervals),
                      max(free), makespan, tuple(times))


def stage_times_from_prediction(stages: Sequence[StagePrediction]) -> list[StageTimes]:
    """Per-stage simulator inputs from a prediction's stages (in stage order).

    Tensor-parallel communication is split evenly between the forward and the backward (each
    runs the same number of collectives) and recomputation runs inside the backward, as the
    cost model has it. A transfer over a blocking link (``blocking_out``, the CPU relay) is
    performed by both stages inside their passes; one over an overlapping link delays only
    the receiver. Either way a stage's passes add up to its ``busy_s``.
    """
    preds = sorted(stages, key=lambda sp: sp.index)
    out: list[StageTimes] = []
    for i, sp in enumerate(preds):
        last = i + 1 == len(preds)
        hop_next = 0.0 if last else (sp.p2p_out_s or preds[i + 1].p2p_in_s)
        hop_prev = (sp.p2p_in_s or preds[i - 1].p2p_out_s) if i > 0 else 0.0
        send = hop_next if not last and sp.blocking_out else 0.0
        recv = hop_prev if i > 0 and preds[i - 1].blocking_out else 0.0
        out.append(StageTimes(
            fwd_s=sp.fwd_s + sp.tp_comm_s / 2 + recv + send,
            bwd_s=sp.bwd_s + sp.recompute_s + sp.tp_comm_s / 2 + recv + send,
            wgt_s=sp.bwd_weight_s,
            p2p_next_s=0.0 if send else hop_next,
            dp_sync_s=sp.dp_allreduce_s,
            optimizer_s=sp.optimizer_s,
            recompute_s=sp.recompute_s,
            recv_s=recv,
            send_s=send,
        ))
    return out
