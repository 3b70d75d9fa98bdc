"""The kernel records a unit's forward is priced by: GEMM shapes, fused attention calls and
memory-bound traffic, per sample.

Why a module of their own: the records are stored in every model profile and read by the
cost model on each search, while the recorder that fills them (``autosplit.model.kernels``)
needs PyTorch. Keeping the plain dataclasses here lets a search from a cached profile run
without importing PyTorch at all (seconds of every command on a small machine).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AttentionCall", "Gemm", "KernelCounts"]


@dataclass(frozen=True)
class Gemm:
    """One GEMM per sample: ``C[m, n] = A[m, k] · B[k, n]``, ``batch`` times.

    ``weight``: ``B`` is a parameter, so ``m`` (tokens) scales with the micro-batch and tensor
    parallelism shards ``n`` or ``k``; otherwise ``batch`` scales with the micro-batch.
    """

    m: int
    n: int
    k: int
    batch: int = 1
    weight: bool = True

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k * self.batch


@dataclass(frozen=True)
class AttentionCall:
    """One fused attention kernel per sample (``batch_heads`` = batch × heads)."""

    batch_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    causal: bool

    @property
    def flops(self) -> float:
        """Forward FLOPs: two GEMMs (scores, weighted values), halved when causal."""
        full = 4.0 * self.batch_heads * self.q_len * self.kv_len * self.head_dim
        return full / 2.0 if self.causal else full


@dataclass(frozen=True)
class KernelCounts:
    """A unit's forward kernels per sample, as the cost model prices them."""

    gemms: tuple[Gemm, ...] = ()
    attention: tuple[AttentionCall, ...] = ()
    #: Memory-bound kernels (norms, softmax, element-wise) and the bytes they move per sample.
    memory_kernels: int = 0
    memory_bytes: float = 0.0

    @property
    def launches(self) -> int:
        """Kernels one forward launches (at any micro-batch)."""
        return len(self.gemms) + len(self.attention) + self.memory_kernels
