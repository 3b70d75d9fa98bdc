"""Cluster files: the shipped examples, the links they resolve to, and every bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from autosplit.chips.library import CHIP_PATH_ENV
from autosplit.cluster.load import CLUSTER_KEYS, NODE_KEYS, load_cluster
from autosplit.cluster.schema import Cluster, Node
from autosplit.errors import BadInputError

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "experiments" / "clusters"
SHIPPED = sorted(CLUSTERS.glob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_env_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CHIP_PATH_ENV, raising=False)


def _write(tmp_path: Path, data: Any, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False),
                    encoding="utf-8")
    return path


def _two_nodes(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "network": {"nic_bw_gbs": 50},
        "nodes": [{"name": "a", "chip": "H100", "devices": 8},
                  {"name": "b", "chip": "Ascend910B", "devices": 8}],
    }
    data.update(extra)
    return data


def _cluster(name: str) -> Cluster:
    return load_cluster(CLUSTERS / name)


# ---- shipped clusters ------------------------------------------------------------------


def test_all_promised_clusters_are_shipped() -> None:
    names = {p.name for p in SHIPPED}
    assert {"two_vendor_h100_910b.yaml", "two_type_3to1.yaml", "three_vendor_128.yaml",
            "homogeneous_a100x16.yaml", "small_2type.yaml", "four_type_1024.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_cluster_loads(path: Path) -> None:
    cluster = load_cluster(path)
    assert cluster.nodes and cluster.num_devices > 0
    assert set(cluster.chips) == set(cluster.chip_types())
    assert len({n.name for n in cluster.nodes}) == len(cluster.nodes)
    assert path.read_text(encoding="utf-8").startswith("#"), "needs a comment header"
    assert cluster.source_file == str(path)


def test_shipped_cluster_sizes() -> None:
    three = _cluster("three_vendor_128.yaml")
    assert three.num_devices >= 128
    assert len({c.vendor for c in three.chips.values()}) == 3
    big = _cluster("four_type_1024.yaml")
    assert big.num_devices == 1024 and len(big.chip_types()) == 4
    assert _cluster("homogeneous_a100x16.yaml").chip_types() == ["A100"]
    small = _cluster("small_2type.yaml")
    assert small.num_devices == 8 and len(small.nodes) == 2


def test_two_type_cluster_speed_ratio() -> None:
    cluster = _cluster("two_type_3to1.yaml")
    fast, slow = (cluster.chips[c].tflops_bf16 for c in cluster.chip_types())
    assert 3.1 < fast / slow < 3.3
    assert cluster.can_share_collective("H100", "A100")


def test_count_expands_in_file_order() -> None:
    cluster = _cluster("three_vendor_128.yaml")
    names = [n.name for n in cluster.nodes]
    assert names[:9] == [f"h100-{i}" for i in range(8)] + ["mi300x-0"]
    assert names[-1] == "ascend-3"
    assert cluster.node("ascend-0").nic_bw_gbs == 25 and cluster.node("h100-0").nic_bw_gbs == 50


# ---- links -----------------------------------------------------------------------------


def _expected_relay_bw(cluster: Cluster, a: Node, b: Node) -> float:
    host_a = a.host_bw_gbs or cluster.chips[a.chip].host_bw_gbs
    host_b = b.host_bw_gbs or cluster.chips[b.chip].host_bw_gbs
    net = min(a.nic_bw_gbs, b.nic_bw_gbs)
    if cluster.relay_pipelined:  # chunked: the slowest hop bounds the relay
        return min(host_a, host_b, net)
    return 1.0 / (1.0 / host_a + 1.0 / net + 1.0 / host_b)  # hops one after the other


def test_relay_pipelined_switch(tmp_path) -> None:
    src = (CLUSTERS / "two_vendor_h100_910b.yaml").read_text()
    piped = tmp_path / "piped.yaml"
    piped.write_text(src.replace("interconnect:", "interconnect:\n  relay_pipelined: true", 1))
    serial, chunked = _cluster("two_vendor_h100_910b.yaml"), load_cluster(piped)
    assert chunked.relay_pipelined and not serial.relay_pipelined
    a, b = serial.node("h100"), serial.node("ascend")
    assert serial.link_between(a, b).bw_gbs < chunked.link_between(a, b).bw_gbs
    assert chunked.link_between(a, b).bw_gbs == pytest.approx(_expected_relay_bw(chunked, a, b))


def test_links_two_vendor() -> None:
    cluster = _cluster("two_vendor_h100_910b.yaml")
    h100, ascend = cluster.node("h100"), cluster.node("ascend")
    inside = cluster.link_between(h100, h100)
    assert inside.kind == "intra_node" and inside.bw_gbs == cluster.chips["H100"].intra_node_bw_gbs
    relay = cluster.link_between(h100, ascend)
    assert relay.kind == "cpu_relay"
    assert relay.bw_gbs == pytest.approx(_expected_relay_bw(cluster, h100, ascend))
    assert relay.latency_s == pytest.approx(cluster.network_latency_s + cluster.relay_latency_s)
    assert cluster.link_between(ascend, h100).kind == "cpu_relay"


def test_links_same_vendor() -> None:
    for name in ("two_type_3to1.yaml", "homogeneous_a100x16.yaml", "small_2type.yaml"):
        cluster = _cluster(name)
        a, b = cluster.nodes
        link = cluster.link_between(a, b)
        assert link.kind == "same_vendor"
        assert link.bw_gbs == min(a.nic_bw_gbs, b.nic_bw_gbs)


@pytest.mark.parametrize("name", ["three_vendor_128.yaml", "four_type_1024.yaml"])
def test_links_three_vendor(name: str) -> None:
    cluster = _cluster(name)
    first = {cluster.chips[n.chip].vendor: n for n in reversed(cluster.nodes)}
    nv, amd, hw = first["NVIDIA"], first["AMD"], first["Huawei"]
    rdma = cluster.link_between(nv, amd)
    assert rdma.kind == "rdma"
    assert rdma.bw_gbs == min(nv.nic_bw_gbs, amd.nic_bw_gbs, cluster.vendor_links[0].bw_gbs)
    for a, b in ((nv, hw), (amd, hw), (hw, amd)):
        relay = cluster.link_between(a, b)
        assert relay.kind == "cpu_relay"
        assert relay.bw_gbs == pytest.approx(_expected_relay_bw(cluster, a, b))
    other_nv = next(n for n in cluster.nodes if n.chip == nv.chip and n.name != nv.name)
    assert cluster.link_between(nv, other_nv).kind == "same_vendor"


def test_rdma_falls_back_to_relay_without_peer_memory(tmp_path: Path) -> None:
    data = {"network": {"nic_bw_gbs": 50},
            "nodes": [{"name": "a", "chip": "H100", "devices": 8},
                      {"name": "b", "chip": "BI-V100", "devices": 8}],
            "interconnect": {"cross_vendor": "rdma"}}
    cluster = load_cluster(_write(tmp_path, data))
    assert not cluster.chips["BI-V100"].supports_rdma
    assert cluster.link_between(*cluster.nodes).kind == "cpu_relay"


def test_chip_pair_link_beats_vendor_pair_link(tmp_path: Path) -> None:
    links = [{"between": ["NVIDIA", "Huawei"], "mode": "cpu_relay"},
             {"between": ["h100", "910b"], "mode": "rdma", "bw_gbs": 20}]
    cluster = load_cluster(_write(tmp_path, _two_nodes(interconnect={"links": links})))
    assert (cluster.vendor_links[0].a, cluster.vendor_links[0].b) == ("H100", "Ascend910B")
    link = cluster.link_between(*cluster.nodes)
    assert link.kind == "rdma" and link.bw_gbs == 20


# ---- good but unusual input ------------------------------------------------------------


def test_defaults_and_overrides(tmp_path: Path) -> None:
    data = {"nodes": [{"chip": "h100", "devices": 6, "memory_gb": 40, "intra_link": "pcie",
                       "intra_bw_gbs": 32, "host_bw_gbs": 20}]}
    cluster = load_cluster(_write(tmp_path, data, "single.yaml"))
    (node,) = cluster.nodes
    assert cluster.name == "single" and node.name == "h100" and node.chip == "H100"
    assert node.devices == 6  # not a power of two: fine
    assert node.intra_link == "pcie" and node.intra_bw_gbs == 32
    assert cluster.device_memory_bytes(node) == 40e9 and node.host_bw_gbs == 20
    assert node.nic_bw_gbs == 0.0  # one node: no network needed
    assert cluster.cross_vendor == "cpu_relay"


def test_node_defaults_come_from_the_chip(tmp_path: Path) -> None:
    cluster = load_cluster(_write(tmp_path, _two_nodes()))
    a, b = cluster.nodes
    assert a.intra_link == "nvlink" and a.intra_bw_gbs == cluster.chips["H100"].intra_node_bw_gbs
    assert b.intra_link == "hccs" and a.memory_gb is None and a.host_bw_gbs is None
    assert a.nic_bw_gbs == b.nic_bw_gbs == 50


def test_inline_chip_and_used_chips_only(tmp_path: Path) -> None:
    chip = {"vendor": "Acme", "tflops_bf16": 100, "tflops_fp16": 100, "tflops_fp32": 25,
            "memory_gb": 32, "memory_bw_gbs": 1000, "intra_node_link": "pcie",
            "intra_node_bw_gbs": 32, "collective_library": "ACCL", "supports_rdma": False}
    data = _two_nodes(chips={"Acme1": chip, "Spare": chip})
    data["nodes"][1]["chip"] = "acme1"
    cluster = load_cluster(_write(tmp_path, data))
    assert list(cluster.chips) == ["H100", "Acme1", "Spare"]
    assert cluster.nodes[1].chip == "Acme1"
    assert cluster.link_between(*cluster.nodes).kind == "cpu_relay"


def test_inline_chip_replaces_library_chip(tmp_path: Path) -> None:
    base = yaml.safe_load((REPO / "profiles" / "h100" / "chip.yaml").read_text())
    base.pop("name")
    data = _two_nodes(chips={"H100": {**base, "compute_efficiency": 0.42}})
    cluster = load_cluster(_write(tmp_path, data))
    assert cluster.chips["H100"].compute_efficiency == 0.42


def test_chip_dirs_from_argument_and_file(tmp_path: Path) -> None:
    chip = yaml.safe_load((REPO / "profiles" / "a100" / "chip.yaml").read_text())
    for folder in ("argdir", "filedir"):
        name = f"Chip{folder}"
        target = tmp_path / folder / name.lower() / "chip.yaml"
        target.parent.mkdir(parents=True)
        target.write_text(yaml.safe_dump({**chip, "name": name, "aliases": []}))
    data = {"chip_dirs": ["./filedir"], "network": {"nic_bw_gbs": 25},
            "nodes": [{"name": "x", "chip": "Chipargdir", "devices": 4},
                      {"name": "y", "chip": "chipfiledir", "devices": 4}]}
    cluster = load_cluster(_write(tmp_path, data), chip_dirs=[tmp_path / "argdir"])
    assert cluster.chip_types() == ["Chipargdir", "Chipfiledir"]


# ---- bad input -------------------------------------------------------------------------

BAD_CLUSTERS: list[tuple[str, Any, str | None, list[str]]] = [
    # (id, file content, expected field, expected words in message or fix)
    ("yaml-syntax", "name: x\nnodes: [\n  - {chip: H100\n", None, ["line", "YAML syntax"]),
    ("not-mapping", "- a\n- b\n", None, ["mapping"]),
    ("empty-file", "", None, ["empty"]),
    ("missing-nodes", {"name": "x"}, "nodes", ["missing", "nodes:"]),
    ("nodes-not-list", {"nodes": {"chip": "H100"}}, "nodes", ["expected a list"]),
    ("no-nodes", {"nodes": []}, "nodes", ["no nodes"]),
    ("unknown-chip", {"nodes": [{"chip": "H1000", "devices": 8}]}, "nodes[0].chip",
     ["unknown chip 'H1000'", "H100", "chips:"]),
    ("zero-devices", {"nodes": [{"chip": "H100", "devices": 0}]}, "nodes[0].devices",
     ["at least 1"]),
    ("negative-devices", _two_nodes(nodes=[{"name": "a", "chip": "H100", "devices": 8},
                                           {"name": "b", "chip": "A100", "devices": -2}]),
     "nodes[1].devices", ["at least 1"]),
    ("fractional-devices", {"nodes": [{"chip": "H100", "devices": 7.5}]}, "nodes[0].devices",
     ["whole number"]),
    ("missing-devices", {"nodes": [{"chip": "H100"}]}, "nodes[0].devices", ["missing"]),
    ("missing-bandwidth", {"nodes": [{"name": "a", "chip": "H100", "devices": 8},
                                     {"name": "b", "chip": "A100", "devices": 8}]},
     "nodes[0].nic_bw_gbs", ["more than one node", "network: {nic_bw_gbs"]),
    ("missing-bandwidth-count", {"nodes": [{"chip": "H100", "devices": 8, "count": 2}]},
     "nodes[0].nic_bw_gbs", ["more than one node"]),
    ("negative-bandwidth", _two_nodes(network={"nic_bw_gbs": -1}), "network.nic_bw_gbs",
     ["greater than 0"]),
    ("duplicate-names", _two_nodes(nodes=[{"name": "a", "chip": "H100", "devices": 8},
                                          {"name": "a", "chip": "A100", "devices": 8}]),
     "nodes[1].name", ["'a'", "nodes[0]", "unique"]),
    ("duplicate-after-count", _two_nodes(nodes=[{"name": "g", "chip": "H100", "devices": 8,
                                                 "count": 3},
                                                {"name": "g-2", "chip": "A100", "devices": 8}]),
     "nodes[1].name", ["'g-2'", "after expanding `count`"]),
    ("default-names-clash", _two_nodes(nodes=[{"chip": "H100", "devices": 8},
                                              {"chip": "h100", "devices": 8}]),
     "nodes[1].name", ["'h100'"]),
    ("bad-cross-vendor", _two_nodes(interconnect={"cross_vendor": "rdmaa"}),
     "interconnect.cross_vendor", ["did you mean 'rdma'", "cpu_relay"]),
    ("bad-link-mode", _two_nodes(interconnect={"links": [{"between": ["NVIDIA", "Huawei"],
                                                         "mode": "pigeon"}]}),
     "interconnect.links[0].mode", ["cpu_relay, rdma"]),
    ("unknown-top-key", _two_nodes(interconect={}), "interconect",
     ["unknown key", "did you mean 'interconnect'"]),
    ("unknown-node-key", _two_nodes(nodes=[{"name": "a", "chip": "H100", "device": 8}]),
     "nodes[0].device", ["did you mean 'devices'"]),
    ("unknown-network-key", _two_nodes(network={"nic_bw": 50}), "network.nic_bw",
     ["did you mean 'nic_bw_gbs'"]),
    ("unknown-link-key", _two_nodes(interconnect={"links": [{"between": ["NVIDIA", "Huawei"],
                                                             "bandwidth": 3}]}),
     "interconnect.links[0].bandwidth", ["unknown key"]),
    ("unknown-vendor", _two_nodes(interconnect={"links": [{"between": ["NVIDA", "Huawei"]}]}),
     "interconnect.links[0].between[0]", ["'NVIDIA'"]),
    ("mixed-pair", _two_nodes(interconnect={"links": [{"between": ["H100", "Huawei"]}]}),
     "interconnect.links[0].between", ["two vendors", "two chips"]),
    ("same-vendor-pair", _two_nodes(nodes=[{"name": "a", "chip": "H100", "devices": 8},
                                           {"name": "b", "chip": "A100", "devices": 8}],
                                    interconnect={"links": [{"between": ["NVIDIA", "NVIDIA"]}]}),
     "interconnect.links[0].between", ["unless two chips of it are named"]),
    ("group-unknown-chip", _two_nodes(interconnect={"collective_groups": [["H100", "A100"]]}),
     "interconnect.collective_groups[0][1]", ["not a chip of this cluster"]),
    ("link-without-bw", {"nodes": [{"chip": "H100", "devices": 8, "intra_link": "pcie"}]},
     "nodes[0].intra_bw_gbs", ["bandwidth is unknown", "intra_bw_gbs"]),
    ("unknown-intra-link", {"nodes": [{"chip": "H100", "devices": 8, "intra_link": "nvlnik",
                                       "intra_bw_gbs": 1}]},
     "nodes[0].intra_link", ["did you mean 'nvlink'"]),
    ("bad-inline-chip", _two_nodes(chips={"X1": {"vendor": "Acme"}}), "chips.X1.tflops_bf16",
     ["missing required field"]),
    ("missing-chip-dir", _two_nodes(chip_dirs=["./nowhere"]), "chip_dirs[0]",
     ["does not exist"]),
    ("duplicate-key", "nodes: []\nnodes: []\n", None, ["given twice"]),
]


@pytest.mark.parametrize("content,field,words", [c[1:] for c in BAD_CLUSTERS],
                         ids=[c[0] for c in BAD_CLUSTERS])
def test_bad_cluster(tmp_path: Path, content: Any, field: str | None,
                     words: list[str]) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(BadInputError) as info:
        load_cluster(path)
    err = info.value
    assert err.file == str(path)
    assert err.field == field
    assert err.fix
    text = err.render()
    assert "cluster.yaml" in text
    for word in words:
        assert word in text, (word, text)


def test_missing_cluster_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as info:
        load_cluster(tmp_path / "nope.yaml")
    assert "not found" in info.value.message and info.value.fix


def test_documented_keys() -> None:
    doc = (REPO / "docs" / "cluster-format.md").read_text(encoding="utf-8")
    for key in (*CLUSTER_KEYS, *NODE_KEYS, "cross_vendor", "relay_latency_us", "links",
                "collective_groups", "between", "latency_us"):
        assert f"`{key}`" in doc, key


def test_named_chip_pair_of_one_vendor_relays(tmp_path) -> None:
    # Two processes sharing one GPU cannot use NCCL: the cluster names the pair, and the
    # boundary between them goes through the CPU relay although both chips are NVIDIA.
    cluster = _cluster("h200_mps_3to1.yaml")
    fast, slow = cluster.node("fast"), cluster.node("slow")
    link = cluster.link_between(fast, slow)
    assert link.kind == "cpu_relay"
