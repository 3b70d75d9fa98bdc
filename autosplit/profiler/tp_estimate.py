"""Estimate a unit's compute time under tensor parallelism from sharded GEMMs timed for real.

Megatron-style tensor parallelism splits every Linear of a block across ``tp`` devices:
column-parallel layers (QKV, MLP up/gate, the vocabulary head) keep ``out_features / tp``
outputs, row-parallel layers (attention output, MLP down) ``in_features / tp`` inputs. Building
a sharded copy of an arbitrary user block is not possible in general (its forward hard-codes
head counts and reshapes), so the profiler does the generic next best thing: it times every
Linear call of the unit alone at its full shape and at its sharded shape, on the same device
and inputs of the same row count, and replaces the one by the other:

    t(tp) = t(1) - sum(Linear at full shape) + sum(Linear at 1/tp shape)

Limits (docs/profiles.md): everything that is not a Linear (attention core, norms, activation
functions, residual adds) is kept at its tp = 1 cost. That is right for what Megatron
replicates (norms, residuals, dropout without sequence parallelism) and pessimistic for the
attention core and the MLP activation, which Megatron shards by heads and by columns. Memory
at tp > 1 is not measured. Collectives are not included: the link model adds them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from autosplit.profiler.capture import LinearShape
from autosplit.profiler.device import DeviceHandle
from autosplit.profiler.timing import PhaseTimes, time_piece

__all__ = ["shard_linear", "LinearTimer", "apply_tp"]


def shard_linear(shape: LinearShape, tp: int) -> LinearShape:
    """The per-device shape of a Linear under Megatron sharding (column if it widens)."""
    if tp == 1:
        return shape
    if shape.out_features >= shape.in_features:  # column-parallel: split the outputs
        return LinearShape(rows=shape.rows, in_features=shape.in_features,
                           out_features=max(1, -(-shape.out_features // tp)), bias=shape.bias)
    return LinearShape(rows=shape.rows, in_features=max(1, -(-shape.in_features // tp)),
                       out_features=shape.out_features, bias=shape.bias)


@dataclass
class LinearTimer:
    """Times lone Linear calls on one device, caching by shape."""

    handle: DeviceHandle
    dtype: torch.dtype
    warmup: int
    repeats: int

    def __post_init__(self) -> None:
        self._cache: dict[LinearShape, PhaseTimes] = {}

    def time(self, shape: LinearShape) -> PhaseTimes:
        cached = self._cache.get(shape)
        if cached is not None:
            return cached
        device = self.handle.device
        gen = torch.Generator(device=device).manual_seed(0)
        layer = nn.Linear(shape.in_features, shape.out_features, bias=shape.bias,
                          device=device, dtype=self.dtype)
        x = torch.randn(shape.rows, shape.in_features, device=device, dtype=self.dtype,
                        generator=gen).requires_grad_(True)
        params = list(layer.parameters())
        times = time_piece(self.handle, lambda: layer(x), params=params, leaves=[x],
                           warmup=self.warmup, repeats=self.repeats, recompute=False)
        self._cache[shape] = times
        return times

    def total(self, shapes: Iterable[LinearShape]) -> tuple[float, float]:
        """Summed (forward, backward) seconds of the given Linear calls."""
        fwd = bwd = 0.0
        for shape in shapes:
            t = self.time(shape)
            fwd += t.fwd_s
            bwd += t.bwd_s
        return fwd, bwd


def apply_tp(base: PhaseTimes, shapes: list[LinearShape], tp: int,
             timer: LinearTimer) -> PhaseTimes:
    """``base`` (measured at tp = 1) with its Linear calls replaced by their 1/tp shards."""
    if tp == 1 or not shapes:
        return base
    full_f, full_b = timer.total(shapes)
    shard_f, shard_b = timer.total(shard_linear(s, tp) for s in shapes)
    rest_f = max(base.fwd_s - full_f, 0.0)
    rest_b = max(base.bwd_s - full_b, 0.0)
    rest_rc = max(base.recompute_bwd_s - full_f - full_b, 0.0)
    return PhaseTimes(fwd_s=rest_f + shard_f, bwd_s=rest_b + shard_b,
                      recompute_bwd_s=rest_rc + shard_f + shard_b, repeats=base.repeats,
                      spread=base.spread)
