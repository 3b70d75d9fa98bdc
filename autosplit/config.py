"""Typed configuration in one place: what the user trains, and how hard the search works.

Every knob a user can set from the CLI lands in one of these dataclasses, so the search, the
cost model and the exporters all read the same values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DTYPE_BYTES", "TrainingConfig", "SearchConfig", "SCHEDULES"]

#: Bytes per element of the training dtype (weights, activations, gradients).
DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4}

#: Pipeline schedules the search prices memory under and ``autosplit run`` executes. The cost
#: model prices more (``autosplit.cost.schedule.SCHEDULE_NAMES``: interleaved and zero-bubble
#: too): the search re-costs its finalists under those (``search.schedule_choice``), and
#: ``evaluate`` and ``report`` accept them in a plan.
SCHEDULES: tuple[str, ...] = ("1f1b", "gpipe")


@dataclass(frozen=True)
class TrainingConfig:
    """What one training iteration is.

    ``global_batch`` is in samples (sequences); one sample is ``seq_len`` tokens.
    ``zero1`` shards the fp32 optimizer states across each stage's data-parallel replicas.
    """

    global_batch: int = 64
    seq_len: int = 2048
    dtype: str = "bf16"
    schedule: str = "1f1b"
    #: Stages (model chunks) per pipeline rank: more than 1 only for interleaved schedules.
    virtual_stages: int = 1
    zero1: bool = False
    #: Bytes each device keeps free for the framework, workspace and fragmentation.
    memory_reserve_gb: float = 2.0
    #: Data-parallel gradient buckets (MB, 1e6 B): each bucket's all-reduce starts when the
    #: backward has produced it (PyTorch DDP's ``bucket_cap_mb`` default, 25).
    grad_bucket_mb: float = 25.0
    #: Overlap the bucketed all-reduce with the last micro-batch's backward (DDP, Megatron-LM
    #: ``--overlap-grad-reduce``); off: the whole all-reduce follows the backward.
    grad_overlap: bool = True

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def tokens_per_iteration(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def optimizer_bytes_per_param(self) -> int:
        """Adam in mixed precision keeps an fp32 master copy plus m and v (4+4+4 bytes);
        in pure fp32 the weights are the master copy, so only m and v remain (4+4)."""
        return 8 if self.dtype == "fp32" else 12


@dataclass(frozen=True)
class SearchConfig:
    """How the search explores the tree. Defaults aim at seconds on a laptop."""

    #: Wall-clock safety net (seconds): every phase checks it and the search returns the best
    #: plan found when it passes. Machine-dependent, so it is not what normally ends a search.
    time_limit_s: float = 60.0
    #: Deterministic work budget, in millions of elementary steps of the search's programmes
    #: and exact splits: the same inputs and budget give the same plan on any machine.
    budget: float = 4000.0
    #: Micro-batch sizes (samples per data-parallel replica) the search may choose.
    micro_batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    #: Upper bound on pipeline depth; 0 means "as many stages as layers allow".
    max_stages: int = 0
    #: Tensor-parallel degrees allowed (a TP group lives in one node; a degree that does not
    #: divide a node leaves its other devices to smaller groups, ``search.packing``).
    tp_degrees: tuple[int, ...] = (1, 2, 4, 8)
    #: Allow plans that leave some devices idle when that is faster.
    allow_idle: bool = True
    #: Number of next-best alternatives to keep in the plan.
    alternatives: int = 3
    #: Level-2 solver: "dp" (exact parametric dynamic programme) or "cpsat" (OR-Tools).
    solver: str = "dp"
    #: Restrict to plans a given runtime can express ("", "megatron", "torchtitan", "deepspeed").
    target: str = ""
    #: Allow recomputation to be chosen per stage.
    allow_recompute: bool = True
    #: Pipeline schedule of the plan: "auto" (the fastest that fits, ``search.schedule_choice``),
    #: a name of ``cost.schedule.SCHEDULE_NAMES``, or "" for the training's ``schedule``.
    schedule: str = ""
    #: Extra options kept for forward compatibility (recorded in the plan).
    extra: dict[str, str] = field(default_factory=dict)
