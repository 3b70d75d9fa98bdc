"""Where every rank sits, which rows of each micro-batch it holds, and who it exchanges them
with.

A plan may give every stage its own data-parallel degree, tensor-parallel degree and batch
shares (a faster chip's replica takes more samples). The runtime executes all of them the same
way: micro-batch *i* is rows ``[i·B, (i+1)·B)`` of the step's batch (``B`` the sum of a
stage's shares, the same on every stage), and on every stage replica *r* holds the
consecutive rows ``[offset_r, offset_r + share_r)`` of each micro-batch. Where two
neighbouring stages cut the rows differently, the activations (forward) and their gradients
(backward) are re-distributed at the boundary: each rank sends every receiving rank the rows
both hold, a scatter/gather by row ranges. Where the cuts agree this is one message to one
peer, the plain pipeline.

Inside a replica every tensor-parallel rank holds the whole activation, so each receiving
rank takes its rows from one tensor-parallel rank of each sending replica (its own index,
modulo the sender's degree) and each sending rank takes the gradient from one rank of each
receiving replica in the same way. Nothing here touches torch: the routes are plain numbers,
tested on their own.

Ranks are numbered pipeline position by position, then replica, then tensor-parallel index:
``rank = first_rank(stage) + replica · tp + tp_index``. Under an interleaved or V-shaped
schedule several stages (model chunks) sit on one position and share its ranks, so one rank
holds several stages (``stages_of``); the plan guarantees that they have the same replicas and
TP degree, so the boundary between two chunks of one position joins every rank to itself
(``is_local``): those tensors are handed over in memory, not sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from autosplit.plan.schema import Plan

__all__ = ["StageLayout", "Place", "Route", "RunLayout", "run_layout"]


@dataclass(frozen=True)
class StageLayout:
    """One stage's ranks: ``dp`` replicas of ``tp`` ranks each, and each replica's rows."""

    index: int
    first_rank: int
    tp: int
    shares: tuple[int, ...]

    @property
    def dp(self) -> int:
        return len(self.shares)

    @property
    def size(self) -> int:
        return self.dp * self.tp

    @property
    def micro_batch(self) -> int:
        return sum(self.shares)

    def rank(self, replica: int, tp_index: int) -> int:
        return self.first_rank + replica * self.tp + tp_index

    def offset(self, replica: int) -> int:
        """First row of each micro-batch that ``replica`` holds."""
        return sum(self.shares[:replica])

    def rows(self, replica: int) -> tuple[int, int]:
        """Rows ``[lo, hi)`` of each micro-batch that ``replica`` holds."""
        lo = self.offset(replica)
        return lo, lo + self.shares[replica]

    def tp_ranks(self, replica: int) -> list[int]:
        return [self.rank(replica, t) for t in range(self.tp)]

    def dp_ranks(self, tp_index: int) -> list[int]:
        return [self.rank(r, tp_index) for r in range(self.dp)]


@dataclass(frozen=True)
class Place:
    """A rank's stage, replica and tensor-parallel index."""

    stage: int
    replica: int
    tp_index: int


@dataclass(frozen=True)
class Route:
    """One message of a boundary: rows ``[lo, hi)`` of this rank's tensor, to or from
    ``peer``."""

    peer: int
    lo: int
    hi: int


