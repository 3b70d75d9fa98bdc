"""Where the stages run: every pipeline of device layouts, and each stage's batch shares.

Reductions 1–4 of the package docstring live here: devices of a node are counted, not
named; identical nodes are taken in a canonical order; a stage's nodes are listed in order of
first appearance with their replicas together; batch shares are enumerated as per-lane
maxima, dominated maxima dropped after checking the cost tables.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from autosplit.cluster.schema import Cluster, Node
from autosplit.config import SearchConfig
from autosplit.cost.stage import StageShape, StageTables, build_tables
from autosplit.model.types import ModelProfile
from autosplit.plan.schema import Replica
from autosplit.protocols.cost import LayerCostProvider

__all__ = ["Placement", "StageLayout", "DeviceLayouts", "TableCache", "lane_maxima",
           "stage_shape"]


class Placement(NamedTuple):
    """``replicas`` TP groups of one stage on node ``node`` (index into ``cluster.nodes``).

    Named tuples, not dataclasses, because layouts are dictionary keys hashed millions of
    times, and tuple hashing is native."""

    node: int
    replicas: int


class StageLayout(NamedTuple):
    """A stage's devices before batch shares and layers: chip, TP degree, nodes in order."""

    chip: str
    tp: int
    placements: tuple[Placement, ...]

    @property
    def first_node(self) -> int:
        return self.placements[0].node

    @property
    def last_node(self) -> int:
        return self.placements[-1].node


