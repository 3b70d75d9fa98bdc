"""Iteration time of a pipeline with unequal stages.

With per-micro-batch stage busy times ``u_s`` and ``m`` micro-batches, both 1F1B and GPipe take
``Σ_s u_s + (m − 1) · max_s u_s``: the first micro-batch flows through every stage (fill and
drain), and the slowest stage paces the other ``m − 1`` (Narayanan et al. 2019, PipeDream;
Huang et al. 2019, GPipe). Transfers over links that overlap with compute appear once in the
fill and once in the drain (``fill_s``). The schedules differ in memory, not in this time.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pipeline_time", "tail_time"]


def pipeline_time(busy: Sequence[float], *, micro_batches: int,
                  p2p: Sequence[float] = ()) -> float:
    """``Σ u + (m − 1)·max u + 2·Σ p2p`` (activations forward, gradients backward)."""
    if not busy:
        return 0.0
    return sum(busy) + (micro_batches - 1) * max(busy) + 2.0 * sum(p2p)


def tail_time(*, dp_s: Sequence[float], opt_s: Sequence[float],
              bwd_s: Sequence[float]) -> float:
    """Time after the pipeline drains until every stage has stepped its optimizer.

    Stage ``s`` finishes its last backward earlier than stage 0 by the backward time of the
    stages before it (the gradient still has to flow back through them), so its all-reduce
    and step can hide in that slack: ``max_s (dp_s + opt_s − Σ_{s'<s} bwd_{s'})``.
    """
    tail = 0.0
    slack = 0.0
    for dp, opt, bwd in zip(dp_s, opt_s, bwd_s, strict=True):
        tail = max(tail, dp + opt - slack)
        slack += bwd
    return tail
