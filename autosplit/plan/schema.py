"""The plan: everything a runtime needs to execute a split, and the prediction behind it.

Versioned (``SCHEMA_VERSION``) and documented in docs/plan-schema.md. ``Plan.to_dict`` and
``Plan.from_dict`` are the only (de)serialisers, so hand-edited plans go through the same
checks as searched ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "Replica",
    "StagePlan",
    "MemoryBreakdown",
    "StagePrediction",
    "Prediction",
    "SearchStats",
    "Alternative",
    "ModelRef",
    "ClusterRef",
    "Plan",
]

SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class Replica:
    """One data-parallel replica of a stage: a TP group of devices inside one node.

    ``batch_share`` is the number of samples of each (global) micro-batch this replica
    processes; replicas on faster chips may get more. ``chip`` is the replica's chip (the
    node's); in a stage that mixes chips of one collective group it differs between replicas.
    """

    node: str
    local_indices: tuple[int, ...]
    batch_share: int
    chip: str = ""


@dataclass(frozen=True)
class StagePlan:
    """One pipeline stage: a contiguous range of partition units on one chip type."""

    index: int
    chip: str
    layer_start: int  # first unit, inclusive
    layer_end: int  # last unit, exclusive
    layer_names: tuple[str, ...]
    module_names: tuple[str, ...]
    tp: int
    replicas: tuple[Replica, ...]
    recompute: bool
    cost_source: str = "analytic"

    @property
    def dp(self) -> int:
        return len(self.replicas)

    @property
    def chip_label(self) -> str:
        """``H100``, or ``H100+A100`` for a stage whose replicas mix chips."""
        chips = list(dict.fromkeys(r.chip or self.chip for r in self.replicas)) or [self.chip]
        return "+".join(chips)

    @property
    def num_layers(self) -> int:
        return self.layer_end - self.layer_start

    @property
    def num_devices(self) -> int:
        return self.tp * self.dp


@dataclass(frozen=True)
class MemoryBreakdown:
    """Peak bytes on the most loaded device of a stage, and that device's capacity."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    reserve: float
    capacity: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.reserve

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity


@dataclass(frozen=True)
class StagePrediction:
    """Per-micro-batch times of one stage (seconds), and its per-iteration tails."""

    index: int
    fwd_s: float
    bwd_s: float
    recompute_s: float
    tp_comm_s: float
    p2p_in_s: float
    p2p_out_s: float
    #: Time the stage is busy per micro-batch (compute + TP comm + non-overlapped p2p).
    busy_s: float
    dp_allreduce_s: float
    optimizer_s: float
    memory: MemoryBreakdown
    in_flight: int

    @property
    def compute_s(self) -> float:
        """The stage's own work per micro-batch: forward, backward, recomputation and TP
        collectives, without transfers between stages (what a run's compute timing sees)."""
        return self.fwd_s + self.bwd_s + self.recompute_s + self.tp_comm_s


@dataclass(frozen=True)
class Prediction:
    """What the cost model predicts for one iteration."""

    iteration_s: float
    tokens_per_s: float
    samples_per_s: float
    mfu: float
    pipeline_s: float
    bubble_s: float
    dp_sync_s: float
    optimizer_s: float
    bottleneck_stage: int
    stages: tuple[StagePrediction, ...]


@dataclass(frozen=True)
class SearchStats:
    """What the search did, so a user can judge how hard it looked."""

    time_s: float = 0.0
    explored: int = 0
    pruned: dict[str, int] = field(default_factory=dict)
    level1_candidates: int = 0
    exact_solves: int = 0
    solver: str = "dp"
    lower_bound_s: float = 0.0
    optimality_gap: float = 0.0
    timed_out: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Alternative:
    """A next-best plan, summarised (shape and predicted time)."""

    summary: str
    iteration_s: float
    ratio_to_best: float
    stages: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ModelRef:
    name: str
    source_file: str
    fingerprint: str
    num_layers: int
    params: int
    seq_len: int
    dtype: str
    tokens_per_sample: int
    block_list: str
    model_args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterRef:
    name: str
    source_file: str
    num_devices: int
    chips: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """A complete, executable split plan."""

    model: ModelRef
    cluster: ClusterRef
    global_batch: int
    micro_batch_count: int
    schedule: str
    zero1: bool
    stages: tuple[StagePlan, ...]
    memory_reserve_gb: float = 2.0
    prediction: Prediction | None = None
    idle_devices: tuple[str, ...] = ()
    #: When devices are left idle: the best plan that uses every device, and how it compares.
    idle_note: str = ""
    search: SearchStats = field(default_factory=SearchStats)
    alternatives: tuple[Alternative, ...] = ()
    schema_version: str = SCHEMA_VERSION

    @property
    def micro_batch_samples(self) -> int:
        """Samples in one global micro-batch (summed over the replicas of any stage)."""
        return self.global_batch // self.micro_batch_count

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["micro_batch_samples"] = self.micro_batch_samples
        for s, sd in zip(self.stages, d["stages"], strict=True):
            sd["dp"] = s.dp
        return d
