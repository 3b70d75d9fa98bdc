"""Write the chip and cluster files of an MPS experiment: H200 "chips" at given SM shares.

One physical H200 (or each GPU of a two-GPU host) becomes a chip of a chosen speed by the CUDA
MPS SM limit of the process that uses it. The run scripts beside this file choose the shares at
run time, so the chip files are written here instead of being committed one per share: peaks
are the card's datasheet figures times the share (``profile-chip --write-chip`` then replaces
the efficiencies with measured ones), and the chip is named by its share, ``h200-mps45-mix``,
which is how ``mps_rank_env.py`` finds each rank's percentage.

    python3 experiments/runtime/mps_chips.py trio --out DIR --suffix mix --shares 90 45 15
    python3 experiments/runtime/mps_chips.py trio --out DIR --suffix mix --shares 90 45 15 \\
        --relay relay.json
    python3 experiments/runtime/mps_chips.py pair --out DIR --suffix x2 --shares 100 33 \\
        --link-bw-gbs 150 --link-latency-us 20

``trio`` writes ``DIR/chips/<chip>/chip.yaml`` for every share and ``DIR/cluster.yaml``: one
card shared by the clients, a third of its memory each, a CPU relay (gloo) between every pair
(NCCL cannot join two processes on one GPU): with ``--relay``, the figures ``relay_bench.py``
measured (``RelayFigures.from_bench``), else datasheet-like defaults. ``pair`` writes the chips
of a two-GPU host (a whole card each) and three clusters: ``cluster_pipeline.yaml`` (one GPU
per node, the chips meet only at a stage boundary), ``cluster_dp.yaml`` (the same two nodes in
one collective group, so one stage can have a replica on each) and ``cluster_tp.yaml`` (one
node of both GPUs at the first share, for a tensor-parallel stage); the link between the GPUs
is the measured one. Bad arguments stop with exit code 2 and a message naming the argument.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["ChipSpec", "Link", "RelayFigures", "chip_name", "chip_yaml", "pair_clusters",
           "trio_cluster", "write_pair", "write_trio"]

#: NVIDIA H200 SXM datasheet figures (dense), which every share scales.
H200_TFLOPS_BF16 = 989.0
H200_TFLOPS_FP32 = 67.0
H200_MEMORY_GB = 141.0
H200_MEMORY_BW_GBS = 4800.0
H200_NVLINK_GBS = 450.0
#: gloo send/recv of a 64 MiB host tensor on the H200 machine (shared/reference/gpu-emulation.md)
GLOO_RELAY_GBS = 3.4
#: pageable host<->device copies of the MPS clients, as in experiments/clusters/h200_mps_*.yaml
PAGEABLE_HOST_GBS = 15.0


@dataclass(frozen=True)
class ChipSpec:
    """One MPS chip: its SM share, the memory it plans with and how it reaches its peers."""

    share: int
    suffix: str
    memory_gb: float
    shared_card: bool

    @property
    def name(self) -> str:
        return chip_name(self.share, self.suffix)


@dataclass(frozen=True)
class Link:
    """The measured link between the two GPUs: bandwidth per direction and latency."""

    bw_gbs: float
    latency_us: float


@dataclass(frozen=True)
class RelayFigures:
    """The CPU relay between two clients as the cluster file writes it: each node's host copy
    bandwidth, the network's bandwidth and the per-message latency of the pair."""

    host_bw_gbs: float = PAGEABLE_HOST_GBS
    nic_bw_gbs: float = GLOO_RELAY_GBS
    latency_us: float = 100.0

    @classmethod
    def from_bench(cls, path: Path) -> RelayFigures:
        """From ``relay_bench.py``'s JSON. The cost model adds the hops' times (device→host,
        network, host→device); the host bandwidth is the one whose two copies take what the
        measured ``d2h`` and ``h2d`` take, and the network the rest of the measured whole
        path, so the three add up to the ``relay`` fit; its latency is the pair's."""
        fits = json.loads(path.read_text())["fits"]
        d2h, h2d, relay = (fits[k]["beta_gbs"] for k in ("d2h", "h2d", "relay"))
        host = 2.0 / (1.0 / d2h + 1.0 / h2d)
        rest = 1.0 / relay - 2.0 / host
        if rest > 0:
            net = 1.0 / rest
        else:  # the whole path beat its two copies (they overlapped): gloo's own figure for
            # the network, the copies whatever is left of the path (or nearly free)
            net = fits["gloo"]["beta_gbs"]
            host = 2.0 / (1.0 / relay - 1.0 / net) if 1.0 / relay > 1.0 / net else 1e3
        return cls(host_bw_gbs=round(host, 3), nic_bw_gbs=round(net, 3),
                   latency_us=round(max(fits["relay"]["alpha_us"], 1.0), 1))


