"""A plan as a torchtitan job-config fragment (TOML, or JSON with ``--json``).

torchtitan's ``[parallelism]`` section takes one degree per dimension and, for an uneven
split, ``module_fqns_per_model_part``: the fully qualified module names each pipeline stage
builds, which is exactly ``StagePlan.module_names`` renamed to torchtitan's model through the
name map. Activation checkpointing is one mode for every block (``full`` or ``none``).
ZeRO-1 has no torchtitan switch; a plan that shards the optimizer is exported with FSDP
(``data_parallel_shard_degree``), which shards weights and gradients too and so needs no
more memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from autosplit.export.naming import IDENTITY, NameMap, stage_module_names
from autosplit.export.shape import uniform_shape
from autosplit.plan.schema import Plan

__all__ = ["TorchtitanConfig", "torchtitan_config", "render_torchtitan_toml",
           "render_torchtitan_json"]

_SCHEDULE_NAMES = {"1f1b": "1F1B", "gpipe": "GPipe"}


@dataclass(frozen=True)
class TorchtitanConfig:
    """The ``[parallelism]``, ``[activation_checkpoint]`` and ``[training]`` values."""

    pipeline_parallel_degree: int
    tensor_parallel_degree: int
    data_parallel_replicate_degree: int
    data_parallel_shard_degree: int
    pipeline_parallel_schedule: str
    pipeline_parallel_microbatch_size: int
    module_fqns_per_model_part: tuple[tuple[str, ...], ...]
    activation_checkpoint_mode: str
    local_batch_size: int
    global_batch_size: int
    seq_len: int

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {
            "parallelism": {
                "pipeline_parallel_degree": self.pipeline_parallel_degree,
                "tensor_parallel_degree": self.tensor_parallel_degree,
                "data_parallel_replicate_degree": self.data_parallel_replicate_degree,
                "data_parallel_shard_degree": self.data_parallel_shard_degree,
                "pipeline_parallel_schedule": self.pipeline_parallel_schedule,
                "pipeline_parallel_microbatch_size": self.pipeline_parallel_microbatch_size,
                "module_fqns_per_model_part": [list(p) for p in
                                               self.module_fqns_per_model_part],
            },
            "activation_checkpoint": {"mode": self.activation_checkpoint_mode},
            "training": {
                "local_batch_size": self.local_batch_size,
                "global_batch_size": self.global_batch_size,
                "seq_len": self.seq_len,
            },
        }


def torchtitan_config(plan: Plan, *, name_map: NameMap = IDENTITY) -> TorchtitanConfig:
    """torchtitan settings for an expressible plan (``BadInputError`` otherwise)."""
    shape = uniform_shape(plan, "torchtitan")
    replicate, shard = (1, shape.dp) if plan.zero1 and shape.dp > 1 else (shape.dp, 1)
    return TorchtitanConfig(
        pipeline_parallel_degree=shape.pp,
        tensor_parallel_degree=shape.tp,
        data_parallel_replicate_degree=replicate,
        data_parallel_shard_degree=shard,
        pipeline_parallel_schedule=_SCHEDULE_NAMES.get(shape.schedule, shape.schedule),
        pipeline_parallel_microbatch_size=shape.micro_batch_size,
        module_fqns_per_model_part=stage_module_names(plan, name_map),
        activation_checkpoint_mode="full" if shape.recompute else "none",
        local_batch_size=shape.micro_batch_size * shape.micro_batches,
        global_batch_size=shape.global_batch,
        seq_len=plan.model.seq_len,
    )


def render_torchtitan_toml(cfg: TorchtitanConfig, *, plan: Plan,
                           notes: tuple[str, ...] = ()) -> str:
    """The fragment as TOML, to merge into a torchtitan job config."""
    lines = [f"# autosplit plan for {plan.model.name} on {plan.cluster.name}: torchtitan "
             "job-config fragment.",
             "# Pipeline rank is outermost: start stage i's ranks on the devices the plan "
             "gives stage i."]
    lines += [f"# note: {n}" for n in notes]
    for section, values in cfg.to_dict().items():
        lines.append("")
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def render_torchtitan_json(cfg: TorchtitanConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        if value and all(isinstance(v, list) for v in value):
            inner = ",\n".join(f"  {_toml_value(v)}" for v in value)
            return f"[\n{inner},\n]"
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")
