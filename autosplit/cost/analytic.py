"""Analytic per-layer compute time: each kernel priced with the chip's compute surface.

Why per kernel: a layer's time is the sum of its kernels' times, and a kernel's rate depends
on its shape. Ingestion records each unit's GEMM shapes, fused attention calls and
memory-bound traffic (``autosplit.model.kernels``); each GEMM costs its FLOPs at the chip's
efficiency for that shape (``autosplit.chips.surface``), or its bytes at the streaming rate
where that is longer (a GEMM with few rows is bound by reading its weight), plus a launch;
each memory-bound kernel costs its bytes at the streaming rate plus a launch. Units ingested
without kernel detail (imported or hand-made profiles) keep the two-number roofline.
Measured profiles (``autosplit.profiler``) replace all of this where they exist.
"""

from __future__ import annotations

from autosplit.chips.spec import ChipSpec
from autosplit.chips.surface import ComputeSurface
from autosplit.config import DTYPE_BYTES
from autosplit.model.kernel_records import AttentionCall, Gemm, KernelCounts
from autosplit.model.types import LayerProfile
from autosplit.protocols.cost import LayerTiming

__all__ = ["AnalyticCosts", "ATTENTION_BACKWARD_RATIO", "MEMORY_BACKWARD_RATIO",
           "attention_time", "gemm_time", "kernel_times", "roofline_time"]

#: A fused attention backward does five GEMM-like products to the forward's two
#: (FlashAttention-2, Dao 2023, §3.1): 2.5 times the forward's FLOPs.
ATTENTION_BACKWARD_RATIO = 2.5
#: The backward of a memory-bound kernel reads its output gradient and what it saved and
#: writes its input gradient: about twice the forward's traffic, in about twice the kernels.
MEMORY_BACKWARD_RATIO = 2.0


def roofline_time(flops: float, nbytes: float, chip: ChipSpec, dtype: str) -> float:
    """Seconds for a kernel doing ``flops`` and moving ``nbytes`` on ``chip``."""
    return max(flops / chip.achievable_flops(dtype), nbytes / chip.achievable_bytes_per_s())


def gemm_time(m: float, n: float, k: float, batch: float, *, chip: ChipSpec,
              surface: ComputeSurface, dtype: str) -> float:
    """One (batched) GEMM: launch + the longer of its FLOPs at the surface's efficiency for
    its shape and its operand bytes at the streaming rate."""
    if m <= 0 or n <= 0 or k <= 0 or batch <= 0:
        return 0.0
    eff = surface.fit(dtype).efficiency(m, n, k)
    flops = 2.0 * m * n * k * batch
    nbytes = (m * k + k * n + m * n) * batch * DTYPE_BYTES[dtype]
    stream = chip.memory_bw_gbs * 1e9 * surface.memory_fraction
    return surface.launch_s + max(flops / (chip.peak_tflops(dtype) * 1e12 * eff),
                                  nbytes / stream)


def attention_time(call: AttentionCall, *, scale: float, chip: ChipSpec,
                   surface: ComputeSurface, dtype: str) -> float:
    """One fused attention forward with ``scale`` × its batch·heads (micro-batch over TP)."""
    eff = (surface.fit(dtype).efficiency(call.q_len, call.kv_len, call.head_dim)
           * surface.attention_fraction)
    return surface.launch_s + call.flops * scale / (chip.peak_tflops(dtype) * 1e12 * eff)


def _tp_gemm(g: Gemm, b: float, tp: int) -> tuple[float, float, float, float]:
    """Shape of one GEMM at micro-batch ``b`` on one of ``tp`` ranks.

    A weight GEMM's rows are tokens (× b) and Megatron shards its larger weight dimension —
    columns for QKV, the MLP's first layer and the head, the reduction for the output
    projections; an activation GEMM (unfused attention) grows in batch and is split by heads.
    """
    if g.weight:
        n, k = (g.n / tp, g.k) if g.n >= g.k else (g.n, g.k / tp)
        return g.m * b, n, k, g.batch
    return g.m, g.n, g.k, g.batch * b / tp


