"""Megatron-style mixed precision for one pipeline stage: low-precision weights and gradients
on the device, fp32 master weights in the optimizer.

The cost model charges every parameter 16 bytes — bf16 weight (2) + bf16 gradient (2) + fp32
master copy (4) + Adam's two fp32 moments (8) — and its per-layer profiles are timed with bf16
weights. Keeping fp32 parameters and running under autocast costs the same 16 bytes at rest but
casts every weight to bf16 in every micro-batch's forward and keeps those copies for the
backward, so a run of that kind is slower and larger than the plan says for reasons that have
nothing to do with the plan. Here the stage's parameters are stored in the compute dtype (no
autocast, no per-micro-batch casts), autograd accumulates their gradients in that dtype, and
the optimizer keeps an fp32 master copy of every parameter: after the backward each gradient
is copied to an fp32 master gradient, AdamW steps the masters, and the masters are rounded
back into the parameters.

The master step walks the parameters in chunks, so the transient fp32 gradients never exceed
one chunk. fp16 has too little range for raw gradients, so it gets a dynamic loss scale
(the loss is multiplied before the backward, the master gradients divided after; a step whose
gradients overflowed on any rank is skipped and the scale halved). bf16 needs none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from autosplit.runtime.tensor_parallel import local

__all__ = ["PRECISIONS", "DTYPES", "LossScaler", "MasterWeightOptimizer"]

#: ``master``: weights and gradients in the compute dtype, fp32 masters in the optimizer;
#: ``autocast``: fp32 weights and gradients, forward under ``torch.autocast``.
PRECISIONS: tuple[str, ...] = ("master", "autocast")

#: Compute dtypes by their plan names.
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16,
                                  "fp32": torch.float32}

#: Parameters per optimizer chunk: bounds the transient fp32 gradients (256 MB).
_CHUNK_NUMEL = 1 << 26


class LossScaler:
    """Dynamic loss scale for fp16: halve on overflow, double after ``growth_interval`` clean
    steps (the policy of Megatron-LM's and PyTorch's scalers)."""

    def __init__(self, *, initial: float = 2.0 ** 16, growth_interval: int = 1000,
                 minimum: float = 1.0) -> None:
        self.scale = initial
        self.growth_interval = growth_interval
        self.minimum = minimum
        self._clean_steps = 0

    def update(self, *, overflow: bool) -> None:
        if overflow:
            self.scale = max(self.minimum, self.scale / 2)
            self._clean_steps = 0
            return
        self._clean_steps += 1
        if self._clean_steps % self.growth_interval == 0:
            self.scale *= 2


class MasterWeightOptimizer:
    """An optimizer over fp32 master copies of low-precision parameters.

    ``params`` are cast to ``dtype`` in place (their fp32 values become the masters first, so
    the masters start exactly where fp32 initialisation put them). ``make_inner`` builds the
    real optimizer over the masters.
    """

    def __init__(self, params: Sequence[nn.Parameter], *, dtype: torch.dtype,
                 make_inner: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
                 scaler: LossScaler | None = None, chunk_numel: int = _CHUNK_NUMEL) -> None:
        self.params = list(params)
        self.dtype = dtype
        self.scaler = scaler
        self.masters: list[nn.Parameter] = []
        with torch.no_grad():
            for p in self.params:
                self.masters.append(nn.Parameter(p.detach().to(torch.float32, copy=True)))
                p.data = p.data.to(dtype)
        self.inner = make_inner(self.masters)
        self._chunks = _chunk(self.params, chunk_numel)

    @property
    def loss_scale(self) -> float:
        return self.scaler.scale if self.scaler is not None else 1.0

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def grads_finite(self) -> bool:
        """Whether every gradient of this rank is finite (one device sync)."""
        grads = [local(p.grad) for p in self.params if p.grad is not None]
        if not grads:
            return True
        bad = torch.stack([torch.logical_not(torch.isfinite(g).all()) for g in grads])
        return not bool(bad.any())

    def step(self, *, skip: bool = False) -> None:
        """Master step: fp32 copy of each gradient (unscaled), AdamW on the masters, masters
        rounded back into the parameters. ``skip`` (an overflow on some rank) only updates the
        loss scale."""
        inv_scale = 1.0 / self.loss_scale
        if self.scaler is not None:
            self.scaler.update(overflow=skip)
        if skip:
            return
        with torch.no_grad():
            for chunk in self._chunks:
                stepped = []
                for i in chunk:
                    grad = self.params[i].grad
                    if grad is None:
                        continue
                    master = self.masters[i]
                    master.grad = grad.to(torch.float32)
                    if inv_scale != 1.0:
                        master.grad.mul_(inv_scale)
                    stepped.append(i)
                if not stepped:
                    continue
                self.inner.step()
                for i in stepped:
                    self.params[i].copy_(self.masters[i])
                    self.masters[i].grad = None


def _chunk(params: Sequence[nn.Parameter], limit: int) -> list[list[int]]:
    """Consecutive groups of parameters of at most ``limit`` elements (a larger parameter is a
    group of its own)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, p in enumerate(params):
        n = p.numel()
        if current and size + n > limit:
            chunks.append(current)
            current, size = [], 0
        current.append(i)
        size += n
    if current:
        chunks.append(current)
    return chunks
