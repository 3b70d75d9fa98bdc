"""Refuse a plan the runtime cannot execute before a single process starts.

A distributed run that dies on rank 3 after a minute of start-up with a shape error is the
worst way to learn that a plan was made for another model. Everything checkable from the
files and the local machine is checked here, in the launcher, and reported as one
``BadInputError`` naming the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autosplit.errors import BadInputError
from autosplit.model.loader import ModelSource, Partition, build_on_meta, load_model_source
from autosplit.plan.schema import Plan
from autosplit.runtime.boundaries import trace_stages
from autosplit.runtime.layout import run_layout
from autosplit.runtime.stage_builder import init_weights_hook, meta_inputs, model_partition
from autosplit.runtime.tensor_parallel import check_tp_stage, record_calls, tp_styles

__all__ = ["DeviceChoice", "check_plan_shape", "check_model", "choose_devices"]


@dataclass(frozen=True)
class DeviceChoice:
    """Resolved device options: CUDA index per rank, and whether boundaries relay via host."""

    device: str
    backend: str
    cuda_devices: tuple[int, ...]
    cpu_relay: bool


def check_plan_shape(plan: Plan, *, path: str) -> None:
    """What the runtime executes: stages that cover the units in order,
    every stage at least one replica of at least one rank, and the same micro-batch size on
    every stage (each stage's batch shares may be cut differently)."""
    if not plan.stages:
        raise BadInputError("the plan has no stages", file=path, field="stages",
                            fix="search a plan with `autosplit search`")
    if plan.zero1:
        raise BadInputError(
            "the plan shards optimizer states over data-parallel replicas (zero1), which the "
            "runtime does not do: every rank would hold all of its stage's optimizer states, "
            "more memory than the plan was costed for", file=path, field="zero1",
            fix="search without --zero1 to run the plan here, or export it to a runtime with "
                "ZeRO (`autosplit export --to deepspeed`)")
    expected = 0
    for s in plan.stages:
        if s.layer_start != expected or s.layer_end <= s.layer_start:
            raise BadInputError(
                f"stage {s.index} covers units [{s.layer_start}, {s.layer_end}) but the "
                f"previous stage ended at unit {expected}", file=path,
                field=f"stages[{s.index}].layer_start",
                fix="stages must cover the units contiguously, in order, each at least once")
        expected = s.layer_end
        if s.tp < 1:
            raise BadInputError(f"stage {s.index} has tp={s.tp}", file=path,
                                field=f"stages[{s.index}].tp", fix="use tp >= 1")
        if not s.replicas:
            raise BadInputError(f"stage {s.index} has no replicas", file=path,
                                field=f"stages[{s.index}].replicas",
                                fix="give every stage at least one device")
        bad = [i for i, r in enumerate(s.replicas) if r.batch_share < 1]
        if bad:
            raise BadInputError(
                f"replica {bad[0]} of stage {s.index} takes {s.replicas[bad[0]].batch_share} "
                "samples of each micro-batch", file=path,
                field=f"stages[{s.index}].replicas[{bad[0]}].batch_share",
                fix="give every replica at least one sample, or leave the device out")
    if expected != plan.model.num_layers:
        raise BadInputError(
            f"the stages cover units [0, {expected}) but the model has "
            f"{plan.model.num_layers} units", file=path, field="stages",
            fix="the last stage must end at the last unit")
    sizes = {s.index: sum(r.batch_share for r in s.replicas) for s in plan.stages}
    if len(set(sizes.values())) != 1:
        detail = ", ".join(f"{v} on stage {k}" for k, v in sizes.items())
        raise BadInputError(
            f"the stages' batch shares add up to different micro-batch sizes ({detail})",
            file=path, field="stages[].replicas[].batch_share",
            fix="every stage must split the same micro-batch: its replicas' shares must add "
                "up to the same number on every stage")
    per_micro = sizes[0]
    if plan.micro_batch_count < 1 or per_micro * plan.micro_batch_count != plan.global_batch:
        raise BadInputError(
            f"global batch {plan.global_batch} is not {plan.micro_batch_count} micro-batches "
            f"of {per_micro} samples (the replicas' batch shares)", file=path,
            field="global_batch",
            fix="make global_batch = micro_batch_count x the sum of a stage's batch shares")


def check_model(plan: Plan, *, plan_path: str, model_path: str,
                model_args: dict[str, str]) -> tuple[ModelSource, dict[str, str]]:
    """The model file builds, its partition is the one the plan was made for, every stage
    can be cut out of its forward, and every tensor-parallel stage splits; returns the
    source and the tensor-parallel style of every split module."""
    source = load_model_source(model_path, model_args)
    init_weights_hook(source)  # refuses retired hooks, checks init_weights is a function
    model = build_on_meta(source)
    partition = model_partition(source, model, seq_len=plan.model.seq_len)
    units = partition.unit_modules()
    fix = ("run the plan with the model file and --model-arg values it was searched for "
           f"(plan: {plan.model.source_file or '?'} {plan.model.model_args})")
    if len(units) != plan.model.num_layers:
        raise BadInputError(
            f"the plan was made for a model of {plan.model.num_layers} units; "
            f"{model_path} with {model_args} has {len(units)}", file=plan_path,
            field="model.num_layers", fix=fix)
    names = [u[0] for u in units]
    for s in plan.stages:
        if s.layer_names and tuple(s.layer_names) != tuple(names[s.layer_start:s.layer_end]):
            raise BadInputError(
                f"stage {s.index} names units {list(s.layer_names)[:3]}... but the model's "
                f"units there are {names[s.layer_start:s.layer_start + 3]}...",
                file=plan_path, field=f"stages[{s.index}].layer_names", fix=fix)
    if plan.model.fingerprint:
        fingerprint = _model_fingerprint(plan, model_path=model_path, model_args=model_args)
        if fingerprint and fingerprint != plan.model.fingerprint:
            raise BadInputError(
                f"the plan was made for another model (fingerprint {plan.model.fingerprint}, "
                f"this model: {fingerprint})", file=plan_path, field="model.fingerprint",
                fix=fix)
    _check_boundaries(source, plan)
    return source, _check_tensor_parallel(source, plan, model, partition)


def _check_boundaries(source: ModelSource, plan: Plan) -> None:
    """Every stage's slice of the forward runs on meta; where neighbouring stages cut the
    micro-batch differently, every tensor crossing between them holds one row per sample."""
    layout = run_layout(plan)
    trace_stages(source, plan=plan, rows=1, boundary_dtype=None)
    resharded = [s.index for s in plan.stages if layout.resharded(s.index)]
    if not resharded:
        return
    rows = 2
    traced = trace_stages(source, plan=plan, rows=rows, boundary_dtype=None)
    for s in resharded:
        for t in traced[s].inputs:
            if t.dim() == 0 or t.shape[0] != rows:
                raise BadInputError(
                    f"the boundary into stage {s} carries a tensor of shape "
                    f"{tuple(t.shape)} for {rows} samples; the stages on its two sides split "
                    "the micro-batch differently, which needs one row per sample in dimension "
                    "0", file=source.path,
                    fix="keep the batch first in the hidden state, or give both stages the same "
                        "data-parallel batch shares")


def _check_tensor_parallel(source: ModelSource, plan: Plan, model: nn.Module,
                           partition: Partition) -> dict[str, str]:
    split = [s for s in plan.stages if s.tp > 1]
    if not split:
        return {}
    calls = record_calls(model, partition, meta_inputs(source, rows=1,
                                                       seq_len=plan.model.seq_len),
                         path=source.path)
    styles: dict[str, str] = {}
    for s in split:
        mine = tp_styles(source, model, partition, calls, start=s.layer_start, end=s.layer_end,
                         tp=s.tp)
        blocks = [m for _, kind, mods in partition.unit_modules()[s.layer_start:s.layer_end]
                  if kind == "block" for m in mods]
        check_tp_stage(source, model, calls, mine, blocks=blocks, tp=s.tp, stage=s.index)
        styles.update(mine)
    return styles


def _model_fingerprint(plan: Plan, *, model_path: str, model_args: dict[str, str]) -> str:
    """The fingerprint ingestion gives this file, these args, this seq_len and dtype."""
    from autosplit.model.ingest import model_fingerprint

    return model_fingerprint(model_path, model_args=model_args, seq_len=plan.model.seq_len,
                             dtype=plan.model.dtype)


def choose_devices(*, world_size: int, device: str, backend: str | None,
                   cuda_devices: tuple[int, ...], external_launch: bool = False,
                   max_tp: int = 1) -> DeviceChoice:
    """Map ranks to devices and pick the backend; refuse what this machine cannot run.

    Under an external launcher (torchrun) ranks span hosts: each uses the GPU of its
    ``LOCAL_RANK`` unless ``cuda_devices`` says otherwise (an empty tuple here)."""
    if device not in ("cpu", "cuda"):
        raise BadInputError(f"unknown device '{device}'", field="--device", fix="use cpu or cuda")
    backend = backend or ("nccl" if device == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise BadInputError(f"unknown backend '{backend}'", field="--backend",
                            fix="use gloo or nccl")
    if device == "cpu":
        if backend == "nccl":
            raise BadInputError("NCCL needs CUDA devices", field="--backend",
                                fix="use --backend gloo on the CPU, or --device cuda")
        if cuda_devices:
            raise BadInputError("--cuda-devices given with --device cpu", field="--cuda-devices",
                                fix="drop --cuda-devices or use --device cuda")
        return DeviceChoice("cpu", "gloo", (), False)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise BadInputError("--device cuda but no CUDA device is visible", field="--device",
                            fix="run on a machine with GPUs, or use --device cpu")
    if cuda_devices:
        if len(cuda_devices) != world_size:
            raise BadInputError(
                f"--cuda-devices lists {len(cuda_devices)} devices but the plan has "
                f"{world_size} ranks", field="--cuda-devices", fix="give one index per rank")
        bad = [i for i in cuda_devices if not 0 <= i < count]
        if bad:
            raise BadInputError(f"CUDA device(s) {bad} do not exist (this machine has {count})",
                                field="--cuda-devices", fix=f"use indices 0..{count - 1}")
    elif external_launch:
        _refuse_relayed_tp(backend, max_tp)
        return DeviceChoice("cuda", backend, (), backend == "gloo")
    else:
        if world_size > count:
            raise BadInputError(
                f"the plan needs {world_size} devices but this machine has {count} CUDA "
                "device(s)", field="stages",
                fix="run on a machine with enough GPUs, launch with torchrun across hosts, or "
                    "share GPUs explicitly with --cuda-devices (e.g. 0,0 under CUDA MPS)")
        cuda_devices = tuple(range(world_size))
    if backend == "nccl" and len(set(cuda_devices)) != len(cuda_devices):
        raise BadInputError("NCCL cannot put two ranks on one GPU", field="--backend",
                            fix="use --backend gloo (boundaries relay through host memory)")
    _refuse_relayed_tp(backend, max_tp)
    return DeviceChoice("cuda", backend, cuda_devices, backend == "gloo")


def _refuse_relayed_tp(backend: str, max_tp: int) -> None:
    if backend == "gloo" and max_tp > 1:
        raise BadInputError(
            f"the plan has tensor-parallel stages (tp={max_tp}) but --backend gloo on CUDA "
            "relays through host memory, which tensor-parallel collectives cannot use",
            field="--backend", fix="run with --backend nccl (one GPU per rank), or search "
                                   "with --tp 1 for chips joined by the CPU relay")
