"""The seam between the cost model and where its per-layer numbers come from.

The analytic roofline (``autosplit.cost.compute``) and measured profiles
(``autosplit.profiler``) both implement ``LayerCostProvider``; the search only sees this
protocol, so measured data plugs in without changing the search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from autosplit.chips.spec import ChipSpec
from autosplit.model.types import LayerProfile

__all__ = ["LayerTiming", "LayerCostProvider"]


@dataclass(frozen=True)
class LayerTiming:
    """Compute time of one unit for one micro-batch on one device of a TP group (seconds).

    TP communication is not included here; the cost model adds it from the link model.
    ``source`` is ``"analytic"`` or ``"measured"`` so a plan can say what it rests on.
    ``backward_extra_bytes``: the memory, per device, that the unit's backward needs beyond
    the activations it saved (gradient buffers, temporaries) for this micro-batch, where a
    profile measured it; ``None`` leaves the cost model's estimate.
    """

    fwd_s: float
    bwd_s: float
    recompute_s: float
    source: str = "analytic"
    backward_extra_bytes: float | None = None


@runtime_checkable
class LayerCostProvider(Protocol):
    """Gives the compute time of a unit on a chip, for a micro-batch size and TP degree."""

    def layer_timing(self, layer: LayerProfile, chip: ChipSpec, *, micro_batch: int, tp: int,
                     dtype: str) -> LayerTiming:
        ...
