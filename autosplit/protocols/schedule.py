"""The seam between a pipeline schedule and everything that depends on one.

Memory (micro-batches in flight), iteration time (the event simulation), the report's
timeline, the runtime's schedule class and each exporter's spelling all follow from one
object chosen by name (``autosplit.cost.schedule.get_schedule``), so no consumer interprets a
schedule string on its own and two of them can never disagree about what a schedule does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from autosplit.cost.schedule_sim import Simulation, StageTimes

__all__ = ["PassKind", "Pass", "Schedule"]

#: ``F`` forward; ``B`` backward (only the input gradient when the schedule splits the
#: backward, else the whole backward); ``W`` weight gradient (split-backward schedules only).
PassKind = Literal["F", "B", "W"]


@dataclass(frozen=True)
class Pass:
    """One pass of one micro-batch through one pipeline stage.

    ``stage`` is the index of the (virtual) stage: under interleaved schedules a rank runs
    several stages (model chunks), each a contiguous range of units.
    """

    kind: PassKind
    stage: int
    micro_batch: int


@runtime_checkable
class Schedule(Protocol):
    """A pipeline schedule: which rank runs which pass when, and what that costs."""

    #: The plan's spelling (``autosplit.cost.schedule.SCHEDULE_NAMES``).
    name: str
    #: Model chunks (virtual stages) per pipeline rank; 1 for 1F1B and GPipe.
    virtual_stages: int
    #: True when the backward runs as two passes, input gradient (B) then weight gradient (W).
    splits_backward: bool
    #: The ``torch.distributed.pipelining`` class that executes this schedule.
    runtime_class: str
    #: Per exporter (``torchtitan``, ``megatron``, ``deepspeed``), its name for this schedule;
    #: an exporter missing from the mapping cannot run it.
    export_names: Mapping[str, str]

    def num_ranks(self, num_stages: int) -> int:
        """Pipeline ranks that ``num_stages`` (virtual) stages occupy."""
        ...

    def rank_of(self, stage: int, num_ranks: int) -> int:
        """The pipeline rank that runs ``stage``."""
        ...

    def check(self, num_ranks: int, micro_batches: int) -> None:
        """Raise ``BadInputError`` when the schedule cannot run this shape."""
        ...

    def order(self, num_ranks: int, micro_batches: int) -> list[list[Pass]]:
        """Per rank, its passes in execution order."""
        ...

    def in_flight(self, stage: int, num_stages: int, micro_batches: int) -> int:
        """Micro-batches whose activations ``stage`` holds at its peak."""
        ...

    def rank_activation_peaks(self, per_micro_batch: Sequence[float],
                              working_set: Sequence[float], micro_batches: int) -> list[float]:
        """Per rank, the peak bytes of activations its stages hold together, given each
        stage's bytes per micro-batch in flight and its backward working set."""
        ...

    def simulate(self, times: Sequence[StageTimes], micro_batches: int) -> Simulation:
        """One iteration, event by event, from per-stage pass and transfer times."""
        ...
