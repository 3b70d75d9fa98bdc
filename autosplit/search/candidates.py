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

__all__ = ["Pool", "PoolOption", "find_pools", "mixed_pools", "members", "pool_options",
           "stage_shapes", "mixed_replica_counts", "divisors"]


@dataclass(frozen=True)
class Pool:
    """Interchangeable nodes: same chip, device count, links and memory."""

    index: int
    chip: str
    nodes: tuple[Node, ...]
    #: For a mixed pool (data-parallel replicas of two chips that share a collective group):
    #: the nodes of each member pool, fastest chip first.
    parts: tuple[tuple[Node, ...], ...] = ()
    part_indices: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        if not self.parts:
            return self.chip
        return "+".join(dict.fromkeys(p[0].chip for p in self.parts))

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


def mixed_pools(pools: list[Pool], cluster: Cluster) -> list[Pool]:
    """Pairs of pools of different chips that may share a collective group (e.g. H100 and
    A100 over NCCL) and have the same devices per node: their devices can form stages whose
    data-parallel replicas mix the two chips, with uneven batch shares."""
    out: list[Pool] = []
    for a in pools:
        for b in pools:
            if b.index <= a.index or a.chip == b.chip:
                continue
            if a.devices_per_node != b.devices_per_node:
                continue
            if not cluster.can_share_collective(a.chip, b.chip):
                continue
            fa = cluster.chips[a.chip].peak_tflops("bf16")
            fb = cluster.chips[b.chip].peak_tflops("bf16")
            first, second = (a, b) if fa >= fb else (b, a)
            out.append(Pool(index=len(pools) + len(out), chip=first.chip,
                            nodes=first.nodes + second.nodes,
                            parts=(first.nodes, second.nodes),
                            part_indices=(first.index, second.index)))
    return out


def members(pool: Pool) -> frozenset[int]:
    """The plain pools a pool uses (itself, or both members of a mixed pool)."""
    return frozenset(pool.part_indices) if pool.parts else frozenset((pool.index,))


def _mixed_options(pool: Pool, search: SearchConfig, *, max_stages: int) -> list[PoolOption]:
    g = pool.devices_per_node
    da, db = (len(p) * g for p in pool.parts)

    def legal(k: int) -> bool:
        return (k <= g and g % k == 0) or (k > g and k % g == 0)

    opts: list[PoolOption] = []
    for n in divisors(da):
        if db % n or n > max_stages:
            continue
        ka, kb = da // n, db // n
        if not (legal(ka) and legal(kb)):
            continue
        for t in search.tp_degrees:
            if t > g or g % t or ka % t or kb % t:
                continue
            opts.append(PoolOption(pool=pool.index, stage_devices=ka + kb, tp=t, num_stages=n))
    return opts


def pool_options(pool: Pool, search: SearchConfig, *, max_stages: int) -> list[PoolOption]:
    """Every legal (stage size, TP) cut of the pool. TP stays inside a node; a stage is
    either a divisor-sized slice of one node or a whole number of nodes."""
    if pool.parts:
        return _mixed_options(pool, search, max_stages=max_stages)
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


def stage_shapes(pool: Pool, option: PoolOption, *, micro_batch_samples: int,
                 first_share: int | None = None) -> list[StageShape]:
    """Concrete stages of one pool option: devices in node order, TP groups of consecutive
    local indices, the micro-batch split as evenly as integers allow.

    For a mixed pool each stage takes its slice of both member pools; ``first_share`` is the
    number of samples each replica of the first (faster) chip gets, the rest is split evenly
    over the other chip's replicas — the uneven data-parallel split."""
    if pool.parts:
        return _mixed_shapes(pool, option, micro_batch_samples=micro_batch_samples,
                             first_share=first_share)
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
                                    batch_share=shares[r], chip=pool.chip))
        shapes.append(StageShape(chip=pool.chip, tp=t, replicas=tuple(replicas)))
    return shapes


def mixed_replica_counts(pool: Pool, option: PoolOption) -> tuple[int, int]:
    """Replicas per stage of each member of a mixed pool."""
    g = pool.devices_per_node
    ka = len(pool.parts[0]) * g // option.num_stages
    kb = len(pool.parts[1]) * g // option.num_stages
    return ka // option.tp, kb // option.tp


def _mixed_shapes(pool: Pool, option: PoolOption, *, micro_batch_samples: int,
                  first_share: int | None) -> list[StageShape]:
    g = pool.devices_per_node
    t = option.tp
    da, db = mixed_replica_counts(pool, option)
    if first_share is None:
        first_share = max(1, micro_batch_samples // (da + db))
    rest = micro_batch_samples - da * first_share
    if first_share < 1 or rest < db:
        return []
    shares = [first_share] * da + _shares(rest, db)
    part_devices = [[(node.name, i) for node in nodes for i in range(g)] for nodes in pool.parts]
    chip_of = {node.name: node.chip for nodes in pool.parts for node in nodes}
    shapes: list[StageShape] = []
    for s in range(option.num_stages):
        chunk = (part_devices[0][s * da * t:(s + 1) * da * t]
                 + part_devices[1][s * db * t:(s + 1) * db * t])
        replicas = []
        for r in range(da + db):
            grp = chunk[r * t:(r + 1) * t]
            replicas.append(Replica(node=grp[0][0], local_indices=tuple(i for _, i in grp),
                                    batch_share=shares[r], chip=chip_of[grp[0][0]]))
        shapes.append(StageShape(chip=pool.chip, tp=t, replicas=tuple(replicas)))
    return shapes