def kernel_times(kernels: KernelCounts, *, param_bytes: float, chip: ChipSpec,
                 micro_batch: int, tp: int, dtype: str) -> tuple[float, float]:
    """(forward, backward) seconds of a unit's kernels at ``micro_batch`` on one TP rank.

    The backward of ``C = A·B`` is ``dA = dC·Bᵀ`` (shape ``m × k``, reduction ``n``) and, for a
    weight, ``dB = Aᵀ·dC`` (``k × n``, reduction ``m``); for two activations both operand
    gradients. The weight gradients are accumulated across micro-batches (read + write).
    """
    surface = chip.compute_surface()
    b = float(micro_batch)
    fwd = bwd = 0.0
    for g in kernels.gemms:
        m, n, k, batch = _tp_gemm(g, b, tp)
        fwd += gemm_time(m, n, k, batch, chip=chip, surface=surface, dtype=dtype)
        bwd += gemm_time(m, k, n, batch, chip=chip, surface=surface, dtype=dtype)
        bwd += gemm_time(k, n, m, batch, chip=chip, surface=surface, dtype=dtype)
    for call in kernels.attention:
        one = attention_time(call, scale=b / tp, chip=chip, surface=surface, dtype=dtype)
        fwd += one
        bwd += surface.launch_s + (one - surface.launch_s) * ATTENTION_BACKWARD_RATIO
    stream = chip.memory_bw_gbs * 1e9 * surface.memory_fraction
    mem = kernels.memory_kernels * surface.launch_s + b * kernels.memory_bytes / tp / stream
    fwd += mem
    bwd += MEMORY_BACKWARD_RATIO * mem
    if param_bytes > 0:
        bwd += surface.launch_s + 2.0 * param_bytes / tp / stream
    return fwd, bwd


class AnalyticCosts:
    """Kernel-by-kernel costs for every chip in the library (``LayerCostProvider``).

    Tensor parallelism shards each weight GEMM's larger weight dimension, attention by heads
    and memory-bound traffic by ``tp`` (sequence parallelism); its all-reduces are added by the
    communication model, not here. Units without kernel detail use the roofline: the larger
    of FLOPs at the large-GEMM efficiency and bytes at the streaming rate, the backward moving
    the weights twice (read, gradient written) and twice the activation bytes.

    Identical units (same kind and figures) on the same chip, micro-batch, TP and dtype are
    priced once: the search builds tables for many shapes of one model.
    """

    source = "analytic"

    def __init__(self) -> None:
        self._memo: dict[tuple, LayerTiming] = {}

    def layer_timing(self, layer: LayerProfile, chip: ChipSpec, *, micro_batch: int, tp: int,
                     dtype: str) -> LayerTiming:
        key = (layer.layer_kind or layer.name, layer.fwd_flops, layer.fwd_bytes,
               layer.param_bytes, layer.kernels.launches, chip.name, chip.peak_tflops(dtype),
               chip.memory_bw_gbs, chip.compute_efficiency, chip.memory_efficiency,
               chip.surface, micro_batch, tp, dtype)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._price(layer, chip, micro_batch=micro_batch, tp=tp, dtype=dtype)
            self._memo[key] = hit
        return hit

    @staticmethod
    def _price(layer: LayerProfile, chip: ChipSpec, *, micro_batch: int, tp: int,
               dtype: str) -> LayerTiming:
        if layer.kernels.launches:
            fwd, bwd = kernel_times(layer.kernels, param_bytes=layer.param_bytes, chip=chip,
                                    micro_batch=micro_batch, tp=tp, dtype=dtype)
            return LayerTiming(fwd_s=fwd, bwd_s=bwd, recompute_s=fwd, source="analytic")
        b = float(micro_batch)
        fwd = roofline_time(b * layer.fwd_flops / tp,
                            layer.param_bytes / tp + b * layer.fwd_bytes / tp, chip, dtype)
        bwd = roofline_time(b * layer.bwd_flops / tp,
                            2.0 * layer.param_bytes / tp + 2.0 * b * layer.fwd_bytes / tp,
                            chip, dtype)
        return LayerTiming(fwd_s=fwd, bwd_s=bwd, recompute_s=fwd, source="analytic")
