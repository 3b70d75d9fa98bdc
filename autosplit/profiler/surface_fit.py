"""Fit a chip's compute surface to a kernel sweep (``autosplit.profiler.kernel_sweep``).

The model fitted is the one the cost model prices with (``autosplit.cost.analytic``):

- memory-bound kernel: ``t = launch + bytes / (BW · memory_fraction)`` — a linear least
  squares in relative error (each row divided by its time, so that the launch-bound small
  kernels weigh as much as the bandwidth-bound large ones);
- GEMM of one dtype: ``t = launch + max(2mnk / (peak · η(m, n, k)), bytes / stream)`` with
  ``η = η_max · Π x/(x + x½)``; the three half-points are searched on a geometric grid, and
  for each grid point ``η_max`` is the median ratio of ideal to measured time (closed form);
  the point with the least absolute log error wins (medians and absolute errors, so that a
  timing hiccup on a shared machine does not drag the fit). Deterministic: no random start.
- attention: the median over attention rows of (the surface's time for a GEMM of the
  attention's shape) / (the measured time), both without the launch.

Everything is relative to the chip file's datasheet peaks and bandwidth (``peaks``), so the
fitted fractions read like ``compute_efficiency`` and ``memory_efficiency``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autosplit.chips.surface import ComputeSurface, GemmFit
from autosplit.config import DTYPE_BYTES
from autosplit.profiler.kernel_sweep import MEMORY_KERNELS, SweepRow

__all__ = ["HALF_GRID", "SurfaceFit", "fit_surface", "surface_entry"]

#: Half-saturation points tried for each GEMM dimension (elements).
HALF_GRID = tuple(float(x) for x in np.geomspace(1.0, 8192.0, 21))


@dataclass(frozen=True)
class SurfaceFit:
    """A fitted surface and how well it reproduces the rows it was fitted to."""

    surface: ComputeSurface
    #: Per kernel class (``gemm-bf16``, ``memory``, ``attention``): median and worst relative
    #: error of the fitted model on the sweep's rows.
    errors: dict[str, tuple[float, float]]


def _fit_memory(rows: Sequence[SweepRow], bw_bytes_s: float) -> tuple[float, float]:
    """(launch_s, memory_fraction) from memory-bound rows."""
    t = np.array([r.seconds for r in rows])
    x = np.array([r.nbytes for r in rows])
    design = np.stack([1.0 / t, x / t], axis=1)
    (launch, per_byte), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    per_byte = max(per_byte, 1.0 / bw_bytes_s)  # no faster than the datasheet bandwidth
    launch = max(0.0, float(launch))
    return launch, float(min(1.0, 1.0 / (per_byte * bw_bytes_s)))


def _saturation(x: np.ndarray, halves: np.ndarray) -> np.ndarray:
    """``x / (x + h)`` for every row (axis -1) and every half-point (axis 0)."""
    return x[None, :] / (x[None, :] + halves[:, None])


def _fit_gemm(rows: Sequence[SweepRow], *, peak_flops: float, stream: float,
              launch: float, dtype: str) -> GemmFit:
    m = np.array([r.m for r in rows], dtype=float)
    n = np.array([r.n for r in rows], dtype=float)
    k = np.array([r.k for r in rows], dtype=float)
    t = np.array([r.seconds for r in rows])
    flops = 2.0 * m * n * k
    byte_t = (m * k + k * n + m * n) * DTYPE_BYTES[dtype] / stream
    grid = np.array(HALF_GRID)
    sm, sn, sk = (_saturation(v, grid) for v in (m, n, k))
    # shape (grid_m, grid_n, grid_k, rows): time at eta_max = 1
    ideal = (flops / peak_flops)[None, None, None, :] / (
        sm[:, None, None, :] * sn[None, :, None, :] * sk[None, None, :, :])
    busy = np.maximum(t - launch, t * 1e-3)
    log_eta = np.median(np.log(ideal) - np.log(busy), axis=-1, keepdims=True)
    eta = np.minimum(np.exp(log_eta), 1.0)
    model = launch + np.maximum(ideal / eta, byte_t)
    err = np.sum(np.abs(np.log(model) - np.log(t)), axis=-1)
    a, b, c = np.unravel_index(int(np.argmin(err)), err.shape)
    return GemmFit(peak_fraction=round(float(eta[a, b, c, 0]), 4),
                   m_half=round(float(grid[a]), 2), n_half=round(float(grid[b]), 2),
                   k_half=round(float(grid[c]), 2))


def _gemm_model(r: SweepRow, surface: ComputeSurface, peak_flops: float, stream: float
                ) -> float:
    eff = surface.fit(r.dtype).efficiency(r.m, r.n, r.k)
    return surface.launch_s + max(r.flops / (peak_flops * eff), r.nbytes / stream)


def _errors(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    rel = np.array([abs(p - m) / m for p, m in pairs])
    return float(np.median(rel)), float(np.max(rel))


def fit_surface(rows: Sequence[SweepRow], *, peaks_tflops: Mapping[str, float],
                memory_bw_gbs: float, source: str) -> SurfaceFit:
    """The surface of one chip from its sweep; ``peaks_tflops`` per dtype and
    ``memory_bw_gbs`` are the chip file's datasheet figures."""
    bw = memory_bw_gbs * 1e9
    memory = [r for r in rows if r.kernel in MEMORY_KERNELS]
    if not memory:
        raise ValueError("the sweep has no memory-bound kernels to fit the launch cost to")
    launch, fraction = _fit_memory(memory, bw)
    stream = bw * fraction
    fits: list[tuple[str, GemmFit]] = []
    for dtype in sorted({r.dtype for r in rows if r.kernel == "gemm"}):
        chosen = [r for r in rows if r.kernel == "gemm" and r.dtype == dtype]
        if dtype in peaks_tflops and chosen:
            fits.append((dtype, _fit_gemm(chosen, peak_flops=peaks_tflops[dtype] * 1e12,
                                          stream=stream, launch=launch, dtype=dtype)))
    if not fits:
        raise ValueError("the sweep has no GEMM rows of a dtype the chip has a peak for")
    surface = ComputeSurface(gemm=tuple(fits), launch_s=launch, memory_fraction=fraction,
                             attention_fraction=1.0, source=source, confidence="measured")
    ratios = []
    for r in (r for r in rows if r.kernel == "attention" and surface.has(r.dtype)):
        gemm_like = (r.flops / (peaks_tflops[r.dtype] * 1e12
                                * surface.fit(r.dtype).efficiency(r.n, r.n, r.k)))
        ratios.append(gemm_like / max(r.seconds - launch, r.seconds * 1e-3))
    attention = round(float(np.clip(np.median(ratios), 1e-3, 2.0)), 4) if ratios else 0.6
    surface = ComputeSurface(gemm=surface.gemm, launch_s=launch, memory_fraction=fraction,
                             attention_fraction=attention, source=source,
                             confidence="measured")
    errors: dict[str, tuple[float, float]] = {}
    for dtype, _ in fits:
        peak = peaks_tflops[dtype] * 1e12
        errors[f"gemm-{dtype}"] = _errors([(_gemm_model(r, surface, peak, stream), r.seconds)
                                           for r in rows
                                           if r.kernel == "gemm" and r.dtype == dtype])
    errors["memory"] = _errors([(launch + r.nbytes / stream, r.seconds) for r in memory])
    att = [r for r in rows if r.kernel == "attention" and surface.has(r.dtype)]
    if att:
        errors["attention"] = _errors([
            (launch + r.flops / (peaks_tflops[r.dtype] * 1e12 * attention
                                 * surface.fit(r.dtype).efficiency(r.n, r.n, r.k)), r.seconds)
            for r in att])
    return SurfaceFit(surface=surface, errors=errors)


def surface_entry(surface: ComputeSurface) -> dict:
    """The ``compute_surface:`` mapping of a chip file (docs/chips.md) for ``surface``."""
    return {
        "gemm": {d: {"peak_fraction": f.peak_fraction, "m_half": f.m_half,
                     "n_half": f.n_half, "k_half": f.k_half} for d, f in surface.gemm},
        "launch_us": round(surface.launch_s * 1e6, 3),
        "memory_fraction": round(surface.memory_fraction, 4),
        "attention_fraction": surface.attention_fraction,
        "source": surface.source,
        "confidence": surface.confidence,
    }
