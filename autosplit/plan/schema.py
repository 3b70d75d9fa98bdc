"""The plan: everything a runtime needs to execute a split, and the prediction behind it.

Versioned (``SCHEMA_VERSION``) and documented in docs/plan-schema.md. ``Plan.to_dict`` and
``autosplit.plan.io.plan_from_dict`` are the only (de)serialisers, so hand-edited plans go
through the same checks as searched ones. These dataclasses are also the plan file's schema:
pydantic validates a plan JSON straight into them (``TypeAdapter``; the ``with_config`` below
refuses unknown keys and NaN/infinity) and publishes them as docs/schemas/plan.schema.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import ConfigDict, with_config

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

#: 1.1: ``source_file`` and ``cluster.chip_dirs`` are relative to the plan file's folder (1.0:
#: as typed, relative to the working directory); ``cluster.fingerprint`` and
#: ``cluster.chip_dirs`` added; the schedule's ``virtual_stages``, each stage's pipeline
#: ``rank`` (null: its index), and per stage of a prediction the weight-gradient time and
#: whether its outgoing link blocks; the search's stop reason, work and perfect-balance time.
#: 1.0 plans still load (each stage its own rank, paths as typed).
SCHEMA_VERSION = "1.1"

#: How a plan file is read: every key must be a field, every number finite.
_FILE = ConfigDict(extra="forbid", allow_inf_nan=False)


@with_config(_FILE)
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


@with_config(_FILE)
@dataclass(frozen=True)
class StagePlan:
    """One pipeline stage: a contiguous range of partition units on one chip type.

    ``rank`` is the pipeline position whose devices run the stage (``pipeline_rank``). Unset
    (``None``) it is the stage's own index: one stage per rank. Interleaved schedules put
    several stages (virtual stages, model chunks) on each rank, and those share its devices.
    """

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
    rank: int | None = None

    @property
    def pipeline_rank(self) -> int:
        return self.index if self.rank is None else self.rank

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


@with_config(_FILE)
@dataclass(frozen=True)
class MemoryBreakdown:
    """Peak bytes on the most loaded device of a stage, and that device's capacity.

    ``workspace`` is what the math libraries keep allocated beside the tensors (the chip's
    ``workspace_mb``; plans written before it was counted read 0); ``reserve`` is head-room
    the planner keeps free, not memory anything allocates."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    reserve: float
    capacity: float
    workspace: float = 0.0

    @property
    def allocated(self) -> float:
        """What the device's allocator should peak at: everything but the reserve."""
        return (self.weights + self.gradients + self.optimizer + self.activations
                + self.workspace)

    @property
    def total(self) -> float:
        return self.allocated + self.reserve

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity


@with_config(_FILE)
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
    #: The part of ``bwd_s`` that computes weight gradients (a pass of its own under a
    #: split-backward schedule).
    bwd_weight_s: float = 0.0
    #: The transfer to the next stage blocks compute on both sides (CPU relay); else it
    #: overlaps with compute and only delays the next stage.
    blocking_out: bool = False

    @property
    def compute_s(self) -> float:
        """The stage's own work per micro-batch: forward, backward, recomputation and TP
        collectives, without transfers between stages (what a run's compute timing sees)."""
        return self.fwd_s + self.bwd_s + self.recompute_s + self.tp_comm_s


@with_config(_FILE)
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


@with_config(_FILE)
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
    #: What ended the search: ``complete`` (every cell proven or pruned), ``budget`` (the
    #: deterministic work budget) or ``time_limit`` (the wall clock; machine-dependent).
    stopped_by: str = "complete"
    #: Work units spent and allowed (millions of elementary steps).
    work: float = 0.0
    budget: float = 0.0
    #: The iteration time if every device worked all the time at its best efficiency (total
    #: work over total effective compute: no bubble, no transfers, no memory limits);
    #: ``perfect_balance_s / prediction.iteration_s`` says how close to that the plan is.
    perfect_balance_s: float = 0.0
    #: The best plan's time by the search's own objective (the closed form
    #: ``Σu + (m − 1)·max u`` plus transfers and tail), which ``lower_bound_s`` bounds and
    #: ``optimality_gap`` is measured against. ``prediction.iteration_s`` is the chosen
    #: schedule's simulation of the plan and may lie on either side of it (an interleaved
    #: schedule can beat the closed form, and its bound).
    objective_s: float = 0.0


@with_config(_FILE)
@dataclass(frozen=True)
class Alternative:
    """A next-best plan, summarised (shape and predicted time)."""

    summary: str
    iteration_s: float
    ratio_to_best: float
    stages: tuple[dict[str, Any], ...] = ()


@with_config(_FILE)
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


@with_config(_FILE)
@dataclass(frozen=True)
class ClusterRef:
    name: str
    source_file: str
    num_devices: int
    chips: tuple[str, ...]
    #: Hash of the cluster file's content when the plan was made ("" if unknown).
    fingerprint: str = ""
    #: Chip directories the plan was searched with besides the cluster file's own
    #: (``--chips-dir``): chip files and measured profiles were looked up there.
    chip_dirs: tuple[str, ...] = ()


@with_config(_FILE)
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
    #: Stages (model chunks) per pipeline rank; more than 1 only for interleaved schedules.
    virtual_stages: int = 1
    #: Data-parallel gradient bucket size (MB) and whether its all-reduce overlaps the
    #: backward (docs/cost-model.md §2); written only when not the defaults (25, true).
    grad_bucket_mb: float = 25.0
    grad_overlap: bool = True
    schema_version: str = SCHEMA_VERSION

    @property
    def micro_batch_samples(self) -> int:
        """Samples in one global micro-batch (summed over the replicas of any stage)."""
        return self.global_batch // self.micro_batch_count

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def num_ranks(self) -> int:
        """Pipeline ranks (positions); the number of stages unless stages are virtual."""
        return len({s.pipeline_rank for s in self.stages})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["micro_batch_samples"] = self.micro_batch_samples
        for key, default in (("grad_bucket_mb", 25.0), ("grad_overlap", True)):
            if d[key] == default:  # plans made with the defaults read (and hash) as before
                del d[key]
        for s, sd in zip(self.stages, d["stages"], strict=True):
            sd["dp"] = s.dp
            if s.rank is None:  # written only where a schedule places stages on ranks, so
                del sd["rank"]  # plans of one stage per rank read (and hash) as before
        return d
