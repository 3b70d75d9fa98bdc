"""Typed configuration in one place: what the user trains, and how hard the search works.

Every knob a user can set from the CLI lands in one of these dataclasses, so the search, the
cost model and the exporters all read the same values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DTYPE_BYTES", "TrainingConfig", "SearchConfig", "SCHEDULES"]

#: Bytes per element of the training dtype (weights, activations, gradients).
DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4}

#: Pipeline schedules the cost model and the runtime both understand.
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
    zero1: bool = False
    #: Bytes each device keeps free for the framework, workspace and fragmentation.
    memory_reserve_gb: float = 2.0

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

    time_limit_s: float = 60.0
    #: Exact level-2 solves before the search stops with the best plan so far. Unlike the
    #: wall-clock limit this budget is deterministic: the same inputs give the same plan.
    max_solves: int = 2000
    #: Candidates whose bound is below the best plan that CP-SAT re-solves exactly at the end
    #: (closing the gap the DP leaves on the post-pipeline tail), and its deterministic time
    #: budget per candidate (OR-Tools' deterministic seconds).
    certify_max: int = 0
    certify_time: float = 2.0
    #: Micro-batch sizes (samples per data-parallel replica) the search may choose.
    micro_batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    #: Upper bound on pipeline depth; 0 means "as many stages as layers allow".
    max_stages: int = 0
    #: Tensor-parallel degrees allowed (each must divide the node's device count).
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
    #: Extra options kept for forward compatibility (recorded in the plan).
    extra: dict[str, str] = field(default_factory=dict)
