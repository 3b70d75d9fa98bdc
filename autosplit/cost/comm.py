"""Collective and point-to-point communication times.

Formulas (docs/cost-model.md has the derivations and sources):
ring all-reduce of n bytes over d devices at bus bandwidth B with per-step latency a:
``2·(d−1)/d · n / B + 2·(d−1)·a`` (Patarasuk & Yuan 2009; NCCL's "bus bandwidth" convention).
"""

from __future__ import annotations

import numpy as np

from autosplit.cluster.schema import Cluster, Link, Node

__all__ = ["allreduce_time", "exposed_grad_reduce", "group_bandwidth", "INTRA_NODE_LATENCY_S"]

#: Per-step latency of a collective inside a node (NVLink/IF/HCCS class links).
INTRA_NODE_LATENCY_S = 5e-6


def allreduce_time(nbytes: float, devices: int, *, bw_gbs: float, latency_s: float) -> float:
    """Ring all-reduce time; zero for a single device."""
    if devices <= 1 or nbytes <= 0:
        return 0.0
    d = devices
    return 2.0 * (d - 1) / d * nbytes / (bw_gbs * 1e9) + 2.0 * (d - 1) * latency_s


def exposed_grad_reduce(grad_bytes, devices: int, *, link: Link, bucket_bytes: float,
                        overlap: bool, window_s=0.0):
    """Seconds of a data-parallel gradient all-reduce left after the last backward.

    DDP and Megatron-LM cut the gradients into buckets of ``bucket_bytes`` and all-reduce each
    bucket as soon as the backward has produced it, one bucket after another, during the
    last micro-batch's backward (``window_s``; earlier micro-batches only accumulate). With
    ``n`` buckets produced evenly over the window, each all-reduce taking ``t_b = T / n``
    (``T``: all buckets' ring time, each paying its own latency), the last bucket finishes
    ``max(t_b, T − window·(1 − 1/n))`` after the backward ends. One bucket, or no overlap:
    ``T``. Scalars or numpy arrays (broadcast), so the search can price ranges in bulk.
    """
    g = np.asarray(grad_bytes, dtype=float)
    if devices <= 1:
        return np.zeros_like(g) if np.ndim(g) else 0.0
    d = devices
    n = np.maximum(1.0, np.ceil(g / bucket_bytes)) if bucket_bytes > 0 else np.ones_like(g)
    total = 2.0 * (d - 1) / d * g / (link.bw_gbs * 1e9) + n * 2.0 * (d - 1) * link.latency_s
    if overlap:
        exposed = np.maximum(total / n, total - np.asarray(window_s, dtype=float) * (1 - 1 / n))
    else:
        exposed = total
    out = np.where(g > 0, exposed, 0.0)
    return out if np.ndim(out) else float(out)


def group_bandwidth(cluster: Cluster, nodes: list[Node]) -> Link:
    """The link a collective over devices spread across ``nodes`` is bound by.

    One node: its intra-node link. Several nodes: the slowest pairwise path between them,
    since a ring is as fast as its slowest hop.
    """
    unique = list(dict.fromkeys(n.name for n in nodes))
    if len(unique) == 1:
        n = nodes[0]
        return Link("intra_node", n.intra_bw_gbs, n.intra_latency_s)
    by_name = {n.name: n for n in nodes}
    worst: Link | None = None
    for a_name, b_name in zip(unique, unique[1:] + unique[:1], strict=True):
        link = cluster.link_between(by_name[a_name], by_name[b_name])
        if worst is None or link.bw_gbs < worst.bw_gbs:
            worst = link
    assert worst is not None
    return worst
