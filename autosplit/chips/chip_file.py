"""The chip file format (``chip.yaml``, and a cluster file's inline ``chips:`` entries).

A pydantic model, because every rule of the format — which fields exist, which are required,
their types and ranges, the allowed link kinds and confidence levels — is then written once,
checked by pydantic, and published as ``docs/schemas/chip.schema.json`` for editors. The model
is the file as written; ``ChipFile.to_spec`` turns it into the ``ChipSpec`` the cost model
uses. docs/chips.md documents the fields.

To add a field: declare it here (type, constraint, ``description``), add it to ``ChipSpec``,
document it in docs/chips.md and regenerate the schemas
(``python -m autosplit.inputs.json_schema``).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    StringConstraints,
)

from autosplit.chips.spec import CONFIDENCE_LEVELS, ChipSpec, Provenance
from autosplit.chips.surface import ComputeSurface, GemmFit
from autosplit.inputs.types import Fraction, Name, NonNegative, Positive, Text, lower_case
from autosplit.inputs.validation import Hint

__all__ = ["CHIP_DOC", "INTRA_NODE_LINKS", "PROVENANCE_FIELDS", "ChipFile", "ChipName", "ChipYaml",
           "GemmSurfaceEntry", "ProvenanceEntry", "SURFACE_DTYPES", "SurfaceEntry"]

CHIP_DOC = "docs/chips.md"

#: Link kinds a chip file or a cluster file may name for the intra-node fabric.
INTRA_NODE_LINKS: tuple[str, ...] = (
    "nvlink", "infinity_fabric", "hccs", "mlu_link", "pcie", "roce",
)
#: Fields a ``provenance:`` entry may describe (every figure and property of the chip).
PROVENANCE_FIELDS: tuple[str, ...] = (
    "vendor", "tflops_bf16", "tflops_fp16", "tflops_fp32", "memory_gb", "memory_bw_gbs",
    "intra_node_link", "intra_node_bw_gbs", "collective_library", "compute_efficiency",
    "memory_efficiency", "host_bw_gbs", "supports_rdma", "intra_node_latency_us",
    "kubernetes_resource", "workspace_mb",
)
#: Dtypes a ``compute_surface.gemm`` may describe.
SURFACE_DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp32")

#: An extended resource name (``domain/name``, as Kubernetes validates them), ``none`` or empty.
KubernetesResource = Annotated[StrictStr, StringConstraints(
    pattern=r"^(|none|[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")]
IntraNodeLink = Annotated[Literal[INTRA_NODE_LINKS], BeforeValidator(lower_case)]  # type: ignore[valid-type]
ChipName = Annotated[Name, Hint("use letters, digits, '.', '_' or '-', starting with a letter or "
                                "digit (e.g. H100, Ascend910B)")]
_FIGURE = Hint("give the datasheet figure (a positive number)")
_FRACTION = Hint("give the achieved fraction of peak, e.g. 0.6")


def _default(name: str) -> Any:
    """``ChipSpec``'s default for an optional field: the one place defaults are written."""
    return next(f.default for f in dataclasses.fields(ChipSpec) if f.name == name)


class ProvenanceEntry(BaseModel):
    """Where one figure comes from and how much to trust it."""

    model_config = ConfigDict(extra="forbid")

    source: Annotated[Text, Hint("say where the figure comes from (datasheet, paper, "
                                 "measurement)")] = Field(description="Where the figure comes "
                                                                      "from.")
    confidence: Literal[CONFIDENCE_LEVELS] = Field(  # type: ignore[valid-type]
        "medium", description="measured, high (datasheet), medium, or low.")


ProvenanceKey = Literal[PROVENANCE_FIELDS]  # type: ignore[valid-type]
SurfaceDtype = Literal[SURFACE_DTYPES]  # type: ignore[valid-type]
_HALF = Hint("give the dimension (elements) at which the rate halves, e.g. 128")


