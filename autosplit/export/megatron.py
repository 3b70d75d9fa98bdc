"""A plan as Megatron-LM command-line flags.

Megatron takes the sizes (``--tensor-model-parallel-size``, ``--pipeline-model-parallel-size``;
DP is what is left of the world), the batch (``--micro-batch-size`` per replica,
``--global-batch-size``), and an uneven split either as
``--decoder-first/last-pipeline-num-layers`` (first and last stage differ, middle stages even)
or, for any split, as ``--pipeline-model-parallel-layout``: ``E`` the embedding, ``t`` one
decoder layer, ``L`` the output layer and loss, ``|`` a stage boundary, ``t*3`` three layers,
``,`` purely cosmetic. Our unit 0 (``pre``) is ``E``, each block a ``t``, ``post`` is ``L``.

Recompute is one setting for all stages (``--recompute-granularity full --recompute-method
uniform --recompute-num-layers 1``); ``expressible`` has already made the plan uniform.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from autosplit.export.shape import blocks_per_stage, uniform_shape, unit_count
from autosplit.plan.schema import Plan

__all__ = ["MegatronArgs", "megatron_args", "pipeline_layout", "render_megatron"]


@dataclass(frozen=True)
class MegatronArgs:
    """The flags (``args``), and what the header comment tells the user."""

    args: tuple[str, ...]
    layout: str
    #: ``--decoder-first/last-pipeline-num-layers`` flags equivalent to ``layout``, when those
    #: suffice (empty when they do not, or when the split is even and needs neither).
    first_last_args: tuple[str, ...]
    world_size: int
    stage_devices: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"args": list(self.args), "layout": self.layout,
                "first_last_args": list(self.first_last_args), "world_size": self.world_size,
                "stage_devices": list(self.stage_devices)}


def pipeline_layout(plan: Plan) -> str:
    """``--pipeline-model-parallel-layout`` for the plan's split, e.g. ``E,t*3|t*5|t*4,L``."""
    last = unit_count(plan) - 1
    parts = []
    for stage, blocks in zip(plan.stages, blocks_per_stage(plan), strict=True):
        items = []
        if stage.layer_start == 0:
            items.append("E")
        if blocks:
            items.append("t" if blocks == 1 else f"t*{blocks}")
        if stage.layer_end - 1 == last:
            items.append("L")
        parts.append(",".join(items))
    return "|".join(parts)


def megatron_args(plan: Plan) -> MegatronArgs:
    """Megatron flags for an expressible plan (``BadInputError`` otherwise)."""
    shape = uniform_shape(plan, "megatron")
    blocks = blocks_per_stage(plan)
    layout = pipeline_layout(plan)
    args: list[str] = [
        "--tensor-model-parallel-size", str(shape.tp),
        "--pipeline-model-parallel-size", str(shape.pp),
        "--num-layers", str(sum(blocks)),
        "--seq-length", str(plan.model.seq_len),
        "--micro-batch-size", str(shape.micro_batch_size),
        "--global-batch-size", str(shape.global_batch),
    ]
    even = len(set(blocks)) == 1
    if shape.pp > 1 and not even:
        args += ["--pipeline-model-parallel-layout", layout]
    if plan.model.dtype in ("bf16", "fp16"):
        args.append(f"--{plan.model.dtype}")
    if plan.zero1 and shape.dp > 1:
        args.append("--use-distributed-optimizer")
    if shape.recompute:
        args += ["--recompute-granularity", "full", "--recompute-method", "uniform",
                 "--recompute-num-layers", "1"]
    devices = tuple(
        f"stage {s.index} ({s.chip}, ranks {s.index * shape.tp * shape.dp}-"
        f"{(s.index + 1) * shape.tp * shape.dp - 1}): "
        + " ".join(f"{r.node}:{','.join(map(str, r.local_indices))}" for r in s.replicas)
        for s in plan.stages)
    return MegatronArgs(args=tuple(args), layout=layout,
                        first_last_args=_first_last(blocks) if not even else (),
                        world_size=shape.world_size, stage_devices=devices)


def render_megatron(margs: MegatronArgs, *, plan: Plan, notes: tuple[str, ...] = ()) -> str:
    """A bash fragment defining ``MEGATRON_PARALLEL_ARGS``, with the placement as comments."""
    lines = [
        f"# autosplit plan for {plan.model.name} on {plan.cluster.name}: Megatron-LM flags.",
        "# Use: source this file, then pass \"${MEGATRON_PARALLEL_ARGS[@]}\" to pretrain_*.py.",
        f"# World size {margs.world_size}; pipeline rank is outermost, so start each stage's",
        "# ranks on the devices listed for it:",
        *(f"#   {d}" for d in margs.stage_devices),
    ]
    if margs.first_last_args:
        lines.append("# Megatron without --pipeline-model-parallel-layout: use instead")
        lines.append("#   " + " ".join(margs.first_last_args))
    lines += [f"# note: {n}" for n in notes]
    lines.append("MEGATRON_PARALLEL_ARGS=(")
    i = 0
    a = margs.args
    while i < len(a):
        if i + 1 < len(a) and not a[i + 1].startswith("--"):
            lines.append(f"  {a[i]} {shlex.quote(a[i + 1])}")
            i += 2
        else:
            lines.append(f"  {a[i]}")
            i += 1
    lines.append(")")
    return "\n".join(lines) + "\n"


def _first_last(blocks: tuple[int, ...]) -> tuple[str, ...]:
    """First/last flags when the middle stages are even (Megatron splits them evenly)."""
    if len(blocks) < 2 or blocks[0] < 1 or blocks[-1] < 1:
        return ()
    middle = blocks[1:-1]
    if middle and (len(set(middle)) != 1 or middle[0] < 1):
        return ()
    return ("--decoder-first-pipeline-num-layers", str(blocks[0]),
            "--decoder-last-pipeline-num-layers", str(blocks[-1]))
