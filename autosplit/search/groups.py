"""Level 1 of the search tree: which devices a stage may draw from.

Devices are grouped into *pools*: nodes with the same chip, device count, links and memory.
Devices of a pool are interchangeable, so the search only ever counts how many of a pool's
devices a stage takes — never which ones (``placement`` picks concrete devices at the end).
That symmetry is what keeps 16,384 devices as cheap to plan as 16: the search's work grows
with the number of pools, not of devices.

A stage draws its devices from one *device group*: a single pool, or two pools whose chips
share a collective library (declared in the cluster file, e.g. H100 and A100 over NCCL), so
that their replicas can form one data-parallel group with uneven batch shares. The two pools
may differ in devices per node: a tensor-parallel degree of the stage must then fit in a node
of each (the menu checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

from autosplit.cluster.schema import Cluster, Node

__all__ = ["Pool", "DeviceGroup", "find_pools", "device_groups", "halved_pools"]


@dataclass(frozen=True)
class Pool:
    """Interchangeable nodes: same chip, device count, links and memory."""

    index: int
    chip: str
    nodes: tuple[Node, ...]
    memory_bytes: float

    @property
    def devices_per_node(self) -> int:
        return self.nodes[0].devices

    @property
    def num_devices(self) -> int:
        return self.devices_per_node * len(self.nodes)

    @property
    def node(self) -> Node:
        """A representative node (all nodes of a pool are alike)."""
        return self.nodes[0]


@dataclass(frozen=True)
class DeviceGroup:
    """The pools one stage may draw its replicas from (one, or two sharing a collective)."""

    index: int
    pools: tuple[int, ...]
    chips: tuple[str, ...]

    @property
    def label(self) -> str:
        return "+".join(self.chips)

    @property
    def mixed(self) -> bool:
        return len(self.pools) > 1


def find_pools(cluster: Cluster) -> list[Pool]:
    """Group nodes into pools, in first-appearance order (deterministic)."""
    groups: dict[tuple, list[Node]] = {}
    for node in cluster.nodes:
        key = (node.chip, node.devices, node.intra_bw_gbs, node.nic_bw_gbs,
               cluster.device_memory_bytes(node), node.host_bw_gbs)
        groups.setdefault(key, []).append(node)
    return [Pool(index=k, chip=nodes[0].chip, nodes=tuple(nodes),
                 memory_bytes=cluster.device_memory_bytes(nodes[0]))
            for k, nodes in enumerate(groups.values())]


def device_groups(pools: list[Pool], cluster: Cluster, *, mixed: bool) -> list[DeviceGroup]:
    """Every pool alone, then (with ``mixed``) every pair of pools of two chips that may
    share a collective group, faster chip first."""
    out = [DeviceGroup(index=p.index, pools=(p.index,), chips=(p.chip,)) for p in pools]
    if not mixed:
        return out
    for a in pools:
        for b in pools:
            if b.index <= a.index or a.chip == b.chip:
                continue
            if not cluster.can_share_collective(a.chip, b.chip):
                continue
            fa = cluster.chips[a.chip].peak_tflops("bf16")
            fb = cluster.chips[b.chip].peak_tflops("bf16")
            first, second = (a, b) if fa >= fb else (b, a)
            out.append(DeviceGroup(index=len(out), pools=(first.index, second.index),
                                   chips=(first.chip, second.chip)))
    return out


def halved_pools(pools: list[Pool]) -> list[Pool]:
    """Every pool of two or more nodes cut into two (its first half of the nodes, and the
    rest), each half a pool of its own. The search gives each device group one contiguous
    run of stages; with a pool in halves, its chip can hold a run at each end of the
    pipeline — a slow chip in the middle, a fast one holding both the embedding and the
    head, say — at the price that no stage spans the cut."""
    out: list[Pool] = []
    for p in pools:
        halves = ([p.nodes] if len(p.nodes) < 2
                  else [p.nodes[:(len(p.nodes) + 1) // 2], p.nodes[(len(p.nodes) + 1) // 2:]])
        for nodes in halves:
            out.append(Pool(index=len(out), chip=p.chip, nodes=nodes,
                            memory_bytes=p.memory_bytes))
    return out
