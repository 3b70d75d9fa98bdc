"""One rank of a planned run: process groups and meshes, its stage, the executor, the
training loop.

Every rank builds only its stage (``stage_builder``), splits it over its tensor-parallel ranks
with ``parallelize_module`` where the stage has tp > 1 (``tensor_parallel``; a 2-D DP × TP
``DeviceMesh`` per stage), and runs its passes in the order the plan's schedule gives
(``autosplit.cost.schedule``, ``executor``), exchanging activations and gradients with the
ranks of the neighbouring stages by row ranges (``layout``). Under a virtual-stage schedule
(interleaved 1F1B or zero bubble, ZBV) a rank builds and runs every stage of its pipeline
position (its model chunks), with one optimizer over all of them. Boundary shapes are worked
out on the meta device from the model itself before the first step.

Precision follows Megatron-LM (see ``precision``): with a bf16/fp16 plan the stage's weights
and gradients are stored in that dtype and the optimizer steps fp32 master copies; the old
path (fp32 weights, forward under autocast) stays available as ``precision="autocast"``. The
loss is computed in fp32 from the low-precision logits inside the loss function only. The
last stage does not keep its micro-batches' outputs (the logits) beyond their backward.

With the CPU relay, stage boundaries are host tensors over gloo: the stage copies its input to
its GPU, computes, and copies its output back to the host — the path between chips whose
collective libraries cannot talk to each other. Each last-stage replica scales its loss by its
share of the micro-batch over the micro-batch count, so the gradients summed over micro-batches
and over a stage's replicas (one all-reduce per stage after the step) are those of the step's
mean loss, whatever the replicas' shares and however they differ between stages: replicas on
faster chips may take more samples (the uneven DP split).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from autosplit.cost.schedule import get_schedule
from autosplit.model.loader import ModelSource, load_model_source
from autosplit.plan.io import load_plan
from autosplit.plan.schema import Plan
from autosplit.protocols.schedule import Pass
from autosplit.runtime.boundaries import trace_stages
from autosplit.runtime.compute_timer import ComputeTimer
from autosplit.runtime.config import DEFAULT_LR, RunConfig
from autosplit.runtime.data import micro_batch_rows, step_batch
from autosplit.runtime.executor import Chunk, StageExecutor
from autosplit.runtime.gemm_check import check_gemms, stage_gemm_shapes
from autosplit.runtime.health import FirstNonFinite, nonfinite_tensors
from autosplit.runtime.layout import Place, RunLayout, run_layout
from autosplit.runtime.measure import RankResult, device_name, peak_rss_bytes
from autosplit.runtime.precision import DTYPES, LossScaler, MasterWeightOptimizer
from autosplit.runtime.stage_builder import StageModule, build_stage
from autosplit.runtime.tensor_parallel import apply_tp, is_sharded, local

__all__ = ["run_rank", "rank_orders", "TORCH_DTYPES", "default_loss", "make_optimizer",
           "make_master_optimizer", "clip_global_grad_norm"]

TORCH_DTYPES: dict[str, torch.dtype] = DTYPES


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
                          group: Any, copies: int = 1, tp: int = 1,
                          loss_scale: float = 1.0) -> float:
    """Scale this rank's gradients so that the L2 norm of all gradients of the model — every
    stage's, summed over ``group`` — is at most ``max_norm``; returns that norm before
    clipping (non-finite when some gradient is).

    A stage only holds its own layers' gradients, so a per-stage norm would clip each stage
    by a different factor and train a different model than the unsplit one; the squared norms
    are summed over the ranks first. ``copies``: how many data-parallel replicas hold this
    stage (after their all-reduce they hold identical gradients, counted once). Under tensor
    parallelism (degree ``tp``) a split parameter's gradient is counted by its shard on each
    rank, a replicated one once per group. ``loss_scale``: fp16 gradients are still
    multiplied by it; the norm is of the true ones. The sum travels as a CPU tensor, so it
    works on any backend's control group."""
    local_sq = torch.zeros((), dtype=torch.float64)
    grads: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            continue
        g = local(p.grad)
        grads.append(g)
        sq = torch.linalg.vector_norm(g, dtype=torch.float32).double().square().cpu()
        local_sq += sq if is_sharded(p.grad) else sq / tp
    total = (local_sq / copies).reshape(1)
    dist.all_reduce(total, group=group)
    norm = float(total.item()) ** 0.5 / loss_scale
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm and grads:
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
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


