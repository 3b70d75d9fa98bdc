"""Pipeline schedules, one object each: the order of passes per rank and what follows from it.

Every schedule here is defined by the order in which each pipeline rank runs its passes; the
memory a stage needs (``in_flight``) is counted on that order and the iteration time is
simulated from it (``schedule_sim``), so the two can never describe different schedules. The
orders are those ``torch.distributed.pipelining`` (PyTorch 2.13) executes, which
``tests/test_schedule.py`` checks against the installed torch's own order generation:

- ``1f1b`` — ``Schedule1F1B`` (Narayanan et al. 2019, PipeDream-Flush): rank ``r`` of ``p``
  runs ``min(p − r, m)`` forwards, then alternates one backward and one forward, then drains.
- ``gpipe`` — ``ScheduleGPipe`` (Huang et al. 2019): all forwards, then all backwards.
- ``interleaved-1f1b`` — ``ScheduleInterleaved1F1B`` (Narayanan et al. 2021, "Efficient
  Large-Scale Language Model Training on GPU Clusters"): ``v`` model chunks per rank, stage
  ``s`` on rank ``s mod p``, depth-first over rounds of micro-batches; the bubble shrinks by
  ``v`` for equal stages. The chunks of one rank may own different numbers of units.
- ``zb-h1`` and ``interleaved-zb`` — ``ScheduleInterleavedZeroBubble`` with one or ``v``
  chunks per rank (Qi et al. 2023, "Zero Bubble Pipeline Parallelism", ZB-H1 and its
  interleaved form): the backward is split into the input gradient (B), which the previous
  stage waits for, and the weight gradient (W), which nobody waits for and which fills the
  bubble; rank ``r`` delays its first ``r`` W passes.
- ``zbv`` — ``ScheduleZBVZeroBubble`` (Qi et al. 2023, section 6): two chunks per rank in a
  V (stage ``s`` and ``2p − 1 − s`` on rank ``s``), split backward.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from autosplit.cost.schedule_sim import Simulation, StageTimes, simulate
from autosplit.errors import BadInputError
from autosplit.protocols.schedule import Pass, PassKind, Schedule

__all__ = ["SCHEDULE_NAMES", "WEIGHT_GRAD_SHARE", "get_schedule", "Pass", "Schedule"]

#: Share of a unit's backward compute that is the weight gradient, the part a split-backward
#: schedule runs as its own W pass. In the matrix multiplications that dominate a transformer
#: block the input gradient and the weight gradient are one GEMM of the forward's size each
#: (Qi et al. 2023, section 2, take ``T_B ≈ T_W``); attention's score products have no
#: weights, which puts the true share a little below one half at long sequences. No profile
#: measures the split yet, so the cost model uses one half for every unit.
WEIGHT_GRAD_SHARE = 0.5


@dataclass(frozen=True)
class _Base:
    """What every schedule shares: validation, caching of orders and the memory count."""

    virtual_stages: int = 1
    name: ClassVar[str]
    runtime_class: ClassVar[str]
    export_names: ClassVar[Mapping[str, str]]
    splits_backward: ClassVar[bool] = False
    #: Allowed chunks per rank (inclusive range; ``None``: no upper limit).
    min_virtual: ClassVar[int] = 1
    max_virtual: ClassVar[int | None] = 1

    def num_ranks(self, num_stages: int) -> int:
        if num_stages < 1 or num_stages % self.virtual_stages:
            raise BadInputError(
                f"{num_stages} stages cannot be spread over ranks with "
                f"{self.virtual_stages} virtual stages each ({self.name})",
                field="stages", fix=f"use a multiple of {self.virtual_stages} stages")
        return num_stages // self.virtual_stages

    def rank_of(self, stage: int, num_ranks: int) -> int:
        return stage % num_ranks

    def check(self, num_ranks: int, micro_batches: int) -> None:
        if num_ranks < 1 or micro_batches < 1:
            raise BadInputError(f"{self.name} needs at least one rank and one micro-batch "
                                f"(got {num_ranks} and {micro_batches})",
                                field="micro_batch_count", fix="use at least one of each")

    def order(self, num_ranks: int, micro_batches: int) -> list[list[Pass]]:
        return [list(o) for o in _orders(self, num_ranks, micro_batches)]

    def in_flight(self, stage: int, num_stages: int, micro_batches: int) -> int:
        return _in_flight(self, self.num_ranks(num_stages), micro_batches)[stage]

    def rank_activation_peaks(self, per_micro_batch: Sequence[float],
                              working_set: Sequence[float], micro_batches: int) -> list[float]:
        """Walk each rank's order holding every stage's live micro-batches at once.

        The chunks of one rank peak at different moments (chunk 0 fills during the warm-up
        while the last chunk has hardly started), so the rank's peak is the largest sum over
        time, not the sum of the chunks' own peaks: on two ranks with two chunks and 16
        micro-batches the latter overstated rank 0's activations by 17 % (34 against 29
        unit-micro-batches; predicted peak +4.1 % of the measured one on the H200 run of
        experiments/runtime/results/interleaved-50-30-gpt, −0.5 % with the walk). A stage's
        working set counts while it runs a pass, as ``in_flight · per + work`` does for one
        chunk — which this equals when ``v = 1``.
        """
        num_stages = len(per_micro_batch)
        num_ranks = self.num_ranks(num_stages)
        frees = "W" if self.splits_backward else "B"
        peaks: list[float] = []
        for rank_passes in _orders(self, num_ranks, micro_batches):
            held = 0.0
            peak = 0.0
            for ps in rank_passes:
                if ps.kind == "F":
                    held += per_micro_batch[ps.stage]
                peak = max(peak, held + working_set[ps.stage])
                if ps.kind == frees:
                    held -= per_micro_batch[ps.stage]
            peaks.append(peak)
        return peaks

    def simulate(self, times: Sequence[StageTimes], micro_batches: int) -> Simulation:
        return simulate(self, times, micro_batches=micro_batches)

    def rank_order(self, rank: int, num_ranks: int, micro_batches: int) -> list[Pass]:
        """The passes of one rank, in order (without validation; see ``order``)."""
        raise NotImplementedError


@lru_cache(maxsize=256)
def _orders(schedule: _Base, num_ranks: int, micro_batches: int) -> tuple[tuple[Pass, ...], ...]:
    """Orders are pure functions of the shape and are asked for once per stage context in
    the search, so each shape is generated once."""
    schedule.check(num_ranks, micro_batches)
    return tuple(tuple(schedule.rank_order(r, num_ranks, micro_batches))
                 for r in range(num_ranks))


@lru_cache(maxsize=256)
def _in_flight(schedule: _Base, num_ranks: int, micro_batches: int) -> tuple[int, ...]:
    """Peak micro-batches each stage keeps activations for, counted along its rank's order.

    A rank runs its passes one at a time, so walking its order is exact: a forward allocates
    its activations, and they are freed when the backward that consumes them ends — the
    weight-gradient pass under a split backward, since it still reads the saved inputs of the
    linear layers (the input-gradient pass frees the rest earlier; counting it until W keeps
    the figure an upper bound, as in Qi et al. 2023's ``M_B`` accounting).
    """
    live: dict[int, int] = defaultdict(int)
    peak: dict[int, int] = defaultdict(int)
    frees = "W" if schedule.splits_backward else "B"
    for rank_passes in _orders(schedule, num_ranks, micro_batches):
        for ps in rank_passes:
            if ps.kind == "F":
                live[ps.stage] += 1
                peak[ps.stage] = max(peak[ps.stage], live[ps.stage])
            elif ps.kind == frees:
                live[ps.stage] -= 1
    return tuple(peak[s] for s in range(num_ranks * schedule.virtual_stages))


# --------------------------------------------------------------------------------------
# one chunk per rank
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OneFOneB(_Base):
    """``Schedule1F1B``: as its ``_step_microbatches`` runs (its ``pipeline_order`` table
    differs on the last rank in PyTorch 2.13, so the tests compare with the execution)."""

    name: ClassVar[str] = "1f1b"
    runtime_class: ClassVar[str] = "Schedule1F1B"
    export_names: ClassVar[Mapping[str, str]] = {
        "torchtitan": "1F1B",
        "megatron": "forward_backward_pipelining_without_interleaving",
        "deepspeed": "TrainSchedule",
    }

    def rank_order(self, rank: int, num_ranks: int, micro_batches: int) -> list[Pass]:
        m = micro_batches
        warmup = min(num_ranks - rank, m)
        out = [Pass("F", rank, k) for k in range(warmup)]
        fwd = warmup
        for k in range(m):
            out.append(Pass("B", rank, k))
            if fwd < m:
                out.append(Pass("F", rank, fwd))
                fwd += 1
        return out

    def in_flight(self, stage: int, num_stages: int, micro_batches: int) -> int:
        """``min(p - s, m)``, the warm-up forwards plus the one in turn: what walking the
        order counts (tests/test_schedule.py), without generating ``2·m·p`` passes per shape
        — the search asks for thousands of shapes."""
        self.check(self.num_ranks(num_stages), micro_batches)
        return min(num_stages - stage, micro_batches)


@dataclass(frozen=True)
class GPipe(_Base):
    """``ScheduleGPipe``: every forward, then every backward."""

    name: ClassVar[str] = "gpipe"
    runtime_class: ClassVar[str] = "ScheduleGPipe"
    export_names: ClassVar[Mapping[str, str]] = {"torchtitan": "GPipe"}

    def rank_order(self, rank: int, num_ranks: int, micro_batches: int) -> list[Pass]:
        return ([Pass("F", rank, k) for k in range(micro_batches)]
                + [Pass("B", rank, k) for k in range(micro_batches)])

    def in_flight(self, stage: int, num_stages: int, micro_batches: int) -> int:
        """Every micro-batch: all forwards run before the first backward."""
        self.check(self.num_ranks(num_stages), micro_batches)
        return micro_batches


# --------------------------------------------------------------------------------------
# several chunks per rank, looped placement (stage s on rank s mod p)
# --------------------------------------------------------------------------------------

def _rounds(num_ranks: int, micro_batches: int) -> int:
    """Micro-batches per round: PyTorch's looped schedules walk the chunks depth-first in
    rounds of ``m // max(1, m // p)`` micro-batches."""
    return micro_batches // max(1, micro_batches // num_ranks)


def _check_rounds(name: str, num_ranks: int, micro_batches: int) -> None:
    rounds = max(1, micro_batches // num_ranks)
    if micro_batches % rounds:
        near = max(num_ranks, micro_batches - micro_batches % num_ranks)
        raise BadInputError(
            f"{name} runs micro-batches in {rounds} rounds over {num_ranks} ranks, which "
            f"{micro_batches} micro-batches do not fill evenly",
            field="micro_batch_count",
            fix=f"use a multiple of {num_ranks} micro-batches (e.g. {near}), or fewer than "
                f"{2 * num_ranks}")


def _looped_order(rank: int, num_ranks: int, micro_batches: int, chunks: int, *,
                  warmup_step: int, zero_bubble: bool) -> list[Pass]:
    """The order ``_get_1f1b_rank_ops`` of PyTorch builds for its looped schedules.

    ``warmup_step`` forwards are added per hop from the last rank (2 for interleaved 1F1B,
    so that a backward is always ready when the steady state starts; 1 for zero bubble,
    whose W passes fill the gap). With ``zero_bubble``, each backward is the input gradient
    and rank ``r`` runs the weight gradient of its ``k``-th backward after its ``(k + r)``-th.
    """
    p, m, v = num_ranks, micro_batches, chunks
    per_round = _rounds(p, m)
    warmup = min((v - 1) * per_round + warmup_step * (p - 1 - rank), m * v)
    steady = m * v - warmup
    fwd_mb: dict[int, int] = defaultdict(int)
    bwd_mb: dict[int, int] = defaultdict(int)
    wgt_mb: dict[int, int] = defaultdict(int)

    def fwd_stage(op: int) -> int:
        return ((op // per_round) % v) * p + rank

    def bwd_stage(op: int) -> int:
        return (v - 1 - ((op - warmup) // per_round) % v) * p + rank

    def take(counter: dict[int, int], stage: int) -> int:
        counter[stage] += 1
        return counter[stage] - 1

    out: list[Pass] = []
    backward_ops: list[int] = []
    weights_done = 0

    def weight(op: int) -> None:
        nonlocal weights_done
        if zero_bubble and op - warmup >= rank:
            stage = bwd_stage(backward_ops[weights_done])
            out.append(Pass("W", stage, take(wgt_mb, stage)))
            weights_done += 1

    for op in range(warmup + steady + warmup):
        if op < warmup + steady:
            stage = fwd_stage(op)
            out.append(Pass("F", stage, take(fwd_mb, stage)))
        if op >= warmup:
            stage = bwd_stage(op)
            out.append(Pass("B", stage, take(bwd_mb, stage)))
            backward_ops.append(op)
            weight(op)
    while zero_bubble and weights_done < len(backward_ops):
        stage = bwd_stage(backward_ops[weights_done])
        out.append(Pass("W", stage, take(wgt_mb, stage)))
        weights_done += 1
    return out


@dataclass(frozen=True)
class Interleaved1F1B(_Base):
    """``ScheduleInterleaved1F1B``."""

    virtual_stages: int = 2
    name: ClassVar[str] = "interleaved-1f1b"
    runtime_class: ClassVar[str] = "ScheduleInterleaved1F1B"
    export_names: ClassVar[Mapping[str, str]] = {
        "torchtitan": "Interleaved1F1B",
        "megatron": "forward_backward_pipelining_with_interleaving",
    }
    min_virtual: ClassVar[int] = 2
    max_virtual: ClassVar[int | None] = None

    def check(self, num_ranks: int, micro_batches: int) -> None:
        super().check(num_ranks, micro_batches)
        _check_rounds(self.name, num_ranks, micro_batches)

    def rank_order(self, rank: int, num_ranks: int, micro_batches: int) -> list[Pass]:
        return _looped_order(rank, num_ranks, micro_batches, self.virtual_stages,
                             warmup_step=2, zero_bubble=False)


@dataclass(frozen=True)
class ZeroBubbleH1(_Base):
    """``ScheduleInterleavedZeroBubble`` with one chunk per rank: ZB-H1."""

    name: ClassVar[str] = "zb-h1"
    runtime_class: ClassVar[str] = "ScheduleInterleavedZeroBubble"
    export_names: ClassVar[Mapping[str, str]] = {"torchtitan": "InterleavedZeroBubble"}
    splits_backward: ClassVar[bool] = True

    def check(self, num_ranks: int, micro_batches: int) -> None:
        super().check(num_ranks, micro_batches)
        _check_rounds(self.name, num_ranks, micro_batches)

    def rank_order(self, rank: int, num_ranks: int, micro_batches: int) -> list[Pass]:
        return _looped_order(rank, num_ranks, micro_batches, self.virtual_stages,
                             warmup_step=1, zero_bubble=True)


@dataclass(frozen=True)
class InterleavedZeroBubble(ZeroBubbleH1):
    """``ScheduleInterleavedZeroBubble`` with ``v ≥ 2`` chunks per rank."""

    virtual_stages: int = 2
    name: ClassVar[str] = "interleaved-zb"
    min_virtual: ClassVar[int] = 2
    max_virtual: ClassVar[int | None] = None


# --------------------------------------------------------------------------------------
# two chunks per rank in a V
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ZeroBubbleV(_Base):
    """``ScheduleZBVZeroBubble``: chunk 0 of rank ``r`` is stage ``r``, chunk 1 is stage
    ``2p − 1 − r``, so the last rank turns the micro-batch around without a transfer."""

    virtual_stages: int = 2
    name: ClassVar[str] = "zbv"
    runtime_class: ClassVar[str] = "ScheduleZBVZeroBubble"
    export_names: ClassVar[Mapping[str, str]] = {"torchtitan": "ZBVZeroBubble"}
    splits_backward: ClassVar[bool] = True
    min_virtual: ClassVar[int] = 2
    max_virtual: ClassVar[int | None] = 2

    def rank_of(self, stage: int, num_ranks: int) -> int:
        return stage if stage < num_ranks else 2 * num_ranks - 1 - stage

    def rank_order(self, rank: int, num_ranks: int, micro_batches: int) -> list[Pass]:
        p, m = num_ranks, micro_batches
        # PyTorch plans at least 2p − 1 micro-batches and drops the passes of the missing ones.
        n = max(2 * p - 1, m)
        c0, c1 = rank, 2 * p - 1 - rank
        count: dict[tuple[str, int], int] = defaultdict(int)
        out: list[Pass] = []

        def add(kind: PassKind, stage: int) -> None:
            k = count[(kind, stage)]
            count[(kind, stage)] += 1
            out.append(Pass(kind, stage, k))

        def done(kind: PassKind, stage: int) -> int:
            return count[(kind, stage)]

        for _ in range(2 * (p - rank) - 1):
            add("F", c0)
        for _ in range(rank):
            add("F", c1)
            add("F", c0)
        for _ in range(p - rank):
            add("F", c1)
            add("B", c1)
            add("W", c1)
        while done("F", c1) < done("F", c0) or done("F", c0) < n:
            if done("F", c0) < n:
                add("F", c0)
            add("B", c0)
            add("W", c0)
            add("F", c1)
            add("B", c1)
            add("W", c1)
        for _ in range(rank):
            add("B", c0)
            add("B", c1)
        for _ in range(p - rank):
            add("B", c0)
            add("W", c0)
        while done("W", c1) < done("B", c1):
            add("W", c1)
        while done("W", c0) < done("B", c0):
            add("W", c0)
        return [ps for ps in out if ps.micro_batch < m]


# --------------------------------------------------------------------------------------
# by name
# --------------------------------------------------------------------------------------

_CLASSES: dict[str, type[_Base]] = {cls.name: cls for cls in (
    OneFOneB, GPipe, Interleaved1F1B, ZeroBubbleH1, InterleavedZeroBubble, ZeroBubbleV)}

#: Every schedule the cost model prices, in the plan's spelling.
SCHEDULE_NAMES: tuple[str, ...] = tuple(_CLASSES)


def get_schedule(name: str, *, virtual_stages: int | None = None) -> Schedule:
    """The schedule called ``name`` with ``virtual_stages`` chunks per rank (``None``: its
    default — 2 for the interleaved ones and ZBV, else 1)."""
    cls = _CLASSES.get(name)
    if cls is None:
        raise BadInputError(f"unknown pipeline schedule {name!r}", field="schedule",
                            fix=f"use one of {', '.join(SCHEDULE_NAMES)}")
    v = cls.virtual_stages if virtual_stages is None else virtual_stages
    hi = cls.max_virtual
    if isinstance(v, bool) or not isinstance(v, int) or v < cls.min_virtual or (
            hi is not None and v > hi):
        allowed = (f"{cls.min_virtual}" if hi == cls.min_virtual else
                   f"{cls.min_virtual} or more" if hi is None else f"{cls.min_virtual}–{hi}")
        raise BadInputError(f"{name} runs {allowed} virtual stage(s) per rank, not {v!r}",
                            field="virtual_stages",
                            fix=f"set virtual_stages to {cls.min_virtual}"
                            + ("" if hi == cls.min_virtual else
                               " or more" if hi is None else f"..{hi}"))
    return cls(virtual_stages=v)
