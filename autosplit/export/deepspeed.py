"""A plan as a DeepSpeed config plus ``PipelineModule`` partition boundaries.

DeepSpeed's config JSON carries the batch (``train_batch_size`` = micro-batch per GPU ×
gradient-accumulation steps × DP) and ZeRO; the pipeline itself is built in Python by
``PipelineModule(layers, num_stages, activation_checkpoint_interval=...)``, which has no
option for explicit boundaries — a subclass overriding ``_partition_layers`` sets
``self.parts`` (length ``num_stages + 1``, stage ``i`` owns layers ``parts[i]:parts[i+1]``).
The export writes both: ``ds_config`` for ``deepspeed.initialize`` and ``pipeline_module`` with
``parts`` (docs/export.md shows the subclass).

``parts`` index the ``layers`` list given to ``PipelineModule``. By default that list is one
entry per partition unit (embedding, each block, head); when the user's list spends several
entries on the embedding or the head, ``pre_layers``/``post_layers`` say how many.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from autosplit.errors import BadInputError
from autosplit.export.naming import IDENTITY, NameMap, stage_module_names
from autosplit.export.shape import uniform_shape, unit_count
from autosplit.plan.schema import Plan

__all__ = ["DeepSpeedExport", "deepspeed_export", "partition_parts", "render_deepspeed"]


@dataclass(frozen=True)
class DeepSpeedExport:
    """``ds_config`` (the DeepSpeed JSON) and the ``PipelineModule`` arguments."""

    ds_config: dict[str, object]
    num_stages: int
    parts: tuple[int, ...]
    activation_checkpoint_interval: int
    tensor_parallel_size: int
    data_parallel_size: int
    stage_modules: tuple[tuple[str, ...], ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "ds_config": self.ds_config,
            "pipeline_module": {
                "num_stages": self.num_stages,
                "parts": list(self.parts),
                "activation_checkpoint_interval": self.activation_checkpoint_interval,
                "topology": {"num_pp": self.num_stages, "num_mp": self.tensor_parallel_size,
                             "num_dp": self.data_parallel_size},
                "stage_modules": [list(m) for m in self.stage_modules],
            },
        }


def partition_parts(plan: Plan, *, pre_layers: int = 1, post_layers: int = 1) -> tuple[int, ...]:
    """Stage boundaries over the ``PipelineModule`` layer list (length ``num_stages + 1``)."""
    if pre_layers < 1 or post_layers < 1:
        raise BadInputError("the embedding and the head take at least one layer entry each",
                            field="pre_layers/post_layers", fix="pass values of 1 or more")
    units = unit_count(plan)
    blocks = units - 2

    def first_entry(unit: int) -> int:
        if unit <= 0:
            return 0
        if unit >= units - 1:
            return pre_layers + blocks + (post_layers if unit >= units else 0)
        return pre_layers + unit - 1

    return tuple(first_entry(s.layer_start) for s in plan.stages) + (first_entry(units),)


def deepspeed_export(plan: Plan, *, name_map: NameMap = IDENTITY, pre_layers: int = 1,
                     post_layers: int = 1) -> DeepSpeedExport:
    """DeepSpeed settings for an expressible plan (``BadInputError`` otherwise)."""
    shape = uniform_shape(plan, "deepspeed")
    ds: dict[str, object] = {
        "train_batch_size": shape.global_batch,
        "train_micro_batch_size_per_gpu": shape.micro_batch_size,
        "gradient_accumulation_steps": shape.micro_batches,
        "zero_optimization": {"stage": 1 if plan.zero1 else 0},
    }
    if plan.model.dtype == "bf16":
        ds["bf16"] = {"enabled": True}
    elif plan.model.dtype == "fp16":
        ds["fp16"] = {"enabled": True}
    ds["activation_checkpointing"] = {
        "partition_activations": False,
        "contiguous_memory_optimization": False,
        "cpu_checkpointing": False,
    }
    return DeepSpeedExport(
        ds_config=ds,
        num_stages=shape.pp,
        parts=partition_parts(plan, pre_layers=pre_layers, post_layers=post_layers),
        activation_checkpoint_interval=1 if shape.recompute else 0,
        tensor_parallel_size=shape.tp,
        data_parallel_size=shape.dp,
        stage_modules=stage_module_names(plan, name_map),
    )


def render_deepspeed(export: DeepSpeedExport) -> str:
    return json.dumps(export.to_dict(), indent=2) + "\n"