def chip_name(share: int, suffix: str) -> str:
    """``h200-mps<share>-<suffix>``: the share is part of the name, see mps_rank_env.py."""
    return f"h200-mps{share}-{suffix}"


def chip_yaml(spec: ChipSpec) -> dict:
    """The chip entry: datasheet peaks times the share; efficiencies until measured."""
    frac = spec.share / 100.0
    where = ("sharing the card with the other clients, which it reaches through host memory "
             "(gloo)" if spec.shared_card else
             "alone on its GPU, reaching the other GPU over NVLink (NCCL)")
    scaled = f"NVIDIA H200 datasheet x {spec.share}% SM share"
    return {
        "name": spec.name,
        "vendor": "NVIDIA",
        "description": f"H200 SXM behind CUDA MPS at {spec.share}% of the SMs, {where}.",
        "aliases": [spec.name.upper()],
        "tflops_bf16": round(H200_TFLOPS_BF16 * frac, 1),
        "tflops_fp16": round(H200_TFLOPS_BF16 * frac, 1),
        "tflops_fp32": round(H200_TFLOPS_FP32 * frac, 1),
        "compute_efficiency": 0.9,
        "memory_gb": spec.memory_gb,
        "memory_bw_gbs": H200_MEMORY_BW_GBS,
        "memory_efficiency": 0.5 if spec.shared_card else 0.9,
        "intra_node_link": "pcie" if spec.shared_card else "nvlink",
        "intra_node_bw_gbs": GLOO_RELAY_GBS if spec.shared_card else H200_NVLINK_GBS,
        "collective_library": "gloo" if spec.shared_card else "NCCL",
        "host_bw_gbs": 25.0 if spec.shared_card else 54.0,
        "supports_rdma": not spec.shared_card,
        "provenance": {
            "tflops_bf16": {"source": f"{scaled} (989 TFLOPS dense)", "confidence": "medium"},
            "tflops_fp16": {"source": f"{scaled} (989 TFLOPS dense)", "confidence": "medium"},
            "tflops_fp32": {"source": f"{scaled} (67 TFLOPS)", "confidence": "low"},
            "compute_efficiency": {"source": "placeholder until profile-chip measures it",
                                   "confidence": "low"},
            "memory_gb": {"source": ("the card's 141 GB over the clients sharing it"
                                     if spec.shared_card else "NVIDIA H200 datasheet"),
                          "confidence": "medium"},
            "memory_bw_gbs": {"source": "NVIDIA H200 datasheet (4.8 TB/s)",
                              "confidence": "high"},
            "memory_efficiency": {"source": "placeholder until profile-chip measures it",
                                  "confidence": "low"},
        },
    }


def trio_cluster(specs: list[ChipSpec], name: str,
                 relay: RelayFigures = RelayFigures()) -> dict:
    """One card shared by the clients: one node each, a CPU relay between every pair."""
    nodes = [{"name": f"mps{s.share}", "chip": s.name, "devices": 1,
              "host_bw_gbs": relay.host_bw_gbs} for s in specs]
    links = [{"between": [a.name, b.name], "mode": "cpu_relay",
              "latency_us": relay.latency_us}
             for i, a in enumerate(specs) for b in specs[i + 1:]]
    return {"name": name,
            "description": "one H200 split by CUDA MPS into clients at "
                           + ", ".join(f"{s.share}%" for s in specs)
                           + " of the SMs, gloo (CPU relay) between them",
            "network": {"nic_bw_gbs": relay.nic_bw_gbs, "latency_us": 100},
            "nodes": nodes, "interconnect": {"links": links}}