class GemmSurfaceEntry(BaseModel):
    """One dtype's GEMM efficiency surface: ``peak_fraction · Π x/(x + x_half)``."""

    model_config = ConfigDict(extra="forbid")

    peak_fraction: Annotated[Fraction, _FRACTION] = Field(
        description="Fraction of peak an unboundedly large GEMM reaches (eta_max).")
    m_half: Annotated[Positive, _HALF] = Field(description="Rows (tokens) at which the rate "
                                                           "halves.")
    n_half: Annotated[Positive, _HALF] = Field(description="Output columns at which the rate "
                                                           "halves.")
    k_half: Annotated[Positive, _HALF] = Field(description="Reduction length at which the rate "
                                                           "halves.")


class SurfaceEntry(BaseModel):
    """A measured compute surface (written by ``autosplit profile-chip --write-chip``)."""

    model_config = ConfigDict(extra="forbid")

    gemm: Annotated[dict[SurfaceDtype, GemmSurfaceEntry],
                    Hint("give at least one of bf16, fp16, fp32")] = Field(
        min_length=1, description="Per dtype (bf16, fp16, fp32; at least one): the GEMM "
                                  "efficiency surface.")
    launch_us: Annotated[NonNegative, Hint("give microseconds, e.g. 5")] = Field(
        description="Fixed cost of one kernel in an eager stream, microseconds.")
    memory_fraction: Annotated[Fraction, _FRACTION] = Field(
        description="Fraction of memory_bw_gbs memory-bound kernels (norms, softmax, "
                    "element-wise) reach.")
    attention_fraction: Annotated[Positive, Hint("give the ratio, e.g. 0.6")] = Field(
        0.6, le=2.0, description="Fused attention's rate relative to a GEMM of its shape.")
    source: Annotated[Text, Hint("say which command and device measured it")] = Field(
        description="The command, device and date of the measurement.")
    confidence: Literal[CONFIDENCE_LEVELS] = Field(  # type: ignore[valid-type]
        "measured", description="measured, high, medium or low.")

    def to_surface(self) -> ComputeSurface:
        return ComputeSurface(
            gemm=tuple((d, GemmFit(peak_fraction=g.peak_fraction, m_half=g.m_half,
                                   n_half=g.n_half, k_half=g.k_half))
                       for d, g in sorted(self.gemm.items())),
            launch_s=self.launch_us * 1e-6, memory_fraction=self.memory_fraction,
            attention_fraction=self.attention_fraction, source=self.source,
            confidence=self.confidence)