@dataclass(frozen=True)
class RunLayout:
    """Every stage's ranks; the routes between neighbouring stages."""

    stages: tuple[StageLayout, ...]
    micro_batches: int

    @property
    def positions(self) -> tuple[StageLayout, ...]:
        """The lowest-index stage of every pipeline position, in rank order: one entry per
        distinct set of ranks (each position's data-parallel and tensor-parallel groups)."""
        lead: dict[int, StageLayout] = {}
        for s in self.stages:
            lead.setdefault(s.first_rank, s)
        return tuple(lead[k] for k in sorted(lead))

    @property
    def world_size(self) -> int:
        return sum(s.size for s in self.positions)

    @property
    def micro_batch(self) -> int:
        """Samples of one micro-batch (all replicas of a stage together)."""
        return self.stages[0].micro_batch

    def place(self, rank: int, stage: int | None = None) -> Place:
        """Where ``rank`` sits in ``stage`` (default: the lowest-index stage it holds)."""
        for s in self.stages if stage is None else (self.stages[stage],):
            if s.first_rank <= rank < s.first_rank + s.size:
                local = rank - s.first_rank
                return Place(s.index, local // s.tp, local % s.tp)
        where = "" if stage is None else f" of stage {stage}"
        raise ValueError(f"rank {rank} is not in the {self.world_size} ranks{where}")

    def position_of(self, rank: int) -> int:
        """The pipeline position (index into ``positions``, the schedule's rank) of ``rank``."""
        for q, lead in enumerate(self.positions):
            if lead.first_rank <= rank < lead.first_rank + lead.size:
                return q
        raise ValueError(f"rank {rank} is not in the {self.world_size} ranks")

    def stages_of(self, rank: int) -> tuple[int, ...]:
        """Every stage ``rank`` runs, in stage order (one unless stages are virtual)."""
        return tuple(s.index for s in self.stages
                     if s.first_rank <= rank < s.first_rank + s.size)

    def is_local(self, stage: int, step: int) -> bool:
        """Whether the boundary from ``stage`` to the stage ``step`` (±1) away stays on the
        same ranks (two chunks of one pipeline position), so nothing crosses a link."""
        other = stage + step
        return (0 <= other < len(self.stages)
                and self.stages[other].first_rank == self.stages[stage].first_rank)

    def resharded(self, stage: int) -> bool:
        """Whether the boundary into ``stage`` cuts the rows differently on its two sides
        (then boundary tensors must hold one row per sample)."""
        return stage > 0 and self.stages[stage - 1].shares != self.stages[stage].shares

    def activation_sends(self, rank: int, stage: int | None = None) -> list[Route]:
        """Rows of this rank's output of ``stage`` (default: its first) that go to each rank
        of the next stage."""
        return self._sends(self.place(rank, stage), +1)

    def activation_recvs(self, rank: int, stage: int | None = None) -> list[Route]:
        """Rows of this rank's input of ``stage`` that come from each rank of the previous
        stage."""
        return self._recvs(self.place(rank, stage), -1)

    def gradient_sends(self, rank: int, stage: int | None = None) -> list[Route]:
        """Rows of the gradient of this rank's input of ``stage`` that go back to each rank
        of the previous stage."""
        return self._sends(self.place(rank, stage), -1)

    def gradient_recvs(self, rank: int, stage: int | None = None) -> list[Route]:
        """Rows of the gradient of this rank's output of ``stage`` that come from each rank
        of the next stage."""
        return self._recvs(self.place(rank, stage), +1)

    def _neighbour(self, place: Place, step: int) -> StageLayout | None:
        """The stage ``step`` (±1) away from ``place``'s, or None past either end."""
        other = place.stage + step
        return self.stages[other] if 0 <= other < len(self.stages) else None

    def _sends(self, place: Place, step: int) -> list[Route]:
        """Rows this rank sends to the stage ``step`` (±1) away: to every rank of that stage
        whose tensor-parallel index, modulo this stage's TP degree, is this rank's."""
        there = self._neighbour(place, step)
        if there is None:
            return []
        here = self.stages[place.stage]
        routes = []
        for q in range(there.dp):
            for t in range(there.tp):
                if t % here.tp == place.tp_index:
                    routes.extend(_overlap(here, place.replica, there, q, there.rank(q, t)))
        return routes

    def _recvs(self, place: Place, step: int) -> list[Route]:
        """Rows this rank receives from the stage ``step`` (±1) away: from each of its replicas,
        the rank whose tensor-parallel index is this rank's modulo that stage's TP degree."""
        there = self._neighbour(place, step)
        if there is None:
            return []
        t = place.tp_index % there.tp
        return [route for r in range(there.dp)
                for route in _overlap(self.stages[place.stage], place.replica, there, r,
                                      there.rank(r, t))]


def _overlap(mine: StageLayout, replica: int, other: StageLayout, other_replica: int,
             peer: int) -> list[Route]:
    """The rows ``mine``'s ``replica`` shares with ``other``'s ``other_replica``, in this
    rank's local row numbering; empty when they share none."""
    lo_a, hi_a = mine.rows(replica)
    lo_b, hi_b = other.rows(other_replica)
    lo, hi = max(lo_a, lo_b), min(hi_a, hi_b)
    if lo >= hi:
        return []
    return [Route(peer, lo - lo_a, hi - lo_a)]


def run_layout(plan: Plan) -> RunLayout:
    """The ranks of ``plan``: each pipeline position's ranks follow the previous position's,
    and every stage of a position (its virtual stages) uses that position's ranks."""
    sizes: dict[int, int] = {}
    for s in plan.stages:
        sizes.setdefault(s.pipeline_rank, s.tp * s.dp)
    first, at = {}, 0
    for position in sorted(sizes):
        first[position] = at
        at += sizes[position]
    return RunLayout(tuple(
        StageLayout(s.index, first[s.pipeline_rank], s.tp,
                    tuple(r.batch_share for r in s.replicas)) for s in plan.stages),
        plan.micro_batch_count)
