"""Level 1 and 3 of the search tree: which device groups form the stages, in which order,
with which TP/DP degrees and micro-batch count.

Devices are grouped into *pools*: nodes with the same chip, device count, links and memory.
Nodes of a pool are interchangeable, so the search only decides *how many* of a pool's devices
form one stage (``stage_devices``) and the TP degree inside it — never which node is which.
That is the symmetry pruning: a pool of 8 identical nodes contributes a handful of shapes, not
8! orderings. A pool is either used whole or left idle (``allow_idle``), the granularity at
which "leave the slow chips out" is decided.
"""

from __future__ import annotations

from dataclasses import dataclass

from autosplit.cluster.schema import Cluster, Node
from autosplit.config import SearchConfig
from autosplit.cost.stage import StageShape
from autosplit.plan.schema import Replica

__all__ = ["Pool", "PoolOption", "find_pools", "pool_options", "stage_shapes", "divisors"]


@dataclass(frozen=True)
class Pool:
    """Interchangeable nodes: same chip, device count, links and memory."""

    index: int
    chip: str
    nodes: tuple[Node, ...]

    @property
    def devices_per_node(self) -> int:
        return self.nodes[0].devices

    @property
    def num_devices(self) -> int:
        return self.devices_per_node * len(self.nodes)


@dataclass(frozen=True, order=True)
class PoolOption:
    """How a pool is cut into stages: ``stage_devices`` devices per stage, TP ``tp``."""

    pool: int
    stage_devices: int
    tp: int
    num_stages: int

    @property
    def dp(self) -> int:
        return self.stage_devices // self.tp


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def find_pools(cluster: Cluster) -> list[Pool]:
    """Group nodes into pools, in first-appearance order (deterministic)."""
    groups: dict[tuple, list[Node]] = {}
    for node in cluster.nodes:
        key = (node.chip, node.devices, node.intra_bw_gbs, node.nic_bw_gbs,
               cluster.device_memory_bytes(node), node.host_bw_gbs)
        groups.setdefault(key, []).append(node)
    return [Pool(index=k, chip=nodes[0].chip, nodes=tuple(nodes))
            for k, nodes in enumerate(groups.values())]


def pool_options(pool: Pool, search: SearchConfig, *, max_stages: int) -> list[PoolOption]:
    """Every legal (stage size, TP) cut of the pool. TP stays inside a node; a stage is
    either a divisor-sized slice of one node or a whole number of nodes."""
    g = pool.devices_per_node
    total = pool.num_devices
    sizes = [k for k in divisors(g)] + [g * n for n in divisors(len(pool.nodes)) if n > 1]
    opts: list[PoolOption] = []
    for k in sizes:
        n_stages = total // k
        if n_stages > max_stages or n_stages < 1:
            continue
        for t in search.tp_degrees:
            if t > g or g % t or k % t:
                continue
            opts.append(PoolOption(pool=pool.index, stage_devices=k, tp=t, num_stages=n_stages))
    return opts


def _shares(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if r < extra else 0) for r in range(parts)]


def stage_shapes(pool: Pool, option: PoolOption, *, micro_batch_samples: int
                 ) -> list[StageShape]:
    """Concrete stages of one pool option: devices in node order, TP groups of consecutive
    local indices, the micro-batch split as evenly as integers allow."""
    g = pool.devices_per_node
    devices = [(node.name, i) for node in pool.nodes for i in range(g)]
    k, t = option.stage_devices, option.tp
    shapes: list[StageShape] = []
    shares = _shares(micro_batch_samples, option.dp)
    for s in range(option.num_stages):
        chunk = devices[s * k:(s + 1) * k]
        replicas = []
        for r in range(option.dp):
            grp = chunk[r * t:(r + 1) * t]
            replicas.append(Replica(node=grp[0][0], local_indices=tuple(i for _, i in grp),
                                    batch_share=shares[r]))
        shapes.append(StageShape(chip=pool.chip, tp=t, replicas=tuple(replicas)))
    return shapes