def pair_clusters(fast: ChipSpec, slow: ChipSpec, link: Link, name: str) -> dict[str, dict]:
    """The three clusters of a two-GPU host (module docstring); GPU 0 is the first node."""
    network = {"nic_bw_gbs": link.bw_gbs, "latency_us": link.latency_us}
    nodes = [{"name": "gpu0", "chip": fast.name, "devices": 1},
             {"name": "gpu1", "chip": slow.name, "devices": 1}]
    what = f"two H200s under CUDA MPS at {fast.share}% (GPU 0) and {slow.share}% (GPU 1)"
    return {
        "pipeline": {"name": f"{name}-pipeline", "network": network, "nodes": nodes,
                     "description": f"{what}; the chips meet only at a stage boundary"},
        "dp": {"name": f"{name}-dp", "network": network, "nodes": nodes,
               "interconnect": {"collective_groups": [[fast.name, slow.name]]},
               "description": f"{what}; one NCCL group, so a stage may have a replica on each"},
        "tp": {"name": f"{name}-tp",
               "nodes": [{"name": "gpu01", "chip": fast.name, "devices": 2,
                          "intra_link": "nvlink", "intra_bw_gbs": link.bw_gbs}],
               "description": f"two H200s under CUDA MPS, both at {fast.share}%, one node: "
                              "a tensor-parallel stage over both"},
    }


def _dump(data: dict, path: Path, header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {header}\n" + yaml.safe_dump(data, sort_keys=False))


def _write_chips(specs: list[ChipSpec], out: Path, header: str) -> None:
    for s in specs:
        _dump(chip_yaml(s), out / "chips" / s.name / "chip.yaml", header)


def write_trio(out: Path, suffix: str, shares: list[int],
               relay: RelayFigures = RelayFigures()) -> None:
    """Chips and cluster of one card shared by ``len(shares)`` clients."""
    specs = [ChipSpec(p, suffix, round(H200_MEMORY_GB / len(shares), 1), True) for p in shares]
    listed = " ".join(map(str, shares))
    header = f"Written by experiments/runtime/mps_chips.py trio --shares {listed}"
    _write_chips(specs, out, header)
    if relay != RelayFigures():
        header += " --relay (measured: relay_bench.py)"
    _dump(trio_cluster(specs, f"h200-mps-{'-'.join(map(str, shares))}", relay),
          out / "cluster.yaml", header)


def write_pair(out: Path, suffix: str, shares: list[int], link: Link) -> None:
    """Chips and the three clusters of a two-GPU host."""
    fast, slow = (ChipSpec(p, suffix, H200_MEMORY_GB, False) for p in shares)
    header = (f"Written by experiments/runtime/mps_chips.py pair --shares {shares[0]} "
              f"{shares[1]} --link-bw-gbs {link.bw_gbs} --link-latency-us {link.latency_us}")
    _write_chips([fast, slow], out, header)
    for kind, data in pair_clusters(fast, slow, link, f"h200x2-{shares[0]}-{shares[1]}").items():
        _dump(data, out / f"cluster_{kind}.yaml", header)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layout", choices=("trio", "pair"))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--suffix", required=True)
    parser.add_argument("--shares", required=True, nargs="+", type=int)
    parser.add_argument("--link-bw-gbs", type=float, default=0.0)
    parser.add_argument("--link-latency-us", type=float, default=0.0)
    parser.add_argument("--relay", type=Path, default=None,
                        help="relay_bench.py's JSON: the measured CPU relay (trio)")
    ns = parser.parse_args(argv)
    if not ns.suffix.isalnum() or not ns.suffix.islower():
        return _fail(f"--suffix {ns.suffix!r}: use lower-case letters and digits, e.g. mix")
    bad = [p for p in ns.shares if not 1 <= p <= 100]
    if bad:
        return _fail(f"--shares {bad}: an SM share is a percentage from 1 to 100")
    if len(set(ns.shares)) != len(ns.shares):
        return _fail(f"--shares {ns.shares}: each chip needs its own share (the chip is named "
                     "by it)")
    if ns.layout == "trio":
        if len(ns.shares) < 2:
            return _fail("--shares: trio needs two or more shares, e.g. --shares 90 45 15")
        relay = RelayFigures()
        if ns.relay is not None:
            try:
                relay = RelayFigures.from_bench(ns.relay)
            except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
                return _fail(f"--relay {ns.relay}: not relay_bench.py's output ({exc})")
        write_trio(ns.out, ns.suffix, ns.shares, relay)
        return 0
    if len(ns.shares) != 2:
        return _fail("--shares: pair needs two shares, GPU 0's then GPU 1's, e.g. 100 33")
    if not (ns.link_bw_gbs > 0 and ns.link_latency_us >= 0):
        return _fail("--link-bw-gbs must be positive and --link-latency-us not negative "
                     "(the measured link between the GPUs)")
    write_pair(ns.out, ns.suffix, ns.shares, Link(ns.link_bw_gbs, ns.link_latency_us))
    return 0


if __name__ == "__main__":
    sys.exit(main())
