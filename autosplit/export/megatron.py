"""A plan as the Megatron-LM command line a user pastes: model shape, parallel sizes, batch,
layout, recompute, and the environment it needs.

Targets megatron-core 0.19 (``megatron.training.arguments``, checked in CI by its own
``parse_args`` + ``validate_args``); docs/export.md says which older releases take the flags.

The model shape comes from the user's model file (``model_shape``): ``--num-layers``,
``--hidden-size``, ``--num-attention-heads``, ``--ffn-hidden-size``, ``--seq-length``,
``--max-position-embeddings``, ``--group-query-attention --num-query-groups`` for GQA, and the
architecture switches (``--swiglu``, ``--normalization RMSNorm``, ``--position-embedding-type``,
``--disable-bias-linear``, ``--untie-embeddings-and-output-weights``). With TP > 1 Megatron
requires ``CUDA_DEVICE_MAX_CONNECTIONS=1`` (its ``validate_args`` refuses to start otherwise,
because the TP communication must be scheduled before the GEMM it overlaps), so the export sets it.

Megatron takes the sizes (``--tensor-model-parallel-size``, ``--pipeline-model-parallel-size``;
DP is what is left of the world), the batch (``--micro-batch-size`` per replica,
``--global-batch-size``), and an uneven split either as
``--decoder-first/last-pipeline-num-layers`` (first and last stage differ, middle stages even)
or, for any split, as ``--pipeline-model-parallel-layout``: ``E`` the embedding, ``t`` one
decoder layer, ``L`` the output layer and loss, ``|`` a stage boundary, ``t*3`` three layers,
``,`` purely cosmetic. Our unit 0 (``pre``) is ``E``, each block a ``t``, ``post`` is ``L``.

Interleaved 1F1B (``forward_backward_pipelining_with_interleaving``) is Megatron's virtual
pipeline: the plan's stages are the model chunks in model order, stage ``s`` on pipeline rank
``s mod p`` as chunk ``s // p`` — the placement ``cost.schedule`` prices and the one Megatron's
layout gives (``PipelineParallelLayerLayout``: the ``k``-th ``|``-separated part is virtual
rank ``k // p`` of rank ``k mod p``). Equal chunks take
``--num-virtual-stages-per-pipeline-rank v``; unequal ones the layout with all ``p·v`` parts.
``--microbatch-group-size-per-virtual-pipeline-stage`` is set to the number of micro-batches
a chunk runs back to back in the priced order, so Megatron runs that order (its default, the
pipeline size, refuses some micro-batch counts PyTorch's schedule takes). Megatron-core 0.19
has no zero-bubble schedule (its ``--delay-wgrad-compute`` only defers Transformer Engine's
weight gradients inside MoE communication overlap); ``export.schedules`` refuses those plans.

Recompute is one setting for all stages (``--recompute-granularity full --recompute-method
uniform --recompute-num-layers 1``); ``expressible`` has already made the plan uniform.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from autosplit.errors import BadInputError
from autosplit.export.model_shape import ModelShape
from autosplit.export.schedules import microbatch_group_size
from autosplit.export.shape import (
    UniformShape,
    blocks_per_stage,
    rank_stages,
    uniform_shape,
    unit_count,
)
from autosplit.plan.schema import Plan

__all__ = ["MEGATRON_CORE_TESTED", "MegatronArgs", "megatron_args", "model_flags",
           "pipeline_layout", "render_megatron", "rank_devices", "launch_lines"]

#: The megatron-core release whose parser CI feeds every export to.
MEGATRON_CORE_TESTED = "0.19.2"


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
    #: Environment variables the job needs (``CUDA_DEVICE_MAX_CONNECTIONS=1`` with TP > 1).
    env: tuple[tuple[str, str], ...] = ()
    #: One ``torchrun`` line per node, in node-rank order (empty when the plan's ranks are not
    #: contiguous per node, which a per-node launcher cannot express).
    launch: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"args": list(self.args), "env": dict(self.env), "layout": self.layout,
                "first_last_args": list(self.first_last_args), "world_size": self.world_size,
                "stage_devices": list(self.stage_devices), "launch": list(self.launch),
                "megatron_core": MEGATRON_CORE_TESTED}


def pipeline_layout(plan: Plan) -> str:
    """``--pipeline-model-parallel-layout`` for the plan's split, e.g. ``E,t*3|t*5|t*4,L``:
    one part per stage in model order, which for a virtual pipeline is also Megatron's
    order (part ``k`` on rank ``k mod p``)."""
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


def model_flags(model: ModelShape, *, seq_len: int) -> list[str]:
    """Megatron's model-shape and architecture flags for the user's model."""
    args = [
        "--num-layers", str(model.num_layers),
        "--hidden-size", str(model.hidden),
        "--num-attention-heads", str(model.heads),
        "--ffn-hidden-size", str(model.ffn),
        "--seq-length", str(seq_len),
        "--max-position-embeddings", str(model.positions or seq_len),
        "--position-embedding-type", "learned_absolute" if model.positions else "rope",
    ]
    if model.kv_heads != model.heads:
        args += ["--group-query-attention", "--num-query-groups", str(model.kv_heads)]
    if model.gated_mlp:
        args.append("--swiglu")
    if model.rms_norm:
        args += ["--normalization", "RMSNorm"]
    if not model.bias:
        args.append("--disable-bias-linear")
    if not model.tied_head:
        args.append("--untie-embeddings-and-output-weights")
    return args


def megatron_args(plan: Plan, model: ModelShape) -> MegatronArgs:
    """Megatron flags for an expressible plan (``BadInputError`` otherwise)."""
    shape = uniform_shape(plan, "megatron")
    blocks = blocks_per_stage(plan)
    if sum(blocks) != model.num_layers:
        raise BadInputError(
            f"the plan's stages own {sum(blocks)} blocks but the model has "
            f"{model.num_layers}", field="stages",
            fix="export with the model file and --model-arg values the plan was searched with")
    layout = pipeline_layout(plan)
    args = model_flags(model, seq_len=plan.model.seq_len) + [
        "--tensor-model-parallel-size", str(shape.tp),
        "--pipeline-model-parallel-size", str(shape.pp),
        "--micro-batch-size", str(shape.micro_batch_size),
        "--global-batch-size", str(shape.global_batch),
    ]
    even = len(set(blocks)) == 1
    interleaved = shape.pp > 1 and shape.virtual_stages > 1
    if shape.pp > 1 and not even:
        args += ["--pipeline-model-parallel-layout", layout]
    elif interleaved:
        args += ["--num-virtual-stages-per-pipeline-rank", str(shape.virtual_stages)]
    if interleaved:
        args += ["--microbatch-group-size-per-virtual-pipeline-stage",
                 str(microbatch_group_size(plan))]
    if plan.model.dtype in ("bf16", "fp16"):
        args.append(f"--{plan.model.dtype}")
    if plan.zero1 and shape.dp > 1:
        args.append("--use-distributed-optimizer")
    if shape.recompute:
        args += ["--recompute-granularity", "full", "--recompute-method", "uniform",
                 "--recompute-num-layers", "1"]
    devices = rank_devices(plan, shape)
    env = (("CUDA_DEVICE_MAX_CONNECTIONS", "1"),) if shape.tp > 1 else ()
    return MegatronArgs(args=tuple(args), layout=layout,
                        first_last_args=_first_last(blocks) if not even
                        and shape.virtual_stages == 1 else (),
                        world_size=shape.world_size, stage_devices=devices, env=env,
                        launch=launch_lines(plan, shape))


def rank_devices(plan: Plan, shape: UniformShape) -> tuple[str, ...]:
    """One line per pipeline rank: its stages, chip, Megatron ranks and devices."""
    block = shape.tp * shape.dp
    out = []
    for r, lead in enumerate(rank_stages(plan)):
        chunks = [s.index for s in plan.stages if s.pipeline_rank == lead.pipeline_rank]
        what = (f"stage {lead.index}" if len(chunks) == 1 else
                f"pipeline rank {r}, stages {', '.join(map(str, chunks))}")
        out.append(f"{what} ({lead.chip}, ranks {r * block}-{(r + 1) * block - 1}): "
                   + " ".join(f"{x.node}:{','.join(map(str, x.local_indices))}"
                              for x in lead.replicas))
    return tuple(out)


def launch_lines(plan: Plan, shape: UniformShape) -> tuple[str, ...]:
    """One ``torchrun`` per node, so Megatron's rank order lands on the plan's devices.

    Megatron numbers ranks TP fastest, then DP, then PP (rank = pipeline rank·TP·DP +
    replica·TP + t; the chunks of one pipeline rank share its processes); torchrun gives node
    ``k`` the ranks after those of nodes ``0..k-1``. That works when each node's ranks are one
    contiguous run; ``CUDA_VISIBLE_DEVICES`` puts local rank ``i`` on the
    plan's device. Empty when some node's ranks are not contiguous.
    """
    runs: list[tuple[str, list[int]]] = []
    for stage in rank_stages(plan):
        for replica in stage.replicas:
            if runs and runs[-1][0] == replica.node:
                runs[-1][1].extend(replica.local_indices)
            else:
                runs.append((replica.node, list(replica.local_indices)))
    nodes = [n for n, _ in runs]
    if len(set(nodes)) != len(nodes):
        return ()
    return tuple(
        f"{node}: CUDA_VISIBLE_DEVICES={','.join(map(str, devices))} torchrun "
        f"--nnodes={len(runs)} --node-rank={k} --nproc-per-node={len(devices)} "
        "--master-addr=$MASTER_ADDR --master-port=29500 pretrain_gpt.py "
        '"${MEGATRON_ARGS[@]}" "${DATA_ARGS[@]}"'
        for k, (node, devices) in enumerate(runs))


def render_megatron(margs: MegatronArgs, *, plan: Plan, notes: tuple[str, ...] = ()) -> str:
    """A bash script: the environment, ``MEGATRON_ARGS``, and the launch line of each node."""
    lines = [
        f"# autosplit plan for {plan.model.name} on {plan.cluster.name}: Megatron-LM command "
        f"line (megatron-core {MEGATRON_CORE_TESTED}).",
        f"# World size {margs.world_size}; pipeline rank is outermost, so each pipeline "
        "rank's processes run on the devices listed for it:",
        *(f"#   {d}" for d in margs.stage_devices),
        "# Add your data and tokenizer flags to DATA_ARGS (--data-path, --tokenizer-type, ...).",
    ]
    if margs.first_last_args:
        lines.append("# Megatron without --pipeline-model-parallel-layout: use instead")
        lines.append("#   " + " ".join(margs.first_last_args))
    lines += [f"# note: {n}" for n in notes]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in margs.env]
    lines.append("MEGATRON_ARGS=(")
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
    if margs.launch:
        lines.append("# Launch, one line per node (MASTER_ADDR: the first node's address):")
        lines += [f"#   {line}" for line in margs.launch]
    else:
        lines.append("# Some node hosts ranks of non-adjacent stages: start one process per "
                     "rank with RANK/LOCAL_RANK set from the device list above.")
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
