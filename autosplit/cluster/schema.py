"""The cluster as the cost model sees it: nodes of one chip type, and the links between them.

The YAML loader (``autosplit.cluster.load``) validates a user's file into these frozen
dataclasses; everything downstream trusts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from autosplit.chips.spec import ChipSpec

__all__ = [
    "CROSS_VENDOR_MODES",
    "Node",
    "VendorLink",
    "Link",
    "Cluster",
    "DeviceRef",
]

#: How two vendors' devices reach each other (see docs/cost-model.md).
CROSS_VENDOR_MODES: tuple[str, ...] = ("cpu_relay", "rdma")


@dataclass(frozen=True)
class DeviceRef:
    """One device: the node it sits in and its local index there."""

    node: str
    local_index: int

    def __str__(self) -> str:
        return f"{self.node}:{self.local_index}"


@dataclass(frozen=True)
class Node:
    """A host with ``devices`` accelerators of one chip type.

    ``intra_bw_gbs`` is the per-direction bandwidth of the intra-node link between two devices
    (NVLink, Infinity Fabric, HCCS, MLU-Link, PCIe); ``nic_bw_gbs`` the per-direction network
    bandwidth available to each device when it talks to another node.
    """

    name: str
    chip: str
    devices: int
    intra_link: str
    intra_bw_gbs: float
    nic_bw_gbs: float
    #: Optional per-node memory override (GB per device); ``None`` uses the chip's figure.
    memory_gb: float | None = None
    #: Per-direction host↔device bandwidth; ``None`` uses the chip's figure.
    host_bw_gbs: float | None = None
    #: Fixed cost of one intra-node message (α), from the chip's ``intra_node_latency_us``.
    intra_latency_s: float = 5e-6


@dataclass(frozen=True)
class VendorLink:
    """How devices of two vendors (or two chips) talk across the collective-library divide."""

    a: str
    b: str
    mode: str  # one of CROSS_VENDOR_MODES
    bw_gbs: float | None = None
    latency_us: float | None = None


@dataclass(frozen=True)
class Link:
    """A resolved point-to-point path between two devices, as the cost model uses it.

    ``kind`` is one of ``intra_node``, ``same_vendor``, ``rdma``, ``cpu_relay``.
    ``bw_gbs`` is the effective end-to-end bandwidth (for the CPU relay: the slowest of the
    two PCIe copies and the network hop, as the copies are chunked and pipelined), and
    ``latency_s`` the fixed cost per message.
    """

    kind: str
    bw_gbs: float
    latency_s: float

    def transfer_time(self, nbytes: float) -> float:
        """Seconds to move ``nbytes`` over this link, one message."""
        if nbytes <= 0:
            return 0.0
        return self.latency_s + nbytes / (self.bw_gbs * 1e9)


@dataclass(frozen=True)
class Cluster:
    """The whole fleet: nodes, the chips they hold, and the cross-vendor rules."""

    name: str
    nodes: tuple[Node, ...]
    chips: dict[str, ChipSpec]
    #: Default cross-vendor mode when no ``VendorLink`` matches.
    cross_vendor: str = "cpu_relay"
    vendor_links: tuple[VendorLink, ...] = ()
    #: Sets of chip names whose collective libraries interoperate (may share a TP/DP group).
    collective_groups: tuple[frozenset[str], ...] = ()
    #: Latency of one inter-node message (seconds).
    network_latency_s: float = 10e-6
    #: Extra latency the CPU relay adds per message (two host staging copies).
    relay_latency_s: float = 50e-6
    #: Whether the CPU relay streams a message in chunks so its three hops overlap (then the
    #: slowest hop bounds it); by default the hops run one after the other, as a plain
    #: device→host copy, host send/receive and host→device copy do.
    relay_pipelined: bool = False
    source_file: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    #: Hash of the cluster file's content: a plan records it to recognise its cluster.
    fingerprint: str = ""
    #: Chip directories given besides the file's own ``chip_dirs`` (``--chips-dir``): chip
    #: files and measured profiles were looked up there too, so a plan records them.
    chip_dirs: tuple[str, ...] = ()

    # ---- lookups -----------------------------------------------------------------------

    @property
    def num_devices(self) -> int:
        return sum(n.devices for n in self.nodes)

    @cached_property
    def _nodes_by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> Node:
        """The node called ``name`` (``KeyError`` if none); a dict lookup, since the cost
        model asks for nodes millions of times on large clusters."""
        return self._nodes_by_name[name]

    def chip_of(self, node_name: str) -> ChipSpec:
        return self.chips[self.node(node_name).chip]

    def chip_types(self) -> list[str]:
        """Chip names in first-appearance order (deterministic)."""
        seen: list[str] = []
        for n in self.nodes:
            if n.chip not in seen:
                seen.append(n.chip)
        return seen

    def nodes_of_chip(self, chip: str) -> list[Node]:
        return [n for n in self.nodes if n.chip == chip]

    def device_memory_bytes(self, node: Node) -> float:
        gb = node.memory_gb if node.memory_gb is not None else self.chips[node.chip].memory_gb
        return gb * 1e9

    def can_share_collective(self, chip_a: str, chip_b: str) -> bool:
        """Same chip, or listed together in ``collective_groups``."""
        if chip_a == chip_b:
            return True
        return any(chip_a in g and chip_b in g for g in self.collective_groups)

    # ---- links -------------------------------------------------------------------------

    def _vendor_link(self, chip_a: str, chip_b: str) -> VendorLink | None:
        va, vb = self.chips[chip_a].vendor, self.chips[chip_b].vendor
        for vl in self.vendor_links:
            keys = {vl.a.lower(), vl.b.lower()}
            if {chip_a.lower(), chip_b.lower()} == keys or {va.lower(), vb.lower()} == keys:
                return vl
            if chip_a == chip_b and keys == {chip_a.lower()}:
                return vl
        return None

    def link_between(self, node_a: Node, node_b: Node) -> Link:
        """The path a stage-boundary activation takes from a device of ``node_a`` to one of
        ``node_b``. Same node: the intra-node link. Same collective domain across nodes: the
        NIC. Otherwise the cross-vendor mode: direct RDMA (the network hop) or the CPU relay
        (device→host PCIe, network, host→device PCIe: the three hops add up, or, with
        ``relay_pipelined``, overlap so the slowest bounds the bandwidth; each message pays the
        staging latency)."""
        if node_a.name == node_b.name:
            return Link("intra_node", node_a.intra_bw_gbs, node_a.intra_latency_s)
        # Across nodes the path depends only on what the key names, so the many node pairs
        # of a large cluster share a few results (collectives ask for every ring neighbour).
        key = (node_a.chip, node_b.chip, node_a.nic_bw_gbs, node_b.nic_bw_gbs,
               node_a.host_bw_gbs, node_b.host_bw_gbs)
        hit = self._links.get(key)
        if hit is None:
            hit = self._links[key] = self._across_nodes(node_a, node_b)
        return hit

    @cached_property
    def _links(self) -> dict[tuple, Link]:
        return {}

    def _across_nodes(self, node_a: Node, node_b: Node) -> Link:
        """``link_between`` for two different nodes; reads only the nodes' chips, NIC and
        host bandwidths (``link_between``'s cache key)."""
        net_bw = min(node_a.nic_bw_gbs, node_b.nic_bw_gbs)
        vl = self._vendor_link(node_a.chip, node_b.chip)
        named = vl is not None and {vl.a.lower(), vl.b.lower()} == {
            node_a.chip.lower(), node_b.chip.lower()}
        # Two chips of one vendor talk over the network directly, unless the cluster names
        # that chip pair explicitly (e.g. two processes sharing one GPU cannot use NCCL).
        if not named and (self.can_share_collective(node_a.chip, node_b.chip) or (
                self.chips[node_a.chip].vendor == self.chips[node_b.chip].vendor)):
            return Link("same_vendor", net_bw, self.network_latency_s)
        mode = vl.mode if vl else self.cross_vendor
        if vl and vl.bw_gbs:
            net_bw = min(net_bw, vl.bw_gbs)
        chip_a, chip_b = self.chips[node_a.chip], self.chips[node_b.chip]
        if mode == "rdma" and chip_a.supports_rdma and chip_b.supports_rdma:
            lat = vl.latency_us * 1e-6 if vl and vl.latency_us else self.network_latency_s
            return Link("rdma", net_bw, lat)
        host_a = node_a.host_bw_gbs or chip_a.host_bw_gbs
        host_b = node_b.host_bw_gbs or chip_b.host_bw_gbs
        lat = (vl.latency_us * 1e-6 if vl and vl.latency_us else
               self.network_latency_s + self.relay_latency_s)
        if self.relay_pipelined:
            bw = min(host_a, net_bw, host_b)
        else:  # device→host, network, host→device in sequence: the times add up
            bw = 1.0 / (1.0 / host_a + 1.0 / net_bw + 1.0 / host_b)
        return Link("cpu_relay", bw, lat)
