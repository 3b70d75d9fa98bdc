"""One rank of a planned run: process groups, its stage, the schedule, the training loop.

The pipeline is ``torch.distributed.pipelining``: one ``PipelineStage`` per rank and
``Schedule1F1B`` or ``ScheduleGPipe`` as the plan says, with the plan's micro-batch count and
the model's loss on the last stage. Boundary shapes are given to the stage up front (worked out
on the meta device from the model itself), so no shape inference runs on the real devices.

Precision follows Megatron-LM (see ``precision``): with a bf16/fp16 plan the stage's weights
and gradients are stored in that dtype and the optimizer steps fp32 master copies; the old
path (fp32 weights, forward under autocast) stays available as ``precision="autocast"``. The
loss is computed in fp32 from the low-precision logits inside the loss function only. The
last stage does not keep its micro-batches' outputs (the logits) beyond their backward.

With the CPU relay, stage boundaries are host tensors over gloo: the stage copies its input to
its GPU, computes, and copies its output back to the host — the path between chips whose
collective libraries cannot talk to each other. Data parallelism (same degree on every stage)
averages each stage's gradients over its replicas after the schedule step, each weighted by its
share of the samples: replicas on faster chips may take more (the uneven DP split).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from autosplit.model.loader import ModelSource, load_model_source
from autosplit.plan.io import load_plan
from autosplit.runtime.boundaries import boundary_metas
from autosplit.runtime.compute_timer import ComputeTimer
from autosplit.runtime.config import DEFAULT_LR, RankLayout, RunConfig
from autosplit.runtime.data import step_batch
from autosplit.runtime.gemm_check import check_gemms, stage_gemm_shapes
from autosplit.runtime.health import FirstNonFinite, nonfinite_tensors
from autosplit.runtime.measure import RankResult, device_name, peak_rss_bytes
from autosplit.runtime.outputs import record_saved_storages, release_unsaved_outputs
from autosplit.runtime.precision import DTYPES, LossScaler, MasterWeightOptimizer
from autosplit.runtime.stage_builder import StageModule, build_stage

__all__ = ["run_rank", "TORCH_DTYPES", "default_loss", "make_optimizer",
           "make_master_optimizer", "clip_global_grad_norm"]

TORCH_DTYPES: dict[str, torch.dtype] = DTYPES

_SCHEDULES = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}


def default_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dimension (the model-file convention's default)."""
    return F.cross_entropy(outputs.float().flatten(0, -2), targets.flatten())


def make_optimizer(params: list[torch.nn.Parameter], *, lr: float = DEFAULT_LR,
                   fused: bool = False) -> torch.optim.Optimizer:
    """AdamW as every rank (and a single-process reference) uses it; ``fused`` (one kernel,
    no full-size temporaries) for fp32 masters on a GPU."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=fused or None)


def make_master_optimizer(params: list[torch.nn.Parameter], *, dtype: torch.dtype,
                          lr: float = DEFAULT_LR, fused: bool = False) -> MasterWeightOptimizer:
    """Cast ``params`` to ``dtype`` and return AdamW over their fp32 masters (fp16 with a
    dynamic loss scale)."""
    scaler = LossScaler() if dtype == torch.float16 else None
    return MasterWeightOptimizer(
        params, dtype=dtype, scaler=scaler,
        make_inner=lambda masters: make_optimizer(masters, lr=lr, fused=fused))


def clip_global_grad_norm(params: list[torch.nn.Parameter], *, max_norm: float,
                          group: Any, copies: int = 1, loss_scale: float = 1.0) -> float:
    """Scale this rank's gradients so that the L2 norm of all gradients of the model — every
    stage's, summed over ``group`` — is at most ``max_norm``; returns that norm before
    clipping (non-finite when some gradient is).

    A stage only holds its own layers' gradients, so a per-stage norm would clip each stage
    by a different factor and train a different model than the unsplit one; the squared norms
    are summed over the ranks first. ``copies``: how many ranks of ``group`` hold each stage
    (data-parallel replicas after their all-reduce hold identical gradients, counted once).
    ``loss_scale``: fp16 gradients are still multiplied by it; the norm is of the true ones.
    The sum travels as a CPU tensor, so it works on any backend's control group."""
    grads = [p.grad for p in params if p.grad is not None]
    local = (torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
             .square().sum().double().cpu() if grads else torch.zeros((), dtype=torch.float64))
    total = local.reshape(1)
    dist.all_reduce(total, group=group)
    norm = float(total.item() / copies) ** 0.5 / loss_scale
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        torch._foreach_mul_(grads, coef)
    return norm


