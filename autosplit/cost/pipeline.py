"""Iteration time of a pipeline with unequal stages.

With per-micro-batch stage busy times ``u_s`` and ``m`` micro-batches, both 1F1B and GPipe take
``Σ_s u_s + (m − 1) · max_s u_s``: the first micro-batch flows through every stage (fill and
drain), and the slowest stage paces the other ``m − 1`` (Narayanan et al. 2019, PipeDream;
Huang et al. 2019, GPipe). Transfers over links that overlap with compute appear once in the
fill and once in the drain (``fill_s``). The schedules differ in memory, not in this time,
unless a stage's limit on micro-batches in flight makes it wait for the round trip through the
later stages (``pipeline_period``); the schedule's event simulation (``cost.schedule_sim``) is
the prediction, and this closed form its estimate.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pipeline_period", "pipeline_time", "tail_time"]


def pipeline_period(busy: Sequence[float], *, micro_batches: int, p2p: Sequence[float] = (),
                    in_flight: Sequence[int] = ()) -> float:
    """Steady-state time per micro-batch: the slowest stage, or the round trip a stage waits
    for when it may hold only a few micro-batches.

    Stage ``s`` holds a micro-batch from the start of its forward to the end of its backward:
    at least ``R_s = Σ_{t≥s} u_t + 2·Σ_{t≥s} p2p_t`` (every later stage's passes and both
    directions of every later transfer). It holds at most ``w_s`` (``in_flight``) at a time,
    so by Little's law it completes at most ``w_s / R_s`` micro-batches per second: the period
    is ``max(max_s u_s, max_s R_s / w_s)``. The second term binds when transfers are slow
    next to the stages' compute (1F1B over a slow link); without ``in_flight`` it is left out.
    """
    period = max(busy, default=0.0)
    if not in_flight:
        return period
    hops = list(p2p) + [0.0] * (len(busy) - len(p2p))
    trip = 0.0
    for u, hop, w in zip(reversed(busy), reversed(hops), reversed(in_flight), strict=True):
        trip += u + 2.0 * hop
        period = max(period, trip / max(1, min(w, micro_batches)))
    return period


def pipeline_time(busy: Sequence[float], *, micro_batches: int,
                  p2p: Sequence[float] = (), in_flight: Sequence[int] = ()) -> float:
    """``Σ u + (m − 1)·period + 2·Σ p2p`` (activations forward, gradients backward), with the
    period of ``pipeline_period`` (``max u`` unless a stage's in-flight limit binds)."""
    if not busy:
        return 0.0
    period = pipeline_period(busy, micro_batches=micro_batches, p2p=p2p, in_flight=in_flight)
    return sum(busy) + (micro_batches - 1) * period + 2.0 * sum(p2p)


def tail_time(*, dp_s: Sequence[float], opt_s: Sequence[float],
              drain_s: Sequence[float]) -> float:
    """Time after the pipeline drains until every stage has stepped its optimizer.

    Stage ``s`` finishes its last backward earlier than stage 0 by the time the last gradient
    still needs to reach stage 0 — the backward of every stage in front of it and the
    transfers between them (``drain_s``, ``cost.stage.drain_time``) — so its all-reduce and
    step can hide in that slack: ``max_s (dp_s + opt_s − Σ_{s'<s} drain_{s'})``.
    """
    tail = 0.0
    slack = 0.0
    for dp, opt, drain in zip(dp_s, opt_s, drain_s, strict=True):
        tail = max(tail, dp + opt - slack)
        slack += drain
    return tail
