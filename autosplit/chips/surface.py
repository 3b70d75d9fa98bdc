"""A chip's compute efficiency per kernel shape, and its per-kernel launch cost.

Why: one ``compute_efficiency`` per chip is the figure of an 8192³ GEMM; a transformer at
hidden 2048 and micro-batch 1 runs GEMMs a quarter that size plus a dozen memory-bound kernels
per block, each paying a launch. The surface says what fraction of peak a GEMM of shape
``(m, n, k)`` reaches, as a product of one saturation curve per dimension:

    η(m, n, k) = η_max · m/(m + m½) · n/(n + n½) · k/(k + k½)

(a dimension far above its half-saturation point ``x½`` costs nothing; at ``x½`` it halves the
rate: too few tiles to fill the SMs along ``m``/``n``, too short a reduction to hide the
pipeline's fill along ``k``). ``autosplit profile-chip`` fits ``η_max`` and the three
half-points per dtype to a sweep of GEMM shapes, the launch cost and streaming fraction to a
sweep of memory-bound kernels, and the attention fraction to fused attention calls
(``autosplit.profiler.surface_fit``). A chip never measured gets ``default_surface``: its
datasheet-derived ``compute_efficiency`` as ``η_max`` and the documented defaults below,
marked low confidence. docs/cost-model.md §1 has the formulas and sources.

A CUDA MPS share of a GPU is a chip of its own (``h200-mps25``), with its own surface: small
kernels do not fill even a share's SMs, so a share's speed on them is sublinear in the share —
measured, not scaled from the whole GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_ATTENTION_FRACTION", "DEFAULT_HALF", "DEFAULT_LAUNCH_S", "ComputeSurface",
           "GemmFit", "default_surface"]

#: Half-saturation dimension of the default surface: a 1024³ GEMM reaches 0.70 of η_max and a
#: 256³ one 0.30, the shape of cuBLAS's published bf16 curves on A100/H100-class parts.
DEFAULT_HALF = 128.0
#: Per-kernel fixed cost of the default surface (launch and tail of a kernel in an eager
#: stream; 4-6 µs on CUDA in PyTorch eager).
DEFAULT_LAUNCH_S = 5e-6
#: Fused attention's rate relative to a GEMM of its shape (FlashAttention-2 forward reaches
#: 50-70 % of a GEMM's rate on A100, Dao 2023).
DEFAULT_ATTENTION_FRACTION = 0.6


@dataclass(frozen=True)
class GemmFit:
    """The efficiency surface of one dtype."""

    peak_fraction: float
    m_half: float
    n_half: float
    k_half: float

    def efficiency(self, m: float, n: float, k: float) -> float:
        """Fraction of the dtype's peak a GEMM of shape ``(m, n, k)`` reaches."""
        return (self.peak_fraction * m / (m + self.m_half) * n / (n + self.n_half)
                * k / (k + self.k_half))


@dataclass(frozen=True)
class ComputeSurface:
    """Per chip: GEMM surfaces per dtype, launch cost, streaming and attention fractions.

    ``gemm`` is a tuple of ``(dtype, fit)`` pairs (hashable, so costs can be cached by it).
    """

    gemm: tuple[tuple[str, GemmFit], ...]
    launch_s: float
    memory_fraction: float
    attention_fraction: float = DEFAULT_ATTENTION_FRACTION
    source: str = ""
    confidence: str = "low"

    def fit(self, dtype: str) -> GemmFit:
        """The surface of ``dtype``; a dtype not measured borrows the first one's shape."""
        for name, fit in self.gemm:
            if name == dtype:
                return fit
        return self.gemm[0][1]

    def has(self, dtype: str) -> bool:
        return any(name == dtype for name, _ in self.gemm)


def default_surface(*, compute_efficiency: float, memory_efficiency: float) -> ComputeSurface:
    """The documented surface of a chip never measured (low confidence)."""
    fit = GemmFit(peak_fraction=compute_efficiency, m_half=DEFAULT_HALF, n_half=DEFAULT_HALF,
                  k_half=DEFAULT_HALF)
    return ComputeSurface(gemm=(("bf16", fit), ("fp16", fit), ("fp32", fit)),
                          launch_s=DEFAULT_LAUNCH_S, memory_fraction=memory_efficiency,
                          source="default surface (docs/cost-model.md §1)", confidence="low")