class DeviceLayouts:
    """Every pipeline of stage layouts the schema allows, one per relabelling of identical
    nodes (reductions 1–3)."""

    def __init__(self, cluster: Cluster, search: SearchConfig, *, max_stages: int,
                 dtype: str) -> None:
        self.cluster = cluster
        self.nodes = cluster.nodes
        self.tps = sorted(set(search.tp_degrees))
        self.max_stages = max_stages
        self.allow_idle = search.allow_idle
        keys = [(n.chip, n.devices, n.intra_bw_gbs, n.nic_bw_gbs,
                 cluster.device_memory_bytes(n), n.host_bw_gbs) for n in self.nodes]
        #: Nodes of one class are interchangeable: the cost model reads only these attributes.
        self.node_class = [keys.index(k) for k in keys]
        order = {c: k for k, c in enumerate(cluster.chip_types())}
        self._speed = {c: (-cluster.chips[c].peak_tflops(dtype), order[c]) for c in order}

    def pipelines(self) -> Iterator[tuple[StageLayout, ...]]:
        """Pipelines in a fixed order (the result's tie-break)."""
        free = tuple(n.devices for n in self.nodes)
        yield from self._extend((), free, frozenset())

    def _compatible(self, chips: frozenset[str]) -> bool:
        """One chip, or chips that one collective group of the cluster lists together."""
        return len(chips) == 1 or any(chips <= g for g in self.cluster.collective_groups)

    def _extend(self, prefix: tuple[StageLayout, ...], free: tuple[int, ...],
                touched: frozenset[int]) -> Iterator[tuple[StageLayout, ...]]:
        for t in self.tps:
            for stage, left, now in self._grow(t, (), frozenset(), free, touched):
                pipe = prefix + (stage,)
                if self.allow_idle or not any(left):
                    yield pipe
                if len(pipe) < self.max_stages and any(left):
                    yield from self._extend(pipe, left, now)

    def _candidates(self, t: int, placed: tuple[Placement, ...], free: tuple[int, ...],
                    touched: frozenset[int]) -> list[int]:
        """Nodes the next placement may use: any node an earlier placement used, and the
        lowest-numbered untouched node of each class (reduction 2)."""
        inside = {p.node for p in placed}
        out: list[int] = []
        classes: set[int] = set()
        for k, f in enumerate(free):
            if k in inside or f < t:
                continue
            if k in touched:
                out.append(k)
            elif self.node_class[k] not in classes:
                classes.add(self.node_class[k])
                out.append(k)
        return out

    def _grow(self, t: int, placed: tuple[Placement, ...], chips: frozenset[str],
              free: tuple[int, ...], touched: frozenset[int]
              ) -> Iterator[tuple[StageLayout, tuple[int, ...], frozenset[int]]]:
        if placed:
            # The schema names a mixed stage by its faster chip.
            label = min(chips, key=lambda c: self._speed[c])
            yield StageLayout(chip=label, tp=t, placements=placed), free, touched
        for k in self._candidates(t, placed, free, touched):
            now = chips | {self.nodes[k].chip}
            if not self._compatible(now):
                continue
            for r in range(1, free[k] // t + 1):
                left = free[:k] + (free[k] - r * t,) + free[k + 1:]
                yield from self._grow(t, placed + (Placement(k, r),), now, left,
                                      touched | {k})


class TableCache:
    """Per-unit cost tables per (chip, node, TP, share), each built once, and the share
    dominance test of reduction 4."""

    def __init__(self, model: ModelProfile, cluster: Cluster, costs: LayerCostProvider,
                 dtype: str) -> None:
        self.model, self.cluster, self.costs, self.dtype = model, cluster, costs, dtype
        self._tables: dict[tuple[str, str, int, int], StageTables] = {}
        self._no_worse: dict[tuple[str, str, int, int, int], bool] = {}

    def get(self, chip: str, node: Node, tp: int, share: int) -> StageTables:
        key = (chip, node.name, tp, share)
        if key not in self._tables:
            table = build_tables(model=self.model, chip=self.cluster.chips[chip], node=node,
                                 tp=tp, share=share, costs=self.costs, dtype=self.dtype)
            first = next(iter(self._tables.values()), table)
            if not np.array_equal(table.out_bytes, first.out_bytes):
                # The boundary transfers are built once per node pair (``matrices``).
                raise RuntimeError("the cost tables disagree on the activation bytes at "
                                   "stage boundaries; the enumeration assumes they are the "
                                   "model's")
            self._tables[key] = table
        return self._tables[key]

    def no_worse(self, chip: str, node: Node, tp: int, small: int, large: int) -> bool:
        """Every unit's forward, backward, recompute and TP time and its backward working set
        at share ``small`` is at most that at ``large``."""
        key = (chip, node.name, tp, small, large)
        if key not in self._no_worse:
            a, b = self.get(chip, node, tp, small), self.get(chip, node, tp, large)
            ok = all(bool(np.all(np.diff(getattr(a, f)) <= np.diff(getattr(b, f))))
                     for f in ("fwd", "bwd", "rec", "tpc"))
            for wa, wb in ((a.unit_work, b.unit_work), (a.unit_work_rc, b.unit_work_rc)):
                if wa is not None and wb is not None:
                    ok = ok and bool(np.all(small * wa <= large * wb))
            self._no_worse[key] = ok
        return self._no_worse[key]


def _lanes(cluster: Cluster, stage: StageLayout) -> list[tuple[str, Node, int]]:
    """(chip, first node, replicas) per chip of the stage, in order of first appearance."""
    out: dict[str, list] = {}
    for p in stage.placements:
        node = cluster.nodes[p.node]
        out.setdefault(node.chip, [node, 0])[1] += p.replicas
    return [(c, v[0], v[1]) for c, v in out.items()]


def lane_maxima(tables: TableCache, cluster: Cluster, stage: StageLayout, samples: int,
                max_share: int) -> list[tuple[int, ...]]:
    """Per-lane largest shares reachable with ``samples`` per micro-batch and at most
    ``max_share`` per replica, without those another reachable choice dominates."""
    lanes = _lanes(cluster, stage)
    counts = [d for _, _, d in lanes]
    if sum(counts) > samples:
        return []
    top = min(max_share, samples)
    reach = [xs for xs in itertools.product(range(1, top + 1), repeat=len(lanes))
             if sum(x + d - 1 for x, d in zip(xs, counts, strict=True)) <= samples
             <= sum(x * d for x, d in zip(xs, counts, strict=True))]

    def dominated(xs: tuple[int, ...]) -> bool:
        return any(ys != xs and all(
            y == x or (y < x and tables.no_worse(c, node, stage.tp, y, x))
            for (c, node, _), y, x in zip(lanes, ys, xs, strict=True)) for ys in reach)

    return [xs for xs in reach if not dominated(xs)]


def _shares(maxima: Sequence[int], counts: Sequence[int], samples: int) -> list[list[int]]:
    """Per lane, replica shares with the given maxima summing to ``samples``."""
    shares = [[x] + [1] * (d - 1) for x, d in zip(maxima, counts, strict=True)]
    rest = samples - sum(map(sum, shares))
    for lane, x in zip(shares, maxima, strict=True):
        for q in range(1, len(lane)):
            add = min(rest, x - lane[q])
            lane[q] += add
            rest -= add
    if rest:
        raise ValueError(f"lane maxima {tuple(maxima)} cannot hold {samples} samples")
    return shares


def stage_shape(cluster: Cluster, stage: StageLayout, maxima: tuple[int, ...], samples: int,
                first_free: dict[int, int]) -> StageShape:
    """Concrete replicas of a stage: the lowest free local indices of each node (updated in
    ``first_free``), batch shares with the given per-lane maxima."""
    lanes = _lanes(cluster, stage)
    per_lane = _shares(maxima, [d for _, _, d in lanes], samples)
    queue = {c: iter(s) for (c, _, _), s in zip(lanes, per_lane, strict=True)}
    replicas = []
    for p in stage.placements:
        node = cluster.nodes[p.node]
        for _ in range(p.replicas):
            lo = first_free.get(p.node, 0)
            first_free[p.node] = lo + stage.tp
            replicas.append(Replica(node=node.name, local_indices=tuple(range(lo, lo + stage.tp)),
                                    batch_share=next(queue[node.chip]), chip=node.chip))
    return StageShape(chip=stage.chip, tp=stage.tp, replicas=tuple(replicas))
