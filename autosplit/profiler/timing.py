"""Time and weigh one differentiable piece of a model: forward, backward, recompute + backward.

The same routine times a transformer block, a chain of head modules or a lone Linear, so every
figure in the profile store is measured the same way: warm-up runs first (kernel selection,
allocator growth, lazy initialisation stay out of the numbers; the weight gradients exist
from then on, so every timed backward accumulates into them as training's micro-batches do),
then ``repeats`` runs, of which
the median is kept and the interquartile range over the median is reported as the spread; a set
of runs whose spread is above the target is taken again (see ``time_piece``). Times are read
from the device's timing events where it has them (``Stopwatch``), else from the host clock.
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
from dataclasses import dataclass, replace

import torch
from torch.utils.checkpoint import checkpoint

from autosplit.profiler.device import DeviceHandle, Stopwatch

__all__ = ["PhaseTimes", "MemoryFigures", "time_piece", "measure_memory", "median_spread"]


@dataclass(frozen=True)
class PhaseTimes:
    """Median seconds of each phase over ``repeats`` runs; ``spread`` is the largest relative
    interquartile range of the phases (NaN recompute when it was not timed). ``rounds`` is how
    many sets of ``repeats`` runs were taken to bring the spread under the target (the set
    with the smallest spread is kept); ``timer`` is ``device-events`` or ``host-clock``."""

    fwd_s: float
    bwd_s: float
    recompute_bwd_s: float
    repeats: int
    spread: float
    rounds: int = 1
    timer: str = "host-clock"


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


@dataclass(frozen=True)
class _Samples:
    """Seconds of each phase, one entry per timed run."""

    fwd: list[float]
    bwd: list[float]
    rc: list[float]


def _runs(watch: Stopwatch, forward: Callable[[], torch.Tensor], *,
          params: Sequence[torch.Tensor], leaves: Sequence[torch.Tensor], count: int,
          recompute: bool, grads: dict[tuple[int, ...], torch.Tensor],
          accumulate: bool) -> _Samples:
    """``count`` runs of forward, backward and (with ``recompute``) checkpointed
    forward + backward; marks 0-1 the forward, 1-2 the backward, 3-4 the recompute backward.
    ``accumulate``: the parameters keep their gradients, so each backward adds into them."""
    samples = _Samples(fwd=[], bwd=[], rc=[])
    cleared = () if accumulate else params
    for _ in range(count):
        _clear_grads(cleared, leaves)
        watch.start()
        out = forward()
        watch.mark()
        _backward(out, grads)
        watch.mark()
        del out
        if recompute:
            _clear_grads(cleared, leaves)
            out = checkpoint(forward, use_reentrant=False)
            watch.mark()
            _backward(out, grads)
            watch.mark()
            del out
        samples.fwd.append(watch.seconds(0, 1))
        samples.bwd.append(watch.seconds(1, 2))
        samples.rc.append(watch.seconds(3, 4) if recompute else 0.0)
    return samples


def _summary(samples: _Samples, *, recompute: bool, timer: str, rounds: int) -> PhaseTimes:
    fwd_s, fwd_spread = median_spread(samples.fwd)
    bwd_s, bwd_spread = median_spread(samples.bwd)
    rc_s, rc_spread = median_spread(samples.rc) if recompute else (float("nan"), 0.0)
    return PhaseTimes(fwd_s=fwd_s, bwd_s=bwd_s, recompute_bwd_s=rc_s,
                      repeats=len(samples.fwd), spread=max(fwd_spread, bwd_spread, rc_spread),
                      rounds=rounds, timer=timer)


def time_piece(handle: DeviceHandle, forward: Callable[[], torch.Tensor], *,
               params: Sequence[torch.Tensor], leaves: Sequence[torch.Tensor] = (),
               warmup: int, repeats: int, recompute: bool = True, max_spread: float = 0.0,
               max_rounds: int = 1, accumulate: bool = True) -> PhaseTimes:
    """Time ``forward`` (returning a tensor to backpropagate from) and its backward.

    ``leaves`` (inputs that need gradients) have their gradients cleared before every run, as
    every micro-batch brings new inputs. ``params`` keep theirs (``accumulate``): each timed
    backward adds its weight gradients into existing ones, as every micro-batch of a step but
    the first does — a read and a write of every gradient more than a backward into fresh
    ones, which is what a step of many micro-batches mostly runs (``accumulate=False``: the
    first micro-batch's backward, gradients allocated afresh every run).
    A set of ``repeats`` runs whose spread is above ``max_spread`` is taken again, up to
    ``max_rounds`` sets: a neighbour's burst or a clock change spoils one set, not the next;
    the set with the smallest spread is kept, and ``rounds`` says how many were taken.
    """
    watch = Stopwatch(handle)
    grads: dict[tuple[int, ...], torch.Tensor] = {}
    common = {"params": params, "leaves": leaves, "recompute": recompute, "grads": grads,
              "accumulate": accumulate}
    # With accumulation, one untimed backward at least: the timed ones find gradients to add to.
    _clear_grads(params, leaves)
    _runs(watch, forward, count=max(warmup, 1 if accumulate else 0), **common)
    best = _summary(_runs(watch, forward, count=repeats, **common), recompute=recompute,
                    timer=watch.kind, rounds=1)
    for rounds in range(2, max_rounds + 1):
        if best.spread <= max_spread:
            break
        times = _summary(_runs(watch, forward, count=repeats, **common), recompute=recompute,
                         timer=watch.kind, rounds=rounds)
        best = replace(times if times.spread < best.spread else best, rounds=rounds)
    _clear_grads(params, leaves)
    return best


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
