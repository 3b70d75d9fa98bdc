"""The kernels a partition unit's forward launches, counted on the meta device.

Why: one FLOP total per unit cannot say whether its work runs as a few large GEMMs (near
peak) or many small ones (far from it, and paying a launch each), nor how much of its time
goes to memory-bound kernels (layer norm, softmax, element-wise). The cost model prices each
GEMM with the chip's efficiency surface (``autosplit.cost.surface``), so ingestion records
the GEMM shapes, the fused attention calls and the memory-bound traffic here.

Rules, at the ATen level (whatever Python API called them):

- ``mm``/``addmm``/``bmm``/``baddbmm`` are GEMMs. A GEMM with a parameter as an operand is a
  *weight* GEMM: its row count ``m`` is the activation's (tokens), which grows with the
  micro-batch; it is stored as ``(m, n, k)`` with ``m`` the activation side (a weight on the
  left is transposed away). A GEMM between two activations (unfused attention scores) grows
  by its batch count instead.
- Fused attention kernels are recorded with their batch·heads, query and key lengths, head
  dimension and whether they are causal (a causal kernel skips the masked half).
- Every other op that produces a new tensor (not a view) is one memory-bound kernel moving
  its inputs' and outputs' bytes; ops that allocate without computing are not kernels.

Only the forward is recorded; the backward's kernels are derived from it by the cost model
(each GEMM gives an input-gradient and, for a weight, a weight-gradient GEMM of the same
FLOPs; each memory-bound kernel's backward moves about twice its bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from autosplit.model.kernel_records import AttentionCall, Gemm, KernelCounts

__all__ = ["KernelMeter"]


_aten = torch.ops.aten
_GEMMS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default}
_ATTENTION = {
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_cudnn_attention.default,
}
#: Ops that allocate or describe tensors without launching a compute kernel.
_NOT_KERNELS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
                "lift_fresh", "detach", "alias", "_local_scalar_dense", "sym_size",
                "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "_to_copy"}


def _key(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage()._cdata)
    except (RuntimeError, NotImplementedError, AttributeError):
        return id(t)


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class _Tally:
    gemms: list[Gemm] = field(default_factory=list)
    attention: list[AttentionCall] = field(default_factory=list)
    memory_kernels: int = 0
    memory_bytes: float = 0.0


class KernelMeter(TorchDispatchMode):
    """Records GEMMs, fused attention and memory-bound kernels while active.

    ``weights`` are the storages of the model's parameters (a GEMM touching one is a weight
    GEMM)."""

    def __init__(self, weights: set[int]) -> None:
        super().__init__()
        self._weights = weights
        self._tally = _Tally()

    def counts(self) -> KernelCounts:
        t = self._tally
        return KernelCounts(gemms=tuple(t.gemms), attention=tuple(t.attention),
                            memory_kernels=t.memory_kernels, memory_bytes=float(t.memory_bytes))

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _GEMMS:
            self._gemm(func, args)
        elif func in _ATTENTION:
            self._attention(func, args, kwargs)
        else:
            self._memory(func, args, kwargs, out)
        return out

    def _gemm(self, func: Any, args: tuple) -> None:
        if func in (_aten.addmm.default, _aten.baddbmm.default):
            args = args[1:]
        a, b = args[0], args[1]
        if a.dim() == 3:
            batch, m, k = (int(x) for x in a.shape)
            n = int(b.shape[-1])
            weight = _key(a) in self._weights or _key(b) in self._weights
            self._tally.gemms.append(Gemm(m=m, n=n, k=k, batch=batch, weight=weight))
            return
        m, k = (int(x) for x in a.shape)
        n = int(b.shape[1])
        if _key(a) in self._weights and _key(b) not in self._weights:
            m, n = n, m  # C^T = B^T A^T: keep the activation's rows as m
        weight = _key(a) in self._weights or _key(b) in self._weights
        self._tally.gemms.append(Gemm(m=m, n=n, k=k, batch=1, weight=weight))

    def _attention(self, func: Any, args: tuple, kwargs: dict) -> None:
        q, k = args[0], args[1]
        # is_causal is the 7th argument of the efficient and cuDNN kernels, the 5th of flash.
        at = 4 if "flash" in func.overloadpacket.__name__ else 6
        causal = bool(args[at] if len(args) > at else kwargs.get("is_causal", False))
        b, h, s_q, d = (int(x) for x in q.shape)
        self._tally.attention.append(AttentionCall(batch_heads=b * h, q_len=s_q,
                                                   kv_len=int(k.shape[2]), head_dim=d,
                                                   causal=causal))

    def _memory(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = func.overloadpacket.__name__
        if name in _NOT_KERNELS:
            return
        outs = _tensors(out)
        ins = _tensors((args, kwargs))
        if not outs:
            return
        in_keys = {_key(t) for t in ins}
        fresh = [t for t in outs if _key(t) not in in_keys]
        in_place = name.endswith("_")
        if not fresh and not in_place:
            return  # a view of an input: no kernel
        # Weights are priced once per unit (the roofline's weight term), not per kernel: an
        # embedding lookup reads rows of its table, not the table.
        moved = sum(_nbytes(t) for t in ins if _key(t) not in self._weights)
        moved += sum(_nbytes(t) for t in fresh)
        self._tally.memory_kernels += 1
        self._tally.memory_bytes += moved
