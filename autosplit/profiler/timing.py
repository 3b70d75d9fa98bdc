"""Time and weigh one differentiable piece of a model: forward, backward, recompute + backward.

The same routine times a transformer block, a chain of head modules or a lone Linear, so every
figure in the profile store is measured the same way: warm-up runs first (kernel selection,
allocator growth, lazy initialisation stay out of the numbers), then ``repeats`` runs, of which
the median is kept and the interquartile range over the median is reported as the spread.
"Recompute + backward" is the backward of the piece run under ``torch.utils.checkpoint``: it
reruns the forward, exactly what activation recomputation costs in training.

Memory: on devices whose allocator reports statistics, the bytes a forward leaves allocated
(graph kept, output dropped) are what the piece keeps for its backward, and the highest
allocation during the backward is its peak. The CPU reports nothing, so there the saved
tensors autograd packs are counted (unique storages, parameters excluded) and the peak is
estimated from them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from autosplit.profiler.device import DeviceHandle

__all__ = ["PhaseTimes", "MemoryFigures", "time_piece", "measure_memory", "median_spread"]


@dataclass(frozen=True)
class PhaseTimes:
    """Median seconds of each phase over ``repeats`` runs; ``spread`` is the largest relative
    interquartile range of the phases (NaN recompute when it was not timed)."""

    fwd_s: float
    bwd_s: float
    recompute_bwd_s: float
    repeats: int
    spread: float


@dataclass(frozen=True)
class MemoryFigures:
    """Bytes one forward keeps for backward, the backward's peak above the level before the
    forward, and the saved-tensor count (the CPU's only source)."""

    activation_bytes: float
    peak_bwd_bytes: float
    saved_tensor_bytes: float
    #: "allocator" (device statistics) or "saved-tensors" (counted; peak estimated).
    method: str


def median_spread(samples: Sequence[float]) -> tuple[float, float]:
    """Median and interquartile range over the median (0 for fewer than 4 samples)."""
    med = statistics.median(samples)
    if len(samples) < 4 or med <= 0:
        return med, 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return med, (q3 - q1) / med


def _backward(out: torch.Tensor, grads: dict[tuple[int, ...], torch.Tensor]) -> None:
    if out.numel() == 1:
        out.backward()
        return
    shape = tuple(out.shape)
    grad = grads.get(shape)
    if grad is None:
        gen = torch.Generator(device=out.device).manual_seed(0)
        grad = torch.randn(shape, dtype=out.dtype, device=out.device, generator=gen)
        grads[shape] = grad
    out.backward(grad)


def _clear_grads(params: Sequence[torch.Tensor], leaves: Sequence[torch.Tensor]) -> None:
    for tensor in (*params, *leaves):
        tensor.grad = None


def time_piece(handle: DeviceHandle, forward: Callable[[], torch.Tensor], *,
               params: Sequence[torch.Tensor], leaves: Sequence[torch.Tensor] = (),
               warmup: int, repeats: int, recompute: bool = True) -> PhaseTimes:
    """Time ``forward`` (returning a tensor to backpropagate from) and its backward.

    ``params`` and ``leaves`` (inputs that need gradients) have their gradients cleared before
    every run so each backward allocates them afresh, as the first micro-batch of a step does.
    """
    grads: dict[tuple[int, ...], torch.Tensor] = {}
    fwd: list[float] = []
    bwd: list[float] = []
    rc: list[float] = []
    for i in range(warmup + repeats):
        _clear_grads(params, leaves)
        t0 = handle.now()
        out = forward()
        t1 = handle.now()
        _backward(out, grads)
        t2 = handle.now()
        del out
        t3 = t4 = 0.0
        if recompute:
            _clear_grads(params, leaves)
            out = checkpoint(forward, use_reentrant=False)
            t3 = handle.now()
            _backward(out, grads)
            t4 = handle.now()
            del out
        if i >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            rc.append(t4 - t3)
    _clear_grads(params, leaves)
    fwd_s, fwd_spread = median_spread(fwd)
    bwd_s, bwd_spread = median_spread(bwd)
    rc_s, rc_spread = median_spread(rc) if recompute else (float("nan"), 0.0)
    return PhaseTimes(fwd_s=fwd_s, bwd_s=bwd_s, recompute_bwd_s=rc_s, repeats=repeats,
                      spread=max(fwd_spread, bwd_spread, rc_spread))


class _SavedCounter:
    """Counts unique storages autograd saves, leaving parameters out."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.seen: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in self.exclude and ptr not in self.seen:
                self.seen[ptr] = storage.nbytes()
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def measure_memory(handle: DeviceHandle, forward: Callable[[], torch.Tensor], *,
                   params: Sequence[torch.Tensor], leaves: Sequence[torch.Tensor] = (),
                   constants: Sequence[torch.Tensor] = ()) -> MemoryFigures:
    """What one forward keeps for its backward, and the backward's peak (see module doc).

    ``constants`` (buffers, masks, rotary tables: inputs built once and shared by every unit)
    are not counted as activations even when autograd saves them.
    """
    exclude = {t.untyped_storage().data_ptr() for t in (*params, *constants)}
    grads: dict[tuple[int, ...], torch.Tensor] = {}
    _clear_grads(params, leaves)
    handle.synchronize()
    base = handle.allocated()
    counter = _SavedCounter(exclude)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        out = forward()
    leaf_ptrs = {t.untyped_storage().data_ptr() for t in leaves}
    saved_leaf_bytes = sum(n for p, n in counter.seen.items() if p in leaf_ptrs)
    out_bytes = out.numel() * out.element_size()
    node = out.grad_fn
    del out  # keep the graph (through ``node``), drop the output unless the graph saved it
    handle.synchronize()
    kept = handle.allocated() - base
    del node
    if handle.memory_available:
        # Inputs already existed before the forward; count them when autograd saved them.
        activation = float(kept + saved_leaf_bytes)
        _clear_grads(params, leaves)
        handle.synchronize()
        base = handle.allocated()
        out = forward()
        handle.synchronize()
        handle.reset_peak()
        _backward(out, grads)
        handle.synchronize()
        peak = float(handle.peak() - base)
        del out
        method = "allocator"
    else:
        activation = float(counter.total)
        grad_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
        leaf_bytes = sum(t.numel() * t.element_size() for t in leaves)
        peak = float(counter.total + grad_bytes + leaf_bytes + out_bytes)
        method = "saved-tensors"
    _clear_grads(params, leaves)
    return MemoryFigures(activation_bytes=activation, peak_bwd_bytes=peak,
                         saved_tensor_bytes=float(counter.total), method=method)
