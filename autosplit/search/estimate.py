"""Level 3's estimates of a pipeline of chosen options, and of every move of one stage.

The upgrade (``repick.upgrade_options``) spends idle devices one move at a time; each round
values every candidate option of every stage. Two estimates, with one interface (``value``,
``moves``, ``take``): the compute-only one, ``(m − 1)·max u + Σ u + tail``, whose rounds
cost a few array operations, and the cost model's closed form with the stage-boundary
transfers and the in-flight round trip (``cost.pipeline.pipeline_time``), valued from prefix
and suffix aggregates so that a move costs O(candidates). Both charge the post-pipeline tail
as the cost model does (``cost.pipeline.tail_time``): each stage's all-reduce and optimizer
step less what it hides behind, the backward (and, in the closed form, the transfers) of the
stages in front of it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Hop", "PipelineEstimate", "ComputeOnlyEstimate"]


@dataclass(frozen=True)
class Hop:
    """A boundary between neighbouring stages as level 3's estimate sees it: the bytes per
    sample of the activation crossing it, the link's latency and bandwidth, and whether its
    transfers block compute on both sides (the CPU relay). One way takes
    ``latency + bytes · share / bandwidth`` for the larger share of the two stages, as the
    cost model charges it (``cost.stage.boundary_p2p``)."""

    bytes_per_sample: float
    latency_s: float
    bytes_per_s: float
    blocking: bool

    def one_way(self, share: np.ndarray) -> np.ndarray:
        if self.bytes_per_sample <= 0:
            return np.zeros_like(share, dtype=float)
        return self.latency_s + self.bytes_per_sample * share / self.bytes_per_s


class _Tail:
    """``max(0, max_s (tail_s − Σ_{s'<s} drain_s'))`` of a pipeline and of a change of the
    stages ``[lo, hi)``: the stages in front keep their value, those behind shift by the
    change of the window's drain, so a move costs O(candidates)."""

    def __init__(self, tail: np.ndarray, drain: np.ndarray) -> None:
        self.tail, self.drain = tail, drain
        self.slack = np.concatenate([[0.0], np.cumsum(drain)])  # Σ of the drains in front
        hidden = tail - self.slack[:-1]
        self.before = np.concatenate([[0.0], np.maximum.accumulate(hidden)])  # over t < k
        self.after = np.concatenate([np.maximum.accumulate(hidden[::-1])[::-1], [-np.inf]])

    def value(self) -> float:
        return float(self.before[-1])

    def moves(self, lo: int, tails: Sequence, drains: Sequence) -> np.ndarray:
        """The tail with stages ``lo, lo + 1, …`` given ``tails`` and ``drains`` (scalars or
        arrays over candidates)."""
        hi = lo + len(tails)
        slack = self.slack[lo]
        out = self.before[lo]
        for t, d in zip(tails, drains, strict=True):
            out = np.maximum(out, t - slack)
            slack = slack + d
        return np.maximum(out, self.after[hi] - (slack - self.slack[hi]))


class PipelineEstimate:
    """The cost model's closed form (``cost.pipeline.pipeline_time`` plus the largest tail)
    of a pipeline of chosen options, and its value for every candidate move of one stage.

    ``e_s`` is a stage's busy time plus both directions of its blocking transfers; ``f_s``
    the one-way time of its overlapping transfer out (the fill); the period is the slowest
    stage or the round trip ``R_s = Σ_{t≥s} (e_t + 2·f_t)`` a stage waits for when it holds
    only ``w_s`` micro-batches. A move at ``s`` changes ``e`` and ``f`` of ``s`` and its two
    neighbours only, so every candidate is valued from prefix and suffix aggregates; the
    round trips of the stages in front shift by one amount per candidate, and are looked at
    one by one only where a bound says they can set the period."""

    def __init__(self, busy: np.ndarray, share: np.ndarray, tail: np.ndarray,
                 backward: np.ndarray, hops: Sequence[Hop], window: np.ndarray,
                 m: int) -> None:
        self.busy, self.share = busy.astype(float), share.astype(float)
        self.tail, self.hops, self.m = tail.astype(float), list(hops), m
        self.backward = backward.astype(float)
        self.window = np.maximum(window.astype(float), 1.0)
        self.one_way = np.zeros(max(busy.size - 1, 0))
        inv = 1.0 / self.window
        self._inv_max = np.concatenate([[0.0], np.maximum.accumulate(inv)])
        self._inv_min = np.concatenate([[np.inf], np.minimum.accumulate(inv)])
        self._refresh()

    def _hop(self, b: int, left: np.ndarray | float, right: np.ndarray | float) -> np.ndarray:
        return self.hops[b].one_way(np.maximum(left, right))

    def _refresh(self) -> None:
        n = self.busy.size
        for b in range(n - 1):
            self.one_way[b] = float(self._hop(b, self.share[b], self.share[b + 1]))
        blocked_in, blocked_out, self.fill = np.zeros(n), np.zeros(n), np.zeros(n)
        for b, h in enumerate(self.hops):
            if h.blocking:
                blocked_out[b] = blocked_in[b + 1] = 2.0 * self.one_way[b]
            else:
                self.fill[b] = self.one_way[b]
        #: a stage's busy time with its blocking transfer in (not out) / out (not in) / both
        self._inner = self.busy + blocked_in
        self._outer = self.busy + blocked_out
        self.eff = self._inner + blocked_out
        step = self.eff + 2.0 * self.fill
        self.trip = np.cumsum(step[::-1])[::-1]  # R_s
        ratio = self.trip / self.window
        self.trip_after = np.maximum.accumulate(ratio[::-1])[::-1]  # max over s' ≥ s
        self._ratio_before = np.concatenate([[-np.inf], np.maximum.accumulate(ratio)])
        self._eff_before = np.concatenate([[0.0], np.maximum.accumulate(self.eff)])
        self._eff_after = np.concatenate([np.maximum.accumulate(self.eff[::-1])[::-1], [0.0]])
        self._eff_sum = np.concatenate([[0.0], np.cumsum(self.eff)])
        self._fill_sum = np.concatenate([[0.0], np.cumsum(self.fill)])
        # The last gradient's way to stage 0: each stage's backward, the transfer in from
        # behind it (any link) and its blocking send onward (``cost.stage.drain_time``).
        self._drain = self.backward.copy()
        self._drain[:-1] += self.one_way
        for b, h in enumerate(self.hops):
            if h.blocking:
                self._drain[b + 1] += self.one_way[b]
        self._tail = _Tail(self.tail, self._drain)

    def value(self) -> float:
        period = max(float(self.eff.max()), float(self.trip_after[0]))
        return float(self.eff.sum() + (self.m - 1) * period + 2.0 * self.fill.sum()
                     + self._tail.value())

    def moves(self, s: int, busy: np.ndarray, share: np.ndarray, tail: np.ndarray,
              backward: np.ndarray) -> np.ndarray:
        """The closed form with stage ``s`` on each candidate (arrays over candidates)."""
        n = self.busy.size
        lo, hi = max(s - 1, 0), min(s + 2, n)  # the stages a move at s can change
        # The two boundaries beside s, per candidate; a blocking one adds both ways to both
        # of its stages, an overlapping one is the fill of the stage in front of it.
        left = self._hop(s - 1, self.share[s - 1], share) if s > 0 else 0.0
        right = self._hop(s, share, self.share[s + 1]) if s < n - 1 else 0.0
        blk_l = s > 0 and self.hops[s - 1].blocking
        blk_r = s < n - 1 and self.hops[s].blocking
        e_s = busy + (2.0 * left if blk_l else 0.0) + (2.0 * right if blk_r else 0.0)
        f_s = 0.0 if blk_r else right
        window_e, window_f = [], []  # front to back: (s − 1), s, (s + 1)
        if s > 0:
            e = self._inner[s - 1] + (2.0 * left if blk_l else 0.0)
            window_e.append(e)
            window_f.append(0.0 if blk_l else left)
        window_e.append(e_s)
        window_f.append(f_s)
        if s < n - 1:
            e = self._outer[s + 1] + (2.0 * right if blk_r else 0.0)
            window_e.append(e)
            window_f.append(self.fill[s + 1])
        top = functools.reduce(np.maximum, window_e,
                               max(self._eff_before[lo], self._eff_after[hi]))
        total = self._eff_sum[n] - (self._eff_sum[hi] - self._eff_sum[lo]) + sum(window_e)
        fills = self._fill_sum[n] - (self._fill_sum[hi] - self._fill_sum[lo]) + sum(window_f)
        # Round trips: behind the window unchanged, inside it recomputed, in front shifted.
        running = self.trip[hi] if hi < n else 0.0
        trip = self.trip_after[hi] if hi < n else 0.0
        for t, e, f in zip(range(hi - 1, lo - 1, -1), reversed(window_e), reversed(window_f),
                           strict=True):
            running = running + e + 2.0 * f
            trip = np.maximum(trip, running / self.window[t])
        period = np.maximum(top, trip)
        if lo > 0:
            shift = running - self.trip[lo]
            bound = self._ratio_before[lo] + np.maximum(shift * self._inv_max[lo],
                                                        shift * self._inv_min[lo])
            if np.any(bound > period):  # the stages in front may set the period
                front = (self.trip[:lo, None] + np.atleast_1d(shift)[None, :]
                         ) / self.window[:lo, None]
                period = np.maximum(period, front.max(axis=0))
        return (total + (self.m - 1) * period + 2.0 * fills
                + self._window_tail(s, tail, backward, left, right))

    def _window_tail(self, s: int, tail: np.ndarray, backward: np.ndarray, left, right
                     ) -> np.ndarray:
        """The tail with stage ``s`` on each candidate: its drain and its neighbours' change
        with the two boundaries beside it."""
        n = self.busy.size
        tails, drains = [], []
        if s > 0:
            tails.append(self.tail[s - 1])
            drains.append(self._drain[s - 1] - self.one_way[s - 1] + left)
        d_s = backward + (right if s < n - 1 else 0.0)
        if s > 0 and self.hops[s - 1].blocking:
            d_s = d_s + left
        tails.append(tail)
        drains.append(d_s)
        if s < n - 1:
            d = self._drain[s + 1]
            if self.hops[s].blocking:
                d = d - self.one_way[s] + right
            tails.append(self.tail[s + 1])
            drains.append(d)
        return self._tail.moves(max(s - 1, 0), tails, drains)

    def take(self, s: int, busy: float, share: float, tail: float, backward: float) -> None:
        self.busy[s], self.share[s], self.tail[s] = busy, share, tail
        self.backward[s] = backward
        self._refresh()


class ComputeOnlyEstimate:
    """``(m − 1)·max u + Σ u + tail`` of the menu's times (the tail hidden behind the
    backward of the stages in front, no transfers, no round trips): the upgrade's first,
    cheap estimate, with the interface of ``PipelineEstimate``."""

    def __init__(self, busy: np.ndarray, _share: np.ndarray, tail: np.ndarray,
                 backward: np.ndarray, m: int) -> None:
        self.busy, self.tail, self.m = busy.astype(float), tail.astype(float), m
        self.backward = backward.astype(float)
        self._refresh()

    def _refresh(self) -> None:
        self._total = float(self.busy.sum())
        self._busy_top = _top_two(self.busy)
        self._tail = _Tail(self.tail, self.backward)

    def value(self) -> float:
        return float((self.m - 1) * self.busy.max() + self._total + self._tail.value())

    def moves(self, s: int, busy: np.ndarray, _share: np.ndarray, tail: np.ndarray,
              backward: np.ndarray) -> np.ndarray:
        return ((self.m - 1) * np.maximum(_other(self._busy_top, s), busy) + self._total
                - self.busy[s] + busy + self._tail.moves(s, [tail], [backward]))

    def take(self, s: int, busy: float, _share: float, tail: float, backward: float) -> None:
        self.busy[s], self.tail[s], self.backward[s] = busy, tail, backward
        self._refresh()


def _top_two(values: np.ndarray) -> tuple[int, float, float]:
    """Where the largest value is, it, and the largest of the others (0 when none)."""
    first = int(np.argmax(values))
    second = float(np.max(np.delete(values, first))) if values.size > 1 else 0.0
    return first, max(0.0, float(values[first])), max(0.0, second)


def _other(top: tuple[int, float, float], s: int) -> float:
    """The largest value but the one at ``s``, from ``_top_two``."""
    first, best, second = top
    return second if s == first else best