def _make_loss(source: ModelSource, *, autocast: torch.dtype | None, device: torch.device
               ) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """The last stage's loss: the model file's ``loss_fn`` (default cross-entropy), under
    autocast for autocast runs."""
    user = source.loss_fn or default_loss

    def loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        if autocast is not None:
            with torch.autocast(device.type, dtype=autocast):
                return user(outputs, targets)
        return user(outputs, targets)

    return loss


def _finite_notes(stage: StageModule, *, when: str) -> list[str]:
    named = list(stage.model.named_parameters()) + list(stage.model.named_buffers())
    bad = nonfinite_tensors(named)
    return [f"{len(bad)} parameter(s)/buffer(s) not finite {when}: {bad[:3]}"] if bad else []




@dataclass(frozen=True)
class _Groups:
    """This rank's process groups: the gloo control group (``None``: the default group is
    gloo already), its stage's data-parallel group (``None`` without DP) and tensor-parallel
    mesh (``None`` without TP)."""

    control: Any
    dp: Any
    tp_mesh: Any


def _make_groups(layout: RunLayout, place: Place, *, backend: str, device_type: str
                 ) -> _Groups:
    """Every rank creates every group, in the same order (``new_group`` is collective)."""
    control = dist.new_group(backend="gloo") if backend != "gloo" else None
    dp_group = tp_group = None
    for s in layout.positions:
        for r in range(s.dp):
            if s.tp > 1:
                g = dist.new_group(ranks=s.tp_ranks(r))
                if (s.index, r) == (place.stage, place.replica):
                    tp_group = g
        for t in range(s.tp):
            if s.dp > 1:
                g = dist.new_group(ranks=s.dp_ranks(t))
                if (s.index, t) == (place.stage, place.tp_index):
                    dp_group = g
    stage = layout.stages[place.stage]
    mesh = None
    if tp_group is not None:
        from torch.distributed.device_mesh import DeviceMesh

        if dp_group is not None:
            grid = torch.tensor([stage.tp_ranks(r) for r in range(stage.dp)])
            mesh = DeviceMesh.from_group([dp_group, tp_group], device_type, mesh=grid,
                                         mesh_dim_names=("dp", "tp"))["tp"]
        else:
            mesh = DeviceMesh.from_group(tp_group, device_type, mesh_dim_names=("tp",))
    return _Groups(control, dp_group, mesh)


def _device(config: RunConfig, rank: int) -> torch.device:
    if config.device != "cuda":
        return torch.device("cpu")
    index = (config.cuda_devices[rank] if config.cuda_devices
             else int(os.environ.get("LOCAL_RANK", rank)))
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


def rank_orders(plan: Plan) -> list[list[Pass]]:
    """Every pipeline position's passes, in order, as the plan's schedule (the object the
    cost model priced) defines them."""
    schedule = get_schedule(plan.schedule, virtual_stages=plan.virtual_stages)
    return schedule.order(plan.num_ranks, plan.micro_batch_count)