class ChipFile(BaseModel):
    """One accelerator type: dense peak figures, memory, the intra-node link, efficiencies.

    Bandwidths are GB/s per direction; throughputs are dense TFLOPS. The fields are declared
    in the documented order, so the first missing one is the one reported.
    """

    model_config = ConfigDict(extra="forbid", title="autosplit chip file")

    name: ChipName | None = Field(None, description="Canonical chip name (a chip.yaml needs "
                                                    "it; inline chips take the key).")
    vendor: Annotated[Text, Hint("write it as text, e.g. NVIDIA")] = Field(
        description="Vendor; devices of one vendor reach each other over the network directly.")
    tflops_bf16: Annotated[Positive, _FIGURE] = Field(description="Dense BF16 matrix peak, "
                                                                  "TFLOPS.")
    tflops_fp16: Annotated[Positive, _FIGURE] = Field(description="Dense FP16 matrix peak, "
                                                                  "TFLOPS.")
    tflops_fp32: Annotated[Positive, _FIGURE] = Field(description="Dense FP32 peak as a "
                                                                  "framework uses it, TFLOPS.")
    memory_gb: Annotated[Positive, _FIGURE] = Field(description="Device memory, GB (1e9 B).")
    memory_bw_gbs: Annotated[Positive, _FIGURE] = Field(description="Peak device-memory "
                                                                    "bandwidth, GB/s.")
    intra_node_link: IntraNodeLink = Field(description="Intra-node fabric kind.")
    intra_node_bw_gbs: Annotated[Positive, _FIGURE] = Field(
        description="What one device pushes into the intra-node fabric, GB/s per direction.")
    collective_library: Annotated[Text, Hint("write it as text, e.g. NCCL")] = Field(
        description="Collective library (NCCL, RCCL, HCCL, …).")
    compute_efficiency: Annotated[Fraction, _FRACTION] = Field(
        _default("compute_efficiency"), description="Fraction of peak large GEMMs reach.")
    memory_efficiency: Annotated[Fraction, _FRACTION] = Field(
        _default("memory_efficiency"), description="Fraction of memory_bw_gbs a streaming "
                                                   "kernel reaches.")
    host_bw_gbs: Annotated[Positive, _FIGURE] = Field(
        _default("host_bw_gbs"), description="Achieved host<->device copy bandwidth, GB/s per "
                                             "direction.")
    supports_rdma: StrictBool = Field(_default("supports_rdma"),
                                      description="Whether the device can DMA to a NIC.")
    description: StrictStr = Field("", description="One line for people.")
    provenance: dict[ProvenanceKey, ProvenanceEntry] = Field(
        default_factory=dict, description="Per field: its source and confidence.")
    aliases: Annotated[list[ChipName], Hint("write e.g. `aliases: [H100-SXM, H100SXM]`")] = Field(
        default_factory=list, description="Other names cluster files may use.")
    intra_node_latency_us: Annotated[NonNegative, Hint("give microseconds, e.g. 5")] = Field(
        5.0, description="Fixed cost of one message over the intra-node link (alpha), "
                         "microseconds.")
    workspace_mb: Annotated[NonNegative, Hint("give megabytes (1e6 B), e.g. 67.1")] = Field(
        _default("workspace_bytes") / 1e6,
        description="Memory the math libraries keep allocated on a training device beside "
                    "its tensors, MB; default: two 32 MiB cuBLAS workspaces (forward and "
                    "backward threads).")
    compute_surface: SurfaceEntry | None = Field(
        None, description="Measured GEMM efficiency surface, launch cost and streaming "
                          "fraction; absent: the default surface (low confidence).")
    kubernetes_resource: Annotated[KubernetesResource, Hint(
        "write a Kubernetes extended resource name such as huawei.com/Ascend910B3 (HAMi's "
        "names: docs/export.md), or `none` for a chip that needs no accelerator")] = Field(
        _default("kubernetes_resource"),
        description="Kubernetes resource a pod requests one device by (HAMi's name, e.g. "
                    "nvidia.com/gpu, huawei.com/Ascend910B3); `none`: no accelerator resource "
                    "(CPU); empty: derived from the vendor by `autosplit export`.")

    def to_spec(self, name: str) -> ChipSpec:
        """The ``ChipSpec`` this entry describes, under ``name``."""
        fields = self.model_dump(exclude={"name", "provenance", "aliases", "description",
                                          "intra_node_latency_us", "compute_surface",
                                          "workspace_mb"})
        return ChipSpec(
            name=name, **fields, description=" ".join(self.description.split()),
            provenance={k: Provenance(source=p.source, confidence=p.confidence)
                        for k, p in self.provenance.items()},
            aliases=tuple(self.aliases),
            intra_node_latency_s=self.intra_node_latency_us * 1e-6,
            workspace_bytes=self.workspace_mb * 1e6,
            surface=self.compute_surface.to_surface() if self.compute_surface else None)


class ChipYaml(ChipFile):
    """A ``profiles/<chip>/chip.yaml``: a chip entry that names itself."""

    model_config = ConfigDict(title="autosplit chip.yaml")

    name: ChipName = Field(description="Canonical chip name used in cluster files and plans; "
                                       "the folder is its lower-case spelling.")
