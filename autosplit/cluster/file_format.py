"""The cluster file format, as a pydantic model.

Everything a single field can get wrong — its type, its range, an unknown key, a value outside
a fixed set — is declared here once; pydantic checks it and ``docs/schemas/cluster.schema.json``
publishes it for editors. What spans fields (chips that must exist, node names unique after
``count`` expansion, network bandwidth needed by multi-node clusters, link endpoints) is checked
in ``autosplit.cluster.load``, which turns this model into a ``Cluster``.

Sizes are bounded (``MAX_DEVICES_PER_NODE``, ``MAX_NODES``, ``MAX_DEVICES``) so that a typo such
as ``devices: 1000000000000`` is refused at once, naming the allowed range, instead of sending
the search after a trillion devices.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from autosplit.chips.chip_file import INTRA_NODE_LINKS, ChipFile
from autosplit.cluster.schema import CROSS_VENDOR_MODES
from autosplit.inputs.types import (
    NAME_PATTERN,
    NonNegative,
    Positive,
    Text,
    bounded_count,
    lower_case,
)
from autosplit.inputs.validation import Hint

__all__ = ["CLUSTER_DOC", "MAX_DEVICES_PER_NODE", "MAX_NODES", "MAX_DEVICES", "ClusterFile",
           "NodeEntry", "NetworkSection", "InterconnectSection", "LinkEntry"]

CLUSTER_DOC = "docs/cluster-format.md"

#: Accelerators in one node (one host, or one scale-up domain described as a node).
MAX_DEVICES_PER_NODE = 1024
#: Nodes in a cluster, after ``count`` expansion.
MAX_NODES = 16_384
#: Accelerators in a cluster.
MAX_DEVICES = 131_072

_BANDWIDTH = Hint("give a positive figure (bandwidths in GB/s per direction, latencies in "
                  "microseconds)")
Bandwidth = Annotated[Positive, _BANDWIDTH]
Latency = Annotated[NonNegative, _BANDWIDTH]
CrossVendorMode = Annotated[Literal[CROSS_VENDOR_MODES], BeforeValidator(lower_case)]  # type: ignore[valid-type]
IntraLink = Annotated[Literal[INTRA_NODE_LINKS], BeforeValidator(lower_case)]  # type: ignore[valid-type]
NodeName = Annotated[Text, Field(pattern=NAME_PATTERN),
                     Hint("use letters, digits, '.', '_' or '-' (e.g. h100-a)")]


_NODE = Hint("write each node as `- {name: n0, chip: H100, devices: 8}`")
_LINK = Hint("write it as `links: [{between: [NVIDIA, Huawei], mode: rdma, bw_gbs: 25}]`")
_CHIP = Hint("write it as `chips: {MyChip: {vendor: ..., tflops_bf16: ...}}` (fields as in "
             "docs/chips.md)")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkSection(_Section):
    """Defaults for the network between nodes."""

    nic_bw_gbs: Bandwidth | None = Field(
        None, description="Network bandwidth per device, GB/s per direction (InfiniBand NDR "
                          "400 Gb/s = 50).")
    latency_us: Latency = Field(10.0, description="Latency of one inter-node message, µs.")


class NodeEntry(_Section):
    """One node, or ``count`` equal nodes named ``<name>-0`` … ``<name>-(count-1)``."""

    name: NodeName | None = Field(None, description="Node name; default: the chip name in "
                                                    "lower case.")
    chip: Annotated[Text, Hint("write a chip name or alias, e.g. `chip: H100`")] = Field(
        description="Chip name or alias (case-insensitive) from the library or `chips:`.")
    devices: Annotated[bounded_count(MAX_DEVICES_PER_NODE),
                       Hint(f"give the number of accelerators in the node, 1 to "
                            f"{MAX_DEVICES_PER_NODE} (remove the node to leave it out)")] = Field(
        description="Accelerators in the node.")
    count: Annotated[bounded_count(MAX_NODES),
                     Hint(f"give the number of equal nodes, 1 to {MAX_NODES}")] = Field(
        1, description="Number of identical nodes.")
    intra_link: IntraLink | None = Field(None, description="Intra-node link kind; default: the "
                                                           "chip's.")
    intra_bw_gbs: Bandwidth | None = Field(None, description="Intra-node bandwidth per device, "
                                                             "GB/s per direction.")
    nic_bw_gbs: Bandwidth | None = Field(None, description="Network bandwidth per device; "
                                                           "default: network.nic_bw_gbs.")
    memory_gb: Annotated[Positive, Hint("give the memory per device in GB, e.g. 40")] | None = \
        Field(None, description="Per-device memory override, GB.")
    host_bw_gbs: Bandwidth | None = Field(None, description="Host<->device copy bandwidth "
                                                            "override, GB/s per direction.")


class LinkEntry(_Section):
    """How two vendors (or two chips) of this cluster reach each other."""

    between: Annotated[list[Text], Field(min_length=2, max_length=2),
                       Hint("name the two sides, e.g. `between: [NVIDIA, Huawei]`")] = Field(
        description="Two vendors, or two chips, of this cluster.")
    mode: CrossVendorMode | None = Field(None, description="cpu_relay or rdma; default: "
                                                           "interconnect.cross_vendor.")
    bw_gbs: Bandwidth | None = Field(None, description="Cap on the pair's bandwidth, GB/s per "
                                                       "direction.")
    latency_us: Bandwidth | None = Field(None, description="Per-message latency of the pair, "
                                                           "µs.")


class InterconnectSection(_Section):
    """Cross-vendor rules."""

    cross_vendor: CrossVendorMode = Field("cpu_relay", description="How two vendors' devices "
                                                                   "talk when no link matches.")
    relay_latency_us: Latency = Field(50.0, description="Extra per-message latency of the CPU "
                                                        "relay, µs.")
    relay_pipelined: StrictBool = Field(False, description="Whether the relay's three hops "
                                                           "overlap (chunked).")
    links: Annotated[list[Annotated[LinkEntry, _LINK]], _LINK] = Field(
        default_factory=list, description="Per-pair overrides.")
    collective_groups: list[Annotated[list[Text], Hint("list chips, e.g. [H100, A100]")]] = Field(
        default_factory=list, description="Chips whose collective libraries interoperate.")


class ClusterFile(_Section):
    """An autosplit cluster file: nodes of one chip type each, the network, the vendor rules."""

    model_config = ConfigDict(extra="forbid", title="autosplit cluster file")

    name: Annotated[Text, Hint("write it as `name: my-cluster`")] | None = Field(
        None, description="Cluster name; default: the file name without .yaml.")
    description: Annotated[Text, Hint("write it as `description: two racks of H100`")] | None = \
        Field(None, description="One line for people.")
    network: Annotated[NetworkSection,
                       Hint("write it as `network: {nic_bw_gbs: 50, latency_us: 10}`")] = Field(
        default_factory=NetworkSection, description="Network defaults for every node.")
    nodes: Annotated[list[Annotated[NodeEntry, _NODE]],
                     Hint("list one entry per node type, e.g. "
                          "`nodes: [{name: n0, chip: H100, devices: 8}]`")
                     ] = Field(description="The nodes, in order.",
                               json_schema_extra={"minItems": 1})
    interconnect: Annotated[InterconnectSection,
                            Hint("write it as `interconnect: {cross_vendor: cpu_relay}`")] = Field(
        default_factory=InterconnectSection, description="How different vendors meet.")
    chips: Annotated[dict[str, Annotated[ChipFile, _CHIP]], _CHIP] = Field(default_factory=dict,
                                       description="Chips defined in this file; the key is the "
                                                   "name.")
    chip_dirs: list[Annotated[Text, Hint("write a folder path, e.g. ./my_chips")]] = Field(
        default_factory=list, description="Extra chip folders, relative to this file.")
