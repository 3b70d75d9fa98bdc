"""A plan as a torchtitan 0.3 invocation: ``--module/--config`` plus command-line overrides.

torchtitan 0.3 has no TOML job files: a job is a ``config_registry`` function of a model
module (``--module llama3 --config llama3_8b``) and overrides of its fields on the command
line, parsed by ``torchtitan.config.ConfigManager`` (tyro). The export writes those overrides:

- ``--parallelism.*``: one degree per dimension, the schedule, the pipeline micro-batch size,
  and for the split ``module_fqns_per_model_part`` — each stage's modules, one
  comma-separated list per stage (model chunk), in model order;
- ``--training.*``: ``local_batch_size`` (samples per replica per step, split into the
  pipeline's micro-batches; without a pipeline torchtitan runs it in one pass and
  accumulates ``global / (local · DP)`` steps, so there it is one micro-batch),
  ``global_batch_size``, ``seq_len``, and
  ``disable_cuda_graphs`` for pipeline plans (torchtitan's CUDA graphs do not support
  pipeline parallelism);
- activation checkpointing, which is a choice of config class in 0.3: the subcommand
  ``activation-checkpoint:full`` or ``activation-checkpoint:none``, last on the line.

Schedules: ``pipeline_parallel_schedule`` is the name ``torch.distributed.pipelining`` gives the
plan's schedule (the registry's ``export_names``): ``1F1B``, ``GPipe``, ``Interleaved1F1B``,
``InterleavedZeroBubble`` (ZB-H1 with one chunk per rank, its interleaved form with more) and
``ZBVZeroBubble``. ``pipeline_parallel_degree`` counts ranks; torchtitan gives rank ``r`` the
chunks ``r, r + p, …`` (``ZBVZeroBubble``: ``r`` and ``2p − 1 − r``), the placement the plan's
stages have, and runs ``local_batch_size / pipeline_parallel_microbatch_size`` micro-batches.

Module names: torchtitan builds its own model. When the user's model is a Llama (SwiGLU,
RMSNorm, rotary, no biases; read by ``model_shape``), its modules are renamed to torchtitan's
Llama 3 (``tok_embeddings``, ``layers.N``, ``norm``, ``lm_head``; a parameter-free rotary
table has no counterpart and is dropped) and the config is the registry's Llama 3 with the
same layer count. Any other model keeps its own names (or the name map's) and needs the
user's own torchtitan module and config (``--torchtitan-module``/``--torchtitan-config``).
ZeRO-1 has no torchtitan switch; a plan that shards the optimizer is exported with FSDP
(``data_parallel_shard_degree``), which shards weights and gradients too and so needs no more
memory.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from autosplit.errors import BadInputError
from autosplit.export.model_shape import ModelShape
from autosplit.export.naming import IDENTITY, NameMap, stage_module_names
from autosplit.export.schedules import export_schedule_name
from autosplit.export.shape import rank_stages, uniform_shape
from autosplit.plan.schema import Plan

__all__ = ["TORCHTITAN_TESTED", "LLAMA3_CONFIGS", "TorchtitanJob", "torchtitan_job",
           "torchtitan_stage_modules", "render_torchtitan", "render_torchtitan_json"]

#: The torchtitan release whose ``ConfigManager`` CI feeds every export to.
TORCHTITAN_TESTED = "0.3.0"

#: torchtitan's Llama 3 registry configs by layer count (``torchtitan/models/llama3/
#: config_registry.py``; the 405B config needs torchao and is left out).
LLAMA3_CONFIGS: dict[int, str] = {6: "llama3_debugmodel", 32: "llama3_8b", 80: "llama3_70b"}

_LLAMA3_ROLES = {"embedding": "tok_embeddings", "norm": "norm", "head": "lm_head"}


@dataclass(frozen=True)
class TorchtitanJob:
    """The ``--module/--config`` pair, the overrides, and each stage's modules."""

    module: str
    config: str
    overrides: tuple[str, ...]
    module_fqns_per_model_part: tuple[tuple[str, ...], ...]
    #: Whether the names are torchtitan's Llama 3 names (else the user's own).
    llama3_names: bool
    notes: tuple[str, ...] = ()

    @property
    def args(self) -> tuple[str, ...]:
        """Everything after ``torchtitan.train``: ``--module M --config C`` and overrides."""
        return ("--module", self.module, "--config", self.config, *self.overrides)

    def to_dict(self) -> dict[str, object]:
        return {"torchtitan": TORCHTITAN_TESTED, "module": self.module, "config": self.config,
                "args": list(self.args),
                "module_fqns_per_model_part": [list(p) for p in
                                               self.module_fqns_per_model_part],
                "llama3_names": self.llama3_names, "notes": list(self.notes)}


def torchtitan_stage_modules(plan: Plan, model: ModelShape | None,
                             name_map: NameMap = IDENTITY) -> tuple[tuple[tuple[str, ...], ...],
                                                                     bool]:
    """Each stage's module names in torchtitan's model, and whether they are Llama 3 names.

    A name map, when given, wins (the user knows their torchtitan model); otherwise a
    Llama-shaped model gets torchtitan's Llama 3 names and any other keeps its own.
    """
    if name_map.rules or model is None or not model.is_llama \
            or "other" in model.roles.values():
        return stage_module_names(plan, name_map), False
    block_list = plan.model.block_list
    out: list[tuple[str, ...]] = []
    for stage in plan.stages:
        names: list[str] = []
        for name in stage.module_names:
            if name.startswith(block_list + "."):
                mapped = "layers." + name[len(block_list) + 1:]
            else:
                role = model.roles.get(name, "other")
                if role == "none":
                    continue  # parameter-free (rotary): torchtitan computes it inside
                mapped = _LLAMA3_ROLES.get(role, name)
            if mapped not in names:
                names.append(mapped)
        out.append(tuple(names))
    return tuple(out), True


