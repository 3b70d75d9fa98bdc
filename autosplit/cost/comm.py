"""Collective and point-to-point communication times.

Formulas (docs/cost-model.md has the derivations and sources):
ring all-reduce of n bytes over d devices at bus bandwidth B with per-step latency a:
``2·(d−1)/d · n / B + 2·(d−1)·a`` (Patarasuk & Yuan 2009; NCCL's "bus bandwidth" convention).
"""

from __future__ import annotations

from autosplit.cluster.schema import Cluster, Link, Node

__all__ = ["allreduce_time", "group_bandwidth", "INTRA_NODE_LATENCY_S"]

#: Per-step latency of a collective inside a node (NVLink/IF/HCCS class links).
INTRA_NODE_LATENCY_S = 5e-6


def allreduce_time(nbytes: float, devices: int, *, bw_gbs: float, latency_s: float) -> float:
    """Ring all-reduce time; zero for a single device."""
    if devices <= 1 or nbytes <= 0:
        return 0.0
    d = devices
    return 2.0 * (d - 1) / d * nbytes / (bw_gbs * 1e9) + 2.0 * (d - 1) * latency_s


def group_bandwidth(cluster: Cluster, nodes: list[Node]) -> Link:
    """The link a collective over devices spread across ``nodes`` is bound by.

    One node: its intra-node link. Several nodes: the slowest pairwise path between them,
    since a ring is as fast as its slowest hop.
    """
    unique = list(dict.fromkeys(n.name for n in nodes))
    if len(unique) == 1:
        n = nodes[0]
        return Link("intra_node", n.intra_bw_gbs, INTRA_NODE_LATENCY_S)
    by_name = {n.name: n for n in nodes}
    worst: Link | None = None
    for a_name, b_name in zip(unique, unique[1:] + unique[:1], strict=True):
        link = cluster.link_between(by_name[a_name], by_name[b_name])
        if worst is None or link.bw_gbs < worst.bw_gbs:
            worst = link
    assert worst is not None
    return worst