_SDPA_BACKENDS = {"math": "MATH", "flash": "FLASH_ATTENTION",
                  "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION"}


def _attention(backend: str) -> Any:
    """Restrict ``scaled_dot_product_attention`` to one backend for forward and backward."""
    if not backend:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, _SDPA_BACKENDS[backend]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_loss(source: ModelSource, *, autocast: torch.dtype | None, device: torch.device,
               scaler: LossScaler | None, stage: StageModule
               ) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """The last stage's loss; it frees the stage's outputs once nothing will read them
    (``outputs.release_unsaved_outputs``), using what the stage's forward saved."""
    user = source.loss_fn or default_loss

    def loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(outputs.device if isinstance(outputs, torch.Tensor) else device)
        saved = set(stage.saved_storages or ())
        with record_saved_storages(saved):
            if autocast is not None:
                with torch.autocast(device.type, dtype=autocast):
                    value = user(outputs, targets)
            else:
                value = user(outputs, targets)
        if stage.saved_storages is not None:
            release_unsaved_outputs(outputs, saved)
        return value * scaler.scale if scaler is not None else value

    return loss


class _DiscardList(list):  # type: ignore[type-arg]
    """Stands in for the last stage's output list on releases whose schedule has no
    ``return_outputs`` switch: appending keeps nothing alive."""

    def append(self, item: Any) -> None:
        return None


def _keep_no_outputs(schedule: Any, pipe_stage: PipelineStage) -> dict[str, Any]:
    """Keyword arguments of ``schedule.step`` on the last stage that stop it keeping every
    micro-batch's output (the logits) until the step ends."""
    if "return_outputs" in inspect.signature(schedule.step).parameters:
        return {"return_outputs": False}
    pipe_stage.output_chunks = _DiscardList()
    return {}


def _finite_notes(stage: StageModule, *, when: str) -> list[str]:
    named = list(stage.model.named_parameters()) + list(stage.model.named_buffers())
    bad = nonfinite_tensors(named)
    return [f"{len(bad)} parameter(s)/buffer(s) not finite {when}: {bad[:3]}"] if bad else []