def torchtitan_job(plan: Plan, *, model: ModelShape | None, name_map: NameMap = IDENTITY,
                   module: str = "", config: str = "") -> TorchtitanJob:
    """The torchtitan invocation for an expressible plan (``BadInputError`` otherwise)."""
    shape = uniform_shape(plan, "torchtitan")
    parts, llama3 = torchtitan_stage_modules(plan, model, name_map)
    notes: list[str] = []
    if not llama3 and not (module and config):
        raise BadInputError(
            "torchtitan ships no model of this architecture (its Llama 3 needs SwiGLU, "
            "RMSNorm, rotary positions and no biases), so the job must name your own "
            "torchtitan model", field="--torchtitan-module/--torchtitan-config",
            fix="pass --torchtitan-module MODULE --torchtitan-config FUNCTION (your "
                "config_registry), and --name-map if its module names differ")
    if not config:
        assert model is not None  # llama3 names come from a model shape
        found = LLAMA3_CONFIGS.get(model.num_layers)
        if found is None:
            raise BadInputError(
                f"torchtitan's Llama 3 configs have {', '.join(map(str, LLAMA3_CONFIGS))} "
                f"layers, not {model.num_layers}", field="--torchtitan-config",
                fix="pass --torchtitan-config FUNCTION naming a config_registry function of "
                    "your own with this many layers (and --torchtitan-module)")
        config = found
        notes.append(f"torchtitan builds its own {config} model with {model.num_layers} "
                     "layers; its widths may differ from this model's (hidden "
                     f"{model.hidden}, FFN {model.ffn}, {model.kv_heads} KV heads), and the "
                     "plan's split and costs are for this model")
    module = module or "llama3"
    replicate, fsdp = (1, shape.dp) if plan.zero1 and shape.dp > 1 else (shape.dp, 1)
    args = [
        "--parallelism.pipeline_parallel_degree", str(shape.pp),
        "--parallelism.tensor_parallel_degree", str(shape.tp),
        "--parallelism.data_parallel_replicate_degree", str(replicate),
        "--parallelism.data_parallel_shard_degree", str(fsdp),
        "--parallelism.pipeline_parallel_microbatch_size", str(shape.micro_batch_size),
    ]
    if shape.pp > 1:
        args += ["--parallelism.pipeline_parallel_schedule",
                 export_schedule_name(plan, "torchtitan"),
                 "--parallelism.module_fqns_per_model_part", *(",".join(p) for p in parts)]
    per_step = shape.micro_batches if shape.pp > 1 else 1
    args += [
        "--training.local_batch_size", str(shape.micro_batch_size * per_step),
        "--training.global_batch_size", str(shape.global_batch),
        "--training.seq_len", str(plan.model.seq_len),
    ]
    if shape.pp > 1:
        args.append("--training.disable_cuda_graphs")
    args.append("activation-checkpoint:full" if shape.recompute else "activation-checkpoint:none")
    return TorchtitanJob(module=module, config=config, overrides=tuple(args),
                         module_fqns_per_model_part=parts, llama3_names=llama3,
                         notes=tuple(notes))


def render_torchtitan(job: TorchtitanJob, *, plan: Plan, notes: tuple[str, ...] = ()) -> str:
    """A bash script defining ``TORCHTITAN_ARGS``, with the launch line as a comment."""
    shape = uniform_shape(plan, "torchtitan")
    lines = [f"# autosplit plan for {plan.model.name} on {plan.cluster.name}: torchtitan "
             f"{TORCHTITAN_TESTED} command line (ConfigManager overrides).",
             "# Pipeline rank is outermost: start pipeline rank i's processes on the devices "
             "the plan gives its stages.",
             *_chunk_lines(plan),
             *(f"# note: {n}" for n in (*job.notes, *notes)),
             "TORCHTITAN_ARGS=("]
    a = job.args
    i = 0
    while i < len(a):
        if a[i] == "--parallelism.module_fqns_per_model_part":
            j = i + 1
            while j < len(a) and not a[j].startswith("--"):
                j += 1
            lines.append(f"  {a[i]} " + " ".join(shlex.quote(x) for x in a[i + 1:j]))
            i = j
        elif i + 1 < len(a) and a[i].startswith("--") and not a[i + 1].startswith("--") \
                and not a[i + 1].startswith("activation-checkpoint:"):
            lines.append(f"  {a[i]} {shlex.quote(a[i + 1])}")
            i += 2
        else:
            lines.append(f"  {a[i]}")
            i += 1
    lines.append(")")
    lines.append(f"# torchrun --nnodes=N --nproc-per-node=M (N*M = {shape.world_size}) "
                 '-m torchtitan.train "${TORCHTITAN_ARGS[@]}"')
    return "\n".join(lines) + "\n"


def _chunk_lines(plan: Plan) -> list[str]:
    """For a plan of several chunks per rank, which stages (model parts) each rank runs."""
    if plan.virtual_stages == 1:
        return []
    return [f"#   pipeline rank {lead.pipeline_rank}: stages "
            + ", ".join(str(s.index) for s in plan.stages
                        if s.pipeline_rank == lead.pipeline_rank)
            for lead in rank_stages(plan)]


def render_torchtitan_json(job: TorchtitanJob) -> str:
    return json.dumps(job.to_dict(), indent=2) + "\n"
