"""The iteration time of every layer split of many pipelines at once, and a bound on it.

For a pipeline of ``p`` stages (ids into the bank's own terms) and its ``p − 1`` boundaries
(ids into the bank's transfers), every contiguous split of the ``L`` units is costed with
docs/cost-model.md §4:

    T = Σ_s u_s + (m − 1)·P + 2·Σ_b fill_b + max(0, max_s (tail_s − Σ_{s'<s} bwd_s'))

where ``u_s`` is the stage's own busy time plus twice each blocking transfer at its ends,
``fill_b`` a boundary's transfer over an overlapping link and ``P`` the period
``max(max_s u_s, max_s R_s / w_s)`` of ``cost.pipeline.pipeline_period`` (``R_s`` the round
trip through the later stages, ``w_s`` the micro-batches stage ``s`` may hold). Pipelines
are costed in batches, so numpy does the work per split, not Python.

The bound: with per-unit costs ``a_s[k]`` that sum over any range to at most that range's own
busy time (``Bank``), any split has ``Σ_s u_s ≥ Σ_k min_s a_s[k]`` and, for any weights
``λ_s ≥ 0`` summing to one, ``max_s u_s ≥ Σ_s λ_s u_s ≥ Σ_k min_s λ_s a_s[k]`` (weights
``∝ 1 / Σ_k a_s[k]``, the stages' speeds). Transfers, fill and the tail are non-negative, so
no split of the pipeline beats ``Σ_k min_s a_s[k] + (m − 1)·Σ_k min_s λ_s a_s[k]`` (as
``P ≥ max_s u_s``); the caller adds what it can bound of them (``optimum``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .matrices import BankArrays

__all__ = ["SplitGrid", "split_grid", "Costed", "cost_splits", "lower_bound"]


@dataclass(frozen=True)
class SplitGrid:
    """Every contiguous split of ``L`` units into ``p`` stages: ``starts``/``ends`` are
    ``(splits, p)``; ``flat`` indexes the flattened ``(L+1)²`` matrices."""

    starts: np.ndarray
    ends: np.ndarray
    flat: np.ndarray

    @property
    def size(self) -> int:
        return len(self.starts)


def split_grid(n_units: int, stages: int) -> SplitGrid:
    combos = list(itertools.combinations(range(1, n_units), stages - 1))
    cuts = np.array(combos, dtype=int).reshape(len(combos), stages - 1)
    bounds = np.hstack([np.zeros((len(cuts), 1), dtype=int), cuts,
                        np.full((len(cuts), 1), n_units, dtype=int)])
    starts, ends = bounds[:, :-1], bounds[:, 1:]
    return SplitGrid(starts=starts, ends=ends, flat=starts * (n_units + 1) + ends)


@dataclass(frozen=True)
class Costed:
    """Per pipeline of a batch: its best split's time (inf if none fits), that split's row
    in the grid, and how many splits fit in memory."""

    best: np.ndarray
    row: np.ndarray
    feasible: np.ndarray


def cost_splits(bank: BankArrays, grid: SplitGrid, own: np.ndarray, boundary: np.ndarray,
                micro_batches: np.ndarray) -> Costed:
    """Cost every split of each pipeline (rows of ``own`` ``(P, p)`` and ``boundary``
    ``(P, p − 1)``, with ``micro_batches`` ``(P,)``)."""
    p = own.shape[1]
    total = np.zeros((len(own), grid.size))
    peak = np.zeros_like(total)
    fill = np.zeros_like(total)
    slack = np.zeros_like(total)
    after = np.zeros_like(total)  # max(0, …): the tail starts at zero
    trips: list[np.ndarray] = []  # per stage: its busy time plus both ways of its transfer out
    for s in range(p):
        rows, cells = own[:, s][:, None], grid.flat[None, :, s]
        busy = bank.busy[rows, cells]
        # What the tails of the stages behind hide in: this stage's backward, the gradient
        # coming in from behind, and over a blocking link in front the send it performs.
        drain = bank.bwd[rows, cells]
        if s > 0:
            b = boundary[:, s - 1]
            into = bank.blocking[b][:, None] * bank.transfer[b[:, None], grid.starts[None, :, s]]
            busy = busy + 2.0 * into
            drain = drain + into
        if s < p - 1:
            b = boundary[:, s]
            out = bank.transfer[b[:, None], grid.ends[None, :, s]]
            blocking = bank.blocking[b][:, None]
            busy = busy + 2.0 * blocking * out
            fill += (1.0 - blocking) * out
            drain = drain + out
            trips.append(busy + 2.0 * (1.0 - blocking) * out)
        else:
            trips.append(busy)
        np.maximum(after, bank.tail[rows, cells] - slack, out=after)
        slack += drain
        total += busy
        np.maximum(peak, busy, out=peak)
    # The in-flight limit's round trip (cost.pipeline.pipeline_period), from the last stage up.
    trip = np.zeros_like(total)
    for s in reversed(range(p)):
        trip += trips[s]
        w = np.maximum(1, np.minimum(bank.in_flight[own[:, s]], micro_batches))[:, None]
        with np.errstate(invalid="ignore"):
            np.maximum(peak, trip / w, out=peak)
    fits = np.isfinite(total)
    with np.errstate(invalid="ignore"):
        total = total + (micro_batches[:, None] - 1) * peak + 2.0 * fill + after
    total = np.where(fits, total, math.inf)
    row = np.argmin(total, axis=1)
    return Costed(best=total[np.arange(len(total)), row], row=row, feasible=fits.sum(axis=1))


def lower_bound(unit_bound: np.ndarray, ids: np.ndarray, micro_batches: np.ndarray
                ) -> np.ndarray:
    """A time no split of each pipeline can beat (module docstring): ``ids`` ``(P, p)``
    picks each stage's per-unit bound costs, rows of ``unit_bound`` ``(N, L)``."""
    a = unit_bound[ids]  # (P, p, L)
    base = a.min(axis=1).sum(axis=1)
    work = a.sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        speed = np.where(work > 0, 1.0 / work, 0.0)
        weight = speed / speed.sum(axis=1, keepdims=True)
        peak = np.nan_to_num((a * weight[:, :, None]).min(axis=1).sum(axis=1))
    return base + (micro_batches - 1) * peak