def run_rank(config: RunConfig, *, rank: int, world_size: int) -> list[RankResult]:
    """Run this rank's share of the plan; returns every rank's result (gathered)."""
    plan = load_plan(config.plan_path)
    layout = RankLayout(plan.num_stages, plan.stages[0].dp)
    stage_index, replica = layout.stage_of(rank), layout.replica_of(rank)
    stage_plan = plan.stages[stage_index]

    if config.device == "cuda":
        index = (config.cuda_devices[rank] if config.cuda_devices
                 else int(os.environ.get("LOCAL_RANK", rank)))
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    comm_device = torch.device("cpu") if config.cpu_relay or device.type == "cpu" else device

    dist.init_process_group(backend=config.backend, rank=rank, world_size=world_size)
    control = dist.new_group(backend="gloo") if config.backend != "gloo" else None
    pp_groups = [dist.new_group(ranks=layout.pipeline_ranks(r)) for r in range(layout.dp)]
    dp_groups = ([dist.new_group(ranks=layout.replica_ranks(s)) for s in range(layout.num_stages)]
                 if layout.dp > 1 else [])
    try:
        source = load_model_source(config.model_path, config.model_args)
        rss_before = peak_rss_bytes()
        compute_dtype = TORCH_DTYPES[config.dtype]
        low = compute_dtype != torch.float32
        master = low and config.precision == "master"
        autocast = compute_dtype if low and not master else None
        stage = build_stage(source, start=stage_plan.layer_start, end=stage_plan.layer_end,
                            num_units=plan.model.num_layers,
                            seq_len=plan.model.seq_len, recompute=stage_plan.recompute,
                            seed=config.seed, device=device)
        stage.autocast_dtype = autocast
        stage.boundary_dtype = compute_dtype
        stage.send_device = comm_device if comm_device != device else None
        if stage_index == plan.num_stages - 1:
            stage.saved_storages = set()  # the loss frees the logits when nothing saved them
        # This replica's samples per micro-batch (uneven across replicas when their chips
        # differ) and its samples of the whole step, as the rows it draws.
        micro = stage_plan.replicas[replica].batch_share
        step_shares = [r.batch_share * plan.micro_batch_count for r in stage_plan.replicas]
        in_meta, out_meta = boundary_metas(source, plan=plan, stage_index=stage_index,
                                           micro_batch=micro, boundary_dtype=compute_dtype,
                                           seed=config.seed)
        is_last = stage_index == plan.num_stages - 1
        pipe_stage = PipelineStage(stage, stage_index, plan.num_stages, comm_device,
                                   input_args=in_meta, output_args=out_meta,
                                   group=pp_groups[replica])
        stage.to(device)  # some releases move the module to the stage's (host) device
        notes = _finite_notes(stage, when="after initialisation")
        if device.type == "cuda":
            check = check_gemms(stage_gemm_shapes(stage, tokens=micro * plan.model.seq_len),
                                device=device, dtype=compute_dtype)
            if not check.ok:
                notes.append(check.note(device))
        params = [p for p in stage.parameters() if p.requires_grad]
        names = [n for n, p in stage.model.named_parameters() if p.requires_grad]
        # Master weights: the parameters become compute-dtype tensors here, their fp32
        # initial values the optimizer's masters.
        optimizer: Any = (make_master_optimizer(params, dtype=compute_dtype, lr=config.lr,
                                                fused=device.type == "cuda")
                          if master else make_optimizer(params, lr=config.lr))
        scaler = optimizer.scaler if master else None
        # The stage's own work, timed per step: every forward, the loss, every backward.
        timer = ComputeTimer(device)
        pipe_stage.forward_one_chunk = timer.wrap(pipe_stage.forward_one_chunk)
        pipe_stage.backward_one_chunk = timer.wrap(pipe_stage.backward_one_chunk)
        # Every rank passes the loss: the schedule runs backward only when it has one.
        schedule = _SCHEDULES[plan.schedule](
            pipe_stage, plan.micro_batch_count,
            loss_fn=timer.wrap(_make_loss(source, autocast=autocast, device=device,
                                          scaler=scaler, stage=stage)))
        keep_no_outputs = _keep_no_outputs(schedule, pipe_stage) if is_last else {}
        watch = FirstNonFinite(stage)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

        step_times: list[float] = []
        losses: list[float] = []
        grad_norms: list[float] = []
        compute_s: list[float] = []
        skipped = 0
        for step in range(config.steps):
            batch = step_batch(source, step=step, seed=config.seed,
                               global_batch=plan.global_batch, seq_len=plan.model.seq_len,
                               replica=replica, replicas=layout.dp, shares=step_shares)
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            dist.barrier(group=control)
            if step == 0:
                watch.arm()  # one device sync per module: the first step only
            start = time.perf_counter()
            with _attention(config.attention_backend):
                # The first stage feeds the inputs, the last the targets; a one-stage plan
                # (data parallelism alone) does both.
                inputs = (tuple(t.to(comm_device) for t in batch.inputs) if stage_index == 0
                          else ())
                if is_last:
                    mb_losses: list[torch.Tensor] = []
                    schedule.step(*inputs, target=batch.targets.to(device), losses=mb_losses,
                                  **keep_no_outputs)
                    scale = scaler.scale if scaler is not None else 1.0
                    losses.append(float(torch.stack([x.detach().float() for x in mb_losses])
                                        .mean().cpu()) / scale)
                else:
                    schedule.step(*inputs)
            if step == 0:
                watch.disarm()
                if watch.found is not None:
                    notes.append(f"first step: {watch.found}")
            if dp_groups:
                # Each replica's gradient is the mean over its own samples; the step's is the
                # mean over all, so each replica counts by its share of the samples.
                weight = step_shares[replica] / plan.global_batch
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(weight)
                        dist.all_reduce(p.grad, group=dp_groups[stage_index])
            if step == 0:
                bad_grads = nonfinite_tensors((n, p.grad) for n, p in zip(names, params,
                                                                          strict=True))
                if bad_grads:
                    notes.append(f"first step: {len(bad_grads)} gradient(s) not finite: "
                                 f"{bad_grads[:3]}")
            grad_norms.append(clip_global_grad_norm(
                params, max_norm=config.grad_clip, group=control, copies=layout.dp,
                loss_scale=scaler.scale if scaler is not None else 1.0))
            if scaler is not None:
                # A step is skipped on every rank when any rank's gradients overflowed.
                overflow = torch.tensor([0.0 if optimizer.grads_finite() else 1.0])
                dist.all_reduce(overflow, group=control)
                skip = bool(overflow.item() > 0)
                skipped += int(skip)
                optimizer.step(skip=skip)
            else:
                optimizer.step()
            _sync(device)
            dist.barrier(group=control)
            step_times.append(time.perf_counter() - start)
            compute_s.append(timer.take_step())
            if step == 0:
                notes.extend(_finite_notes(stage, when="after the first step"))
        if skipped:
            notes.append(f"{skipped} step(s) skipped on gradient overflow (fp16 loss scale "
                         f"now {scaler.scale if scaler is not None else 0:g})")

        if device.type == "cuda":
            peak: int | None = int(torch.cuda.max_memory_allocated(device))
            reserved: int | None = int(torch.cuda.max_memory_reserved(device))
            kind = "cuda_max_allocated"
        else:
            peak, reserved, kind = max(0, peak_rss_bytes() - rss_before), None, "cpu_rss_growth"
        if config.dump_params_dir and replica == 0:
            # The optimizer's state of record: the fp32 masters where there are masters.
            values = optimizer.masters if master else params
            state = {"params": {n: v.detach().float().cpu()
                                for n, v in zip(names, values, strict=True)},
                     "grads": {n: p.grad.detach().float().cpu()
                               for n, p in zip(names, params, strict=True)
                               if p.grad is not None},
                     "dtypes": {n: str(p.dtype) for n, p in zip(names, params, strict=True)}}
            torch.save(state, os.path.join(config.dump_params_dir, f"stage{stage_index}.pt"))
        env = {k: v for k, v in os.environ.items()
               if k.startswith("CUDA_MPS_") or k == "CUDA_VISIBLE_DEVICES"}
        result = RankResult(rank=rank, stage=stage_index, replica=replica, device=str(device),
                            device_name=device_name(device), peak_memory_bytes=peak,
                            peak_reserved_bytes=reserved, memory_kind=kind,
                            params=sum(p.numel() for p in params),
                            step_times_s=tuple(step_times), losses=tuple(losses), env=env,
                            notes=tuple(notes), grad_norms=tuple(grad_norms),
                            compute_s=tuple(compute_s))
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, result, group=control)
        return list(gathered)
    finally:
        dist.destroy_process_group()
