"""Analytic per-layer compute time: a roofline with achievable efficiency.

Why a roofline: a layer is bound either by arithmetic (FLOPs over the chip's achievable
FLOP/s) or by memory traffic (bytes over achievable bandwidth). Small micro-batches read the
weights for little work and become memory-bound; large ones become compute-bound. Taking the
larger of the two times captures both with two numbers per chip, which is all a datasheet
gives. Measured profiles (``autosplit.profiler``) replace this where they exist.
"""

from __future__ import annotations

from autosplit.chips.spec import ChipSpec
from autosplit.model.types import LayerProfile
from autosplit.protocols.cost import LayerTiming

__all__ = ["AnalyticCosts", "roofline_time"]


def roofline_time(flops: float, nbytes: float, chip: ChipSpec, dtype: str) -> float:
    """Seconds for a kernel doing ``flops`` and moving ``nbytes`` on ``chip``."""
    return max(flops / chip.achievable_flops(dtype), nbytes / chip.achievable_bytes_per_s())


class AnalyticCosts:
    """Roofline costs for every chip in the library (``LayerCostProvider``).

    Tensor parallelism divides FLOPs, weight bytes and activation bytes by ``tp`` (Megatron
    column/row sharding with sequence parallelism); its all-reduces are added by the
    communication model, not here. The backward pass reads the weights and writes their
    gradients (twice the weight traffic) and moves twice the activation bytes.
    """

    source = "analytic"

    def layer_timing(self, layer: LayerProfile, chip: ChipSpec, *, micro_batch: int, tp: int,
                     dtype: str) -> LayerTiming:
        b = float(micro_batch)
        fwd = roofline_time(b * layer.fwd_flops / tp,
                            layer.param_bytes / tp + b * layer.fwd_bytes / tp, chip, dtype)
        bwd = roofline_time(b * layer.bwd_flops / tp,
                            2.0 * layer.param_bytes / tp + 2.0 * b * layer.fwd_bytes / tp,
                            chip, dtype)
        return LayerTiming(fwd_s=fwd, bwd_s=bwd, recompute_s=fwd, source="analytic")
