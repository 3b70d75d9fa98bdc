"""Per-device memory of a pipeline stage.

Why position matters: under 1F1B, stage ``s`` of ``p`` starts ``min(p − s, m)`` forwards before
its first backward, so it keeps that many micro-batches of activations alive (Narayanan et al.
2021, "Efficient Large-Scale Language Model Training on GPU Clusters"); GPipe keeps all ``m``.
Early stages therefore need more memory than late ones for the same layers.

Static memory per parameter (mixed-precision Adam, Rajbhandari et al. 2020, ZeRO): weights and
gradients in the training dtype, plus fp32 master weights, m and v (12 bytes), which ZeRO-1
shards across the stage's data-parallel replicas. With full recomputation a stage keeps only
each unit's input per micro-batch in flight, plus one unit's full activations while it
recomputes it for the backward.
"""

from __future__ import annotations

from autosplit.config import TrainingConfig

__all__ = ["in_flight_micro_batches", "static_bytes_per_param", "optimizer_bytes_per_param"]


def in_flight_micro_batches(*, schedule: str, stage: int, num_stages: int,
                            micro_batches: int) -> int:
    """Micro-batches whose activations a stage holds at its peak."""
    if schedule == "gpipe":
        return micro_batches
    return min(num_stages - stage, micro_batches)


def static_bytes_per_param(training: TrainingConfig) -> float:
    """Weights + gradients bytes per parameter (not sharded by ZeRO-1)."""
    return 2.0 * training.dtype_bytes


def optimizer_bytes_per_param(training: TrainingConfig, *, dp: int) -> float:
    """Optimizer-state bytes per parameter on one device (sharded over ``dp`` with ZeRO-1)."""
    per = float(training.optimizer_bytes_per_param)
    return per / dp if training.zero1 else per
