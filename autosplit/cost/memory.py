"""Per-device memory of a pipeline stage.

Why position matters: a stage keeps the activations of every micro-batch whose forward it has
run and whose backward it has not, and how many that is depends on the schedule and on the
stage's place in it (``Schedule.in_flight``, counted on the schedule's own order of passes):

- 1F1B: stage ``s`` of ``p`` starts ``min(p − s, m)`` forwards before its first backward
  (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters");
  GPipe keeps all ``m``. Early stages need more memory than late ones for the same layers.
- Interleaved 1F1B: counted per chunk (each chunk holds its own units' activations). In the
  order PyTorch and Megatron run, the first rank holds ``(v − 1)·p + 2p − 1`` chunk-sized
  micro-batches, i.e. ``p·(1 + (p − 1)/(p·v))`` stage-sized ones against 1F1B's ``p``
  (for ``m ≥ p``; Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", section 4.2.3; Narayanan et al. 2021 for the schedule).
- Zero bubble (ZB-H1, ZBV): the weight-gradient pass still reads the saved inputs, so a
  micro-batch counts until its W pass; every ZB-H1 rank then holds ``min(p, m)`` and ZBV's
  two chunks together ``2p`` chunk-sized (``p`` stage-sized) micro-batches: the ``p·M_B``
  peak of Qi et al. 2023, "Zero Bubble Pipeline Parallelism".

Static memory per parameter (mixed-precision Adam, Rajbhandari et al. 2020, ZeRO): weights and
gradients in the training dtype, plus fp32 master weights, m and v (12 bytes), which ZeRO-1
shards across the stage's data-parallel replicas. With full recomputation a stage keeps only
each unit's input per micro-batch in flight, plus one unit's full activations while it
recomputes it for the backward.

Beside the tensors, every training device holds the math libraries' workspaces
(``ChipSpec.workspace_bytes``, measured by ``profile-chip``), and the planner keeps
``memory_reserve_gb`` free on top: ``unusable_bytes`` is the sum of the two, the part of a
device's memory no stage may plan for.
"""

from __future__ import annotations

from autosplit.chips.spec import ChipSpec
from autosplit.config import TrainingConfig
from autosplit.cost.schedule import get_schedule

__all__ = ["in_flight_micro_batches", "static_bytes_per_param", "optimizer_bytes_per_param",
           "unusable_bytes"]


def in_flight_micro_batches(*, schedule: str, stage: int, num_stages: int,
                            micro_batches: int, virtual_stages: int = 1) -> int:
    """Micro-batches whose activations a (virtual) stage holds at its peak."""
    return get_schedule(schedule, virtual_stages=virtual_stages).in_flight(
        stage, num_stages, micro_batches)


def static_bytes_per_param(training: TrainingConfig) -> float:
    """Weights + gradients bytes per parameter (not sharded by ZeRO-1)."""
    return 2.0 * training.dtype_bytes


def optimizer_bytes_per_param(training: TrainingConfig, *, dp: int) -> float:
    """Optimizer-state bytes per parameter on one device (sharded over ``dp`` with ZeRO-1)."""
    per = float(training.optimizer_bytes_per_param)
    return per / dp if training.zero1 else per


def unusable_bytes(chip: ChipSpec, training: TrainingConfig) -> float:
    """Bytes of each device of ``chip`` that no stage may plan for: the libraries'
    workspaces plus the reserve."""
    return chip.workspace_bytes + training.memory_reserve_gb * 1e9