def run_rank(config: RunConfig, *, rank: int, world_size: int) -> list[RankResult]:
    """Run this rank's share of the plan; returns every rank's result (gathered)."""
    plan = load_plan(config.plan_path)
    layout = run_layout(plan)
    place = layout.place(rank)
    held = layout.stages_of(rank)
    stage_layout = layout.stages[place.stage]
    holds_first, is_last = 0 in held, plan.num_stages - 1 in held
    device = _device(config, rank)
    comm_device = torch.device("cpu") if config.cpu_relay or device.type == "cpu" else device

    dist.init_process_group(backend=config.backend, rank=rank, world_size=world_size)
    groups = _make_groups(layout, place, backend=config.backend, device_type=device.type)
    try:
        source = load_model_source(config.model_path, config.model_args)
        rss_before = peak_rss_bytes()
        compute_dtype = TORCH_DTYPES[config.dtype]
        low = compute_dtype != torch.float32
        master = low and config.precision == "master"
        autocast = compute_dtype if low and not master else None
        rows = stage_layout.shares[place.replica]
        lo, hi = stage_layout.rows(place.replica)
        traced = trace_stages(source, plan=plan, rows=rows, boundary_dtype=compute_dtype,
                              last=held[-1])
        chunks = []
        for s in held:
            sp = plan.stages[s]
            module = build_stage(source, start=sp.layer_start, end=sp.layer_end,
                                 num_units=plan.model.num_layers, seq_len=plan.model.seq_len,
                                 rows=rows, recompute=sp.recompute, seed=config.seed,
                                 device=device, stage=s,
                                 activation_dtype=compute_dtype if master else None)
            module.autocast_dtype = autocast
            module.boundary_dtype = compute_dtype
            if groups.tp_mesh is not None:
                apply_tp(module.model, config.tp_styles, groups.tp_mesh)
            chunks.append(Chunk(s, module, traced[s]))
        notes = [n for c in chunks for n in _finite_notes(c.module, when="after initialisation")]
        if device.type == "cuda":
            check = check_gemms([shape for c in chunks for shape in stage_gemm_shapes(
                c.module, tokens=rows * plan.model.seq_len)], device=device, dtype=compute_dtype)
            if not check.ok:
                notes.append(check.note(device))
        # Per chunk, its trainable parameters and their names (the model's own names, so
        # the chunks of one rank never share one).
        owned = [[(n, p) for n, p in c.module.model.named_parameters() if p.requires_grad]
                 for c in chunks]
        params = [p for named in owned for _, p in named]
        names = [n for named in owned for n, _ in named]
        # Master weights: the parameters become compute-dtype tensors here, their fp32
        # initial values the optimizer's masters.
        optimizer: Any = (make_master_optimizer(params, dtype=compute_dtype, lr=config.lr,
                                                fused=device.type == "cuda")
                          if master else make_optimizer(params, lr=config.lr))
        scaler = optimizer.scaler if master else None
        # The stages' own work, timed per step: every forward, the loss, every backward.
        timer = ComputeTimer(device)
        schedule = get_schedule(plan.schedule, virtual_stages=plan.virtual_stages)
        executor = StageExecutor(
            chunks, orders=rank_orders(plan), layout=layout, rank=rank,
            comm_device=comm_device,
            loss_fn=_make_loss(source, autocast=autocast, device=device) if is_last else None,
            split_backward=schedule.splits_backward, wrap=timer.wrap)
        # This replica's share of the step's mean loss (see the module docstring).
        share = rows / (layout.micro_batch * plan.micro_batch_count)
        watches = [FirstNonFinite(c.module) for c in chunks]
        # NCCL wants every rank of a group in its first call, before any point-to-point one.
        dist.all_reduce(torch.zeros(1, device=comm_device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

        step_times: list[float] = []
        losses: list[float] = []
        grad_norms: list[float] = []
        compute_s: list[float] = []
        skipped = 0
        for step in range(config.steps):
            batch = (step_batch(source, step=step, seed=config.seed,
                                global_batch=plan.global_batch, seq_len=plan.model.seq_len)
                     if holds_first or is_last else None)

            def micro(i: int, batch: Any = batch) -> Any:
                return micro_batch_rows(batch, index=i, micro_batch=layout.micro_batch,
                                        lo=lo, hi=hi)

            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            dist.barrier(group=groups.control)
            if step == 0:
                for watch in watches:
                    watch.arm()  # one device sync per module: the first step only
            start = time.perf_counter()
            executor.loss_scale = share * (scaler.scale if scaler is not None else 1.0)
            with _attention(config.attention_backend):
                mb_losses = executor.step(
                    inputs=(lambda i: micro(i).inputs) if holds_first else None,
                    targets=(lambda i: micro(i).targets) if is_last else None)
            if is_last:
                losses.append(sum(mb_losses) / len(mb_losses))
            if step == 0:
                for watch in watches:
                    watch.disarm()
                    if watch.found is not None:
                        notes.append(f"first step: {watch.found}")
            if groups.dp is not None:
                # Gradients of the step's mean loss: the sum over the stage's replicas.
                for p in params:
                    if p.grad is not None:
                        dist.all_reduce(local(p.grad), group=groups.dp)
            if step == 0:
                bad_grads = nonfinite_tensors((n, p.grad) for n, p in zip(names, params,
                                                                          strict=True))
                if bad_grads:
                    notes.append(f"first step: {len(bad_grads)} gradient(s) not finite: "
                                 f"{bad_grads[:3]}")
            grad_norms.append(clip_global_grad_norm(
                params, max_norm=config.grad_clip, group=groups.control,
                copies=stage_layout.dp, tp=stage_layout.tp,
                loss_scale=scaler.scale if scaler is not None else 1.0))
            if scaler is not None:
                # A step is skipped on every rank when any rank's gradients overflowed.
                overflow = torch.tensor([0.0 if optimizer.grads_finite() else 1.0])
                dist.all_reduce(overflow, group=groups.control)
                skip = bool(overflow.item() > 0)
                skipped += int(skip)
                optimizer.step(skip=skip)
            else:
                optimizer.step()
            _sync(device)
            dist.barrier(group=groups.control)
            step_times.append(time.perf_counter() - start)
            compute_s.append(timer.take_step())
            if step == 0:
                for c in chunks:
                    notes.extend(_finite_notes(c.module, when="after the first step"))
        if skipped:
            notes.append(f"{skipped} step(s) skipped on gradient overflow (fp16 loss scale "
                         f"now {scaler.scale if scaler is not None else 0:g})")

        if device.type == "cuda":
            peak: int | None = int(torch.cuda.max_memory_allocated(device))
            reserved: int | None = int(torch.cuda.max_memory_reserved(device))
            kind = "cuda_max_allocated"
        else:
            peak, reserved, kind = max(0, peak_rss_bytes() - rss_before), None, "cpu_rss_growth"
        if config.dump_params_dir:
            values = optimizer.masters if master else params
            at = 0
            for c, named in zip(chunks, owned, strict=True):
                _dump(config.dump_params_dir, layout.place(rank, c.stage),
                      names=names[at:at + len(named)], params=params[at:at + len(named)],
                      values=values[at:at + len(named)])
                at += len(named)
        env = {k: v for k, v in os.environ.items()
               if k.startswith("CUDA_MPS_") or k == "CUDA_VISIBLE_DEVICES"}
        result = RankResult(rank=rank, stage=place.stage, stages=held, replica=place.replica,
                            device=str(device), device_name=device_name(device),
                            peak_memory_bytes=peak, peak_reserved_bytes=reserved,
                            memory_kind=kind, params=sum(local(p).numel() for p in params),
                            step_times_s=tuple(step_times), losses=tuple(losses), env=env,
                            notes=tuple(notes), grad_norms=tuple(grad_norms),
                            compute_s=tuple(compute_s), tp_index=place.tp_index)
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, result, group=groups.control)
        return list(gathered)
    finally:
        dist.destroy_process_group()


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole value of a (possibly tensor-parallel) tensor, on the CPU in fp32."""
    full = t.full_tensor() if hasattr(t, "full_tensor") else t
    return full.detach().float().cpu()


def _dump(directory: str, place: Place, *, names: list[str], params: list[Any],
          values: list[Any]) -> None:
    """Save the stage's parameters (the optimizer's state of record: the fp32 masters where
    there are masters) and gradients, once per stage: replica 0 (after the all-reduce every
    replica holds the same) gathers tensor-parallel shards into whole tensors."""
    state = {"params": {n: _full(v) for n, v in zip(names, values, strict=True)},
             "grads": {n: _full(p.grad) for n, p in zip(names, params, strict=True)
                       if p.grad is not None},
             "dtypes": {n: str(p.dtype) for n, p in zip(names, params, strict=True)}}
    if place.replica == 0 and place.tp_index == 0:
        torch.save(state, os.path.join(directory, f"stage{place.stage}.pt"))
