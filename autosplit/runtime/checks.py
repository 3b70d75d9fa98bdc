"""Refuse a plan the runtime cannot execute before a single process starts.

A distributed run that dies on rank 3 after a minute of start-up with a shape error is the
worst way to learn that a plan was made for another model. Everything checkable from the
files and the local machine is checked here, in the launcher, and reported as one
``BadInputError`` naming the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autosplit.config import SCHEDULES
from autosplit.errors import BadInputError
from autosplit.model.loader import ModelSource, build_on_meta, load_model_source
from autosplit.plan.schema import Plan
from autosplit.runtime.boundaries import boundary_metas
from autosplit.runtime.stage_builder import model_partition

__all__ = ["DeviceChoice", "check_plan_shape", "check_model", "choose_devices"]


@dataclass(frozen=True)
class DeviceChoice:
    """Resolved device options: CUDA index per rank, and whether boundaries relay via host."""

    device: str
    backend: str
    cuda_devices: tuple[int, ...]
    cpu_relay: bool


def check_plan_shape(plan: Plan, *, path: str) -> None:
    """What the runtime supports: 1F1B/GPipe, no TP, one DP degree, and each replica's batch
    share the same on every stage (uneven shares across replicas are fine)."""
    if plan.schedule not in SCHEDULES:
        raise BadInputError(f"schedule '{plan.schedule}' is not supported by the runtime",
                            file=path, field="schedule",
                            fix=f"use one of: {', '.join(SCHEDULES)}")
    if not plan.stages:
        raise BadInputError("the plan has no stages", file=path, field="stages",
                            fix="search a plan with `autosplit search`")
    expected = 0
    for s in plan.stages:
        if s.layer_start != expected or s.layer_end <= s.layer_start:
            raise BadInputError(
                f"stage {s.index} covers units [{s.layer_start}, {s.layer_end}) but the "
                f"previous stage ended at unit {expected}", file=path,
                field=f"stages[{s.index}].layer_start",
                fix="stages must cover the units contiguously, in order, each at least once")
        expected = s.layer_end
        if s.tp != 1:
            raise BadInputError(
                f"stage {s.index} uses tensor parallelism (tp={s.tp}); `autosplit run` "
                "executes pipeline and data parallelism only", file=path,
                field=f"stages[{s.index}].tp",
                fix="search with --tp 1, or export the plan to a runtime with TP "
                    "(`autosplit export`)")
        if not s.replicas:
            raise BadInputError(f"stage {s.index} has no replicas", file=path,
                                field=f"stages[{s.index}].replicas",
                                fix="give every stage at least one device")
    if expected != plan.model.num_layers:
        raise BadInputError(
            f"the stages cover units [0, {expected}) but the model has "
            f"{plan.model.num_layers} units", file=path, field="stages",
            fix="the last stage must end at the last unit")
    dps = {s.dp for s in plan.stages}
    if len(dps) != 1:
        raise BadInputError(
            f"stages have different data-parallel degrees ({sorted(dps)}); the runtime needs "
            "the same degree on every stage", file=path, field="stages[].replicas",
            fix="search with a uniform DP degree, or run the plan on a runtime that supports "
                "per-stage DP (see docs/runtime.md, Limits)")
    dp = dps.pop()
    # Replica r of every stage forms one pipeline: its micro-batches must have one size.
    for r in range(dp):
        shares = {s.index: s.replicas[r].batch_share for s in plan.stages}
        if len(set(shares.values())) != 1:
            detail = ", ".join(f"{v} on stage {k}" for k, v in shares.items())
            raise BadInputError(
                f"replica {r} carries different batch shares on different stages ({detail}); "
                f"the runtime passes replica {r}'s micro-batches through replica {r} of every "
                "stage, so its share must be the same on all of them", file=path,
                field=f"stages[].replicas[{r}].batch_share",
                fix="give each replica the same batch_share on every stage (see "
                    "docs/runtime.md, Limits)")
    per_micro = sum(r.batch_share for r in plan.stages[0].replicas)
    if plan.micro_batch_count < 1 or per_micro * plan.micro_batch_count != plan.global_batch:
        raise BadInputError(
            f"global batch {plan.global_batch} is not {plan.micro_batch_count} micro-batches "
            f"of {per_micro} samples (the replicas' batch shares)", file=path,
            field="global_batch",
            fix="make global_batch = micro_batch_count x the sum of a stage's batch shares")


def check_model(plan: Plan, *, plan_path: str, model_path: str,
                model_args: dict[str, str]) -> ModelSource:
    """The model file builds, and its partition is the one the plan was made for."""
    source = load_model_source(model_path, model_args)
    partition = model_partition(source, build_on_meta(source), seq_len=plan.model.seq_len)
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
    # Every stage's forward, on meta tensors: a block signature the stage forward cannot
    # call (e.g. rotary tables as arguments, without a forward_block hook) fails here.
    micro = max(1, plan.global_batch // max(1, plan.micro_batch_count) // plan.stages[0].dp)
    boundary_metas(source, plan=plan, stage_index=plan.num_stages - 1, micro_batch=micro,
                   boundary_dtype=None)
    if plan.model.fingerprint:
        fingerprint = _model_fingerprint(plan, model_path=model_path, model_args=model_args)
        if fingerprint and fingerprint != plan.model.fingerprint:
            raise BadInputError(
                f"the plan was made for another model (fingerprint {plan.model.fingerprint}, "
                f"this model: {fingerprint})", file=plan_path, field="model.fingerprint",
                fix=fix)
    return source


def _model_fingerprint(plan: Plan, *, model_path: str, model_args: dict[str, str]) -> str:
    """The fingerprint ingestion gives this file, these args, this seq_len and dtype."""
    from autosplit.model.ingest import model_fingerprint

    return model_fingerprint(model_path, model_args=model_args, seq_len=plan.model.seq_len,
                             dtype=plan.model.dtype)


def choose_devices(*, world_size: int, device: str, backend: str | None,
                   cuda_devices: tuple[int, ...], external_launch: bool = False) -> DeviceChoice:
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
    return DeviceChoice("cuda", backend, cuda_devices, backend == "gloo")
