"""What an accelerator can do, as the cost model needs it.

A chip entry is data (``profiles/<chip>/chip.yaml``), not code, so a user adds a chip by
writing a file. Every figure carries its source and a confidence, because a plan is only as
trustworthy as the least certain number in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autosplit.chips.surface import ComputeSurface, default_surface

__all__ = ["ChipSpec", "Provenance", "CONFIDENCE_LEVELS"]

CONFIDENCE_LEVELS: tuple[str, ...] = ("high", "medium", "low", "measured")


@dataclass(frozen=True)
class Provenance:
    """Where one figure comes from and how much to trust it."""

    source: str
    confidence: str = "medium"


@dataclass(frozen=True)
class ChipSpec:
    """One accelerator type.

    Throughputs are dense (non-sparse) peak figures in TFLOPS; ``compute_efficiency`` is the
    fraction of that peak large GEMMs achieve in practice, ``memory_efficiency`` the fraction of
    the memory bandwidth a streaming kernel achieves. Bandwidths are per direction in GB/s.
    """

    name: str
    vendor: str
    tflops_bf16: float
    tflops_fp16: float
    tflops_fp32: float
    memory_gb: float
    memory_bw_gbs: float
    intra_node_link: str
    intra_node_bw_gbs: float
    collective_library: str
    compute_efficiency: float = 0.6
    memory_efficiency: float = 0.8
    #: Host↔device copy bandwidth per direction (PCIe), used by the CPU-relay path.
    host_bw_gbs: float = 25.0
    #: Whether the chip can DMA straight to a NIC (GPUDirect-style RDMA).
    supports_rdma: bool = True
    description: str = ""
    provenance: dict[str, Provenance] = field(default_factory=dict)
    #: Other names a cluster file may use for this chip (matched case-insensitively).
    aliases: tuple[str, ...] = ()
    #: Fixed cost of one message over the intra-node link (the α of α-β), seconds.
    intra_node_latency_s: float = 5e-6
    #: Bytes the math libraries keep allocated on every device that trains, beside the
    #: tensors (``profile-chip`` measures it). PyTorch gives cuBLAS(Lt) one workspace per
    #: thread and stream, 32 MiB on Hopper (pytorch/pytorch#120925); training runs the
    #: forward on the main thread and the backward on autograd's device thread, so two.
    workspace_bytes: float = 2 * 32 * 2**20
    #: Measured efficiency per GEMM shape, launch cost and streaming fraction
    #: (``profile-chip``); ``None``: the documented default surface (low confidence).
    surface: ComputeSurface | None = None

    def compute_surface(self) -> ComputeSurface:
        """The measured surface, or the default one built from the efficiencies above."""
        if self.surface is not None:
            return self.surface
        return default_surface(compute_efficiency=self.compute_efficiency,
                               memory_efficiency=self.memory_efficiency)
    #: Kubernetes extended resource a pod requests one device of this chip by (HAMi's name
    #: where HAMi supports the chip, e.g. ``huawei.com/Ascend910B3``); ``none`` for a chip that
    #: needs no accelerator resource (a CPU); empty: derived from ``vendor`` by the exporter.
    kubernetes_resource: str = ""

    def peak_tflops(self, dtype: str) -> float:
        """Peak dense throughput for the training dtype."""
        return {"bf16": self.tflops_bf16, "fp16": self.tflops_fp16,
                "fp32": self.tflops_fp32}[dtype]

    def achievable_flops(self, dtype: str) -> float:
        """FLOP/s a large, well-shaped GEMM reaches on this chip."""
        return self.peak_tflops(dtype) * 1e12 * self.compute_efficiency

    def achievable_bytes_per_s(self) -> float:
        """Bytes/s a streaming kernel reaches on this chip's memory."""
        return self.memory_bw_gbs * 1e9 * self.memory_efficiency

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @property
    def lowest_confidence(self) -> str:
        order = {"measured": 0, "high": 1, "medium": 2, "low": 3}
        if not self.provenance:
            return "low"
        return max((p.confidence for p in self.provenance.values()), key=lambda c: order.get(c, 3))
