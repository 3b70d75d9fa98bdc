"""Cost matrices: each stage's cost over every unit range, and each boundary's transfer.

A stage's cost splits into what depends on the stage alone and what its neighbours add:

- *own* terms, from a stage context bound without neighbours (``make_context`` with no
  previous or next stage, so no transfer enters ``range_busy``): busy time per micro-batch
  of every range ``[i, j)`` (recomputing exactly where the range does not fit otherwise,
  reduction 5; infinite where it fits neither way), the backward time later stages' tails
  hide behind, and the DP all-reduce plus optimizer step. They depend on the stage's
  devices, lane shares and micro-batches in flight only, so they are keyed by those;
- *boundary* terms: the one-way transfer of the activation at every boundary ``j`` over
  the link between a stage's last node and the next stage's first node, at the larger of
  their largest shares (``boundary_p2p``) — what both ``make_context`` and the next stage's
  context see. Over a blocking link both stages add it twice to their busy time; over an
  overlapping link it is paid in the pipeline's fill and drain (docs/cost-model.md §2, §4).

Each own entry also carries per-unit costs ``a[k]`` whose sum over any range is at most the
range's busy time — unit costs scaled down until that holds for every range of this very
matrix, so the bound built on them (``optimum``) is valid whatever the cost model's shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from autosplit.cluster.schema import Cluster, Node
from autosplit.config import TrainingConfig
from autosplit.cost.memory import in_flight_micro_batches
from autosplit.cost.stage import (
    StageContext,
    StageShape,
    StageTables,
    backward_time,
    boundary_p2p,
    make_context,
    range_busy,
    range_memory,
    range_tail,
)
from autosplit.model.types import ModelProfile

from .layouts import StageLayout, TableCache, stage_shape

__all__ = ["Bank", "BankArrays"]

#: Stand-in for an infinite unit cost in the bound (keeps ``0 · ∞`` out of the arithmetic).
_HUGE = 1e30


@dataclass(frozen=True)
class BankArrays:
    """The bank as arrays: own terms ``(N, (L+1)²)`` flattened over ``(i, j)``, per-unit
    bound costs ``(N, L)``, boundary transfers ``(N_b, L+1)`` and their blocking flags."""


    busy: np.ndarray
    bwd: np.ndarray
    tail: np.ndarray
    recompute: np.ndarray
    unit_bound: np.ndarray
    relaxed_bound: np.ndarray  # (N_r, L): least unit bounds over a stage's share choices
    relaxed_first_tail: np.ndarray  # (N_r,): least tail of a first stage, over its choices
    last_node: np.ndarray  # (N,): the node each own entry's stage ends on
    in_flight: np.ndarray  # (N,): micro-batches each own entry's stage may hold
    transfer: np.ndarray
    blocking: np.ndarray
    transfer_floor: np.ndarray  # (N_b,): smallest transfer over the interior boundaries
    shares: int  # max_share + 1
    nodes: int

    def boundary_ids(self, sender: np.ndarray, first_node: np.ndarray,
                     share: np.ndarray) -> np.ndarray:
        """Rows of ``transfer`` for boundaries out of own entries ``sender`` into stages
        starting on ``first_node``, at ``share`` samples."""
        return (self.last_node[sender] * self.nodes + first_node) * self.shares + share


class Bank:
    """Own terms, each built once and referred to by an integer id, and the transfers of
    every boundary between two nodes at every share."""

    def __init__(self, model: ModelProfile, cluster: Cluster, training: TrainingConfig,
                 tables: TableCache, *, allow_recompute: bool, max_share: int) -> None:
        self.model, self.cluster, self.training = model, cluster, training
        self.tables = tables
        self.allow_recompute = allow_recompute
        self.max_share = max_share
        n = model.num_layers
        idx = np.arange(n + 1)
        self._i, self._j = np.broadcast_arrays(idx[:, None], idx[None, :])
        self._idx = idx
        self._own: dict[tuple, int] = {}
        self._own_rows: list[tuple[np.ndarray, ...]] = []
        self._contexts: list[StageContext] = []
        self._last_node: list[int] = []
        self._relaxed: dict[tuple[int, ...], int] = {}

    def own(self, stage: StageLayout, maxima: tuple[int, ...], samples: int, *, index: int,
            num_stages: int, micro_batches: int) -> int:
        """Id of the stage's own terms at this position (keyed by what they depend on)."""
        in_flight = in_flight_micro_batches(schedule=self.training.schedule, stage=index,
                                            num_stages=num_stages,
                                            micro_batches=micro_batches)
        key = (stage, maxima, in_flight)
        found = self._own.get(key)
        if found is None:
            shape = stage_shape(self.cluster, stage, maxima, samples, {})
            ctx = self._context(shape, index=index, num_stages=num_stages,
                                micro_batches=micro_batches)
            assert ctx.in_flight == in_flight
            found = self._own[key] = len(self._own_rows)
            self._own_rows.append(self._own_terms(ctx))
            self._contexts.append(ctx)
            self._last_node.append(stage.last_node)
        return found

    def relaxed(self, own_ids: tuple[int, ...]) -> int:
        """Id of the unit-wise least bound costs over several own entries (any of a stage's
        share choices does at least this much work per unit)."""
        if own_ids not in self._relaxed:
            self._relaxed[own_ids] = len(self._relaxed)
        return self._relaxed[own_ids]

    def arrays(self) -> BankArrays:
        """Everything built so far, as arrays."""
        busy, bwd, tail, rec, unit = (np.stack(col) for col in zip(*self._own_rows,
                                                                    strict=True))
        n = self.model.num_layers
        relaxed = np.stack([unit[list(ids)].min(axis=0) for ids in self._relaxed])
        first_tail = tail.reshape(-1, n + 1, n + 1)[:, 0, 1:].min(axis=1)
        relaxed_first = np.array([first_tail[list(ids)].min() for ids in self._relaxed])
        transfer, blocking = self._transfers()
        floor = transfer[:, 1:n].min(axis=1) if n > 1 else np.zeros(len(transfer))
        return BankArrays(busy=busy, bwd=bwd, tail=tail, recompute=rec, unit_bound=unit,
                          relaxed_bound=relaxed, relaxed_first_tail=relaxed_first,
                          last_node=np.array(self._last_node),
                          in_flight=np.array([c.in_flight for c in self._contexts], dtype=int),
                          transfer=transfer,
                          blocking=blocking, transfer_floor=floor, shares=self.max_share + 1,
                          nodes=len(self.cluster.nodes))

    def _transfers(self) -> tuple[np.ndarray, np.ndarray]:
        """Transfer out of a stage ending on node ``a`` into one starting on node ``b`` at
        every boundary, for every share: rows ``(a·nodes + b)·(max_share + 1) + share``."""
        nodes = self.cluster.nodes
        # Any stage's context will do: the activation's size is the model's (``TableCache``
        # checks that every table holds the same out_bytes).
        ctx = self._contexts[0]
        rows, blocking = [], []
        for a in nodes:
            for b in nodes:
                link = self.cluster.link_between(a, b)
                for share in range(self.max_share + 1):
                    seen = replace(ctx, link_out=link, share_out=share)
                    rows.append(np.asarray(boundary_p2p(seen, self._idx), dtype=float))
                    blocking.append(float(StageContext.blocking(link)))
        transfer = np.stack(rows)
        if np.any(transfer < 0):
            raise RuntimeError("the cost model returned a negative transfer time")
        return transfer, np.array(blocking)

    # ---- building ----------------------------------------------------------------------

    def _context(self, shape: StageShape, *, index: int, num_stages: int,
                 micro_batches: int) -> StageContext:
        """The stage's context as ``evaluate.assignments_of`` binds it, without neighbours."""
        node = self.cluster.node(shape.replicas[0].node)
        tables = self.tables.get(shape.chip, node, shape.tp, shape.max_share)

        def lane_tables(chip: str, lane_node: Node, share: int) -> StageTables:
            return self.tables.get(chip, lane_node, shape.tp, share)

        return make_context(cluster=self.cluster, shape=shape, tables=tables, index=index,
                            num_stages=num_stages, micro_batches=micro_batches,
                            training=self.training, prev=None, nxt=None,
                            lane_tables=lane_tables)

    def _own_terms(self, ctx: StageContext) -> tuple[np.ndarray, ...]:
        i, j = self._i, self._j
        valid = j > i

        def fits(rec: bool) -> np.ndarray:
            static, act = range_memory(ctx, i, j, rec)
            return valid & (np.asarray(static + act) <= ctx.capacity)

        plain = fits(False)
        rec = (~plain & fits(True)) if self.allow_recompute else np.zeros_like(valid)
        busy = np.where(plain, range_busy(ctx, i, j, False),
                        np.where(rec, range_busy(ctx, i, j, True), math.inf)).astype(float)
        # What later stages' tails hide behind: the slowest lane's backward (a stage that
        # mixes chips is as slow as its slowest), as ``cost.predict`` takes it.
        bwd = np.max([np.asarray(backward_time(lane.tables, i, j, rec), dtype=float)
                      for lane in ctx.all_lanes()], axis=0)
        dp, opt = range_tail(ctx, i, j)
        tail = np.asarray(dp + opt, dtype=float)
        return (busy.ravel(), bwd.ravel(), tail.ravel(), rec.ravel(), _unit_bound(busy))


def _unit_bound(busy: np.ndarray) -> np.ndarray:
    """Per-unit costs whose sum over every range ``[i, j)`` is at most ``busy[i, j]``: each
    unit's own busy time (``_HUGE`` where it fits nowhere), scaled down by the smallest
    ratio of a range's busy time to the sum of its units'."""
    n = busy.shape[0] - 1
    raw = busy[np.arange(n), np.arange(1, n + 1)]
    finite = np.isfinite(raw)
    sums = np.concatenate(([0.0], np.cumsum(np.where(finite, raw, 0.0))))
    misfits = np.concatenate(([0], np.cumsum(~finite)))
    i, j = np.triu_indices(n + 1, k=1)
    span = busy[i, j]
    fits = np.isfinite(span)
    if np.any(fits & (misfits[j] > misfits[i])):
        ratio = 0.0  # a range fits though one of its units alone does not: no bound
    else:
        total = sums[j] - sums[i]
        use = fits & (total > 0)
        ratio = float(np.min(span[use] / total[use], initial=1.0))
    return np.where(finite, raw, _HUGE) * max(ratio, 0.0)
