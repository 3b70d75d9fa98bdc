"""Read a cluster YAML file into a validated ``Cluster``.

Everything a user can get wrong in a cluster file is caught here, with the file, the field
path (``nodes[1].devices``) and a fix, so the search and the cost model never see a
half-valid cluster. The format is documented in docs/cluster-format.md.

Resolution rules worth knowing:

- chips are looked up in the chip library (``profiles/`` plus ``chip_dirs``), then in the
  file's own ``chips:`` section, which replaces a library chip of the same name;
- a node with ``count: N`` (N > 1) becomes N nodes named ``<name>-0`` … ``<name>-(N-1)``;
  node order is file order;
- ``Node.chip`` and ``Cluster.chips`` use canonical chip names; ``Cluster.chips`` holds only
  the chips the nodes use, plus the inline ones.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autosplit.chips.library import (
    INTRA_NODE_LINKS,
    load_chip_library,
    parse_chip,
    read_yaml_mapping,
    reject_unknown_keys,
    resolve_chip,
)
from autosplit.chips.spec import ChipSpec
from autosplit.cluster.schema import CROSS_VENDOR_MODES, Cluster, Node, VendorLink
from autosplit.errors import BadInputError

__all__ = ["load_cluster", "CLUSTER_KEYS", "NODE_KEYS"]

#: Keys allowed at the top of a cluster file.
CLUSTER_KEYS: tuple[str, ...] = (
    "name", "description", "network", "nodes", "interconnect", "chips", "chip_dirs",
)
#: Keys allowed in one ``nodes:`` entry.
NODE_KEYS: tuple[str, ...] = (
    "name", "chip", "devices", "count", "intra_link", "intra_bw_gbs", "nic_bw_gbs",
    "memory_gb", "host_bw_gbs",
)
_NETWORK_KEYS: tuple[str, ...] = ("nic_bw_gbs", "latency_us")
_INTERCONNECT_KEYS: tuple[str, ...] = (
    "cross_vendor", "relay_latency_us", "relay_pipelined", "links", "collective_groups",
)
_LINK_KEYS: tuple[str, ...] = ("between", "mode", "bw_gbs", "latency_us")

_NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FORMAT_FIX = "see docs/cluster-format.md"


# ---- small typed readers ---------------------------------------------------------------


def _mapping(value: Any, *, file: str, field: str, example: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadInputError(f"expected a mapping, got {_kind(value)}", file=file, field=field,
                            fix=f"write it as `{example}`")
    return value


def _list(value: Any, *, file: str, field: str, example: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadInputError(f"expected a list, got {_kind(value)}", file=file, field=field,
                            fix=f"write it as `{example}`")
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def _number(value: Any, *, file: str, field: str, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok and isinstance(value, str):
        try:
            value, ok = float(value), True
        except ValueError:
            ok = False
    if not ok or value != value or value in (float("inf"), float("-inf")):
        raise BadInputError(f"expected a number, got {_kind(value)}", file=file, field=field,
                            fix="write a plain number, e.g. 50 or 12.5")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "greater than 0"
        raise BadInputError(f"must be {bound}, got {value:g}", file=file, field=field,
                            fix="give a positive figure (bandwidths in GB/s per direction, "
                                "latencies in microseconds)")
    return float(value)


def _whole(value: Any, *, file: str, field: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInputError(f"expected a whole number, got {_kind(value)}", file=file,
                            field=field, fix=f"write the number of {what}, e.g. 8")
    if value <= 0:
        raise BadInputError(f"must be at least 1, got {value}", file=file, field=field,
                            fix=f"give a positive number of {what} (remove the node to leave "
                                "it out)")
    return value


def _text(value: Any, *, file: str, field: str, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"expected text, got {_kind(value)}", file=file, field=field,
                            fix=f"write it as `{example}`")
    return value.strip()


def _choice(value: Any, choices: Sequence[str], *, file: str, field: str) -> str:
    text = str(value).strip().lower() if isinstance(value, str) else ""
    if text in choices:
        return text
    near = difflib.get_close_matches(text or str(value), choices, n=1)
    hint = f"did you mean '{near[0]}'? " if near else ""
    raise BadInputError(f"unknown value {value!r}", file=file, field=field,
                        fix=hint + "use one of: " + ", ".join(choices))


# ---- sections --------------------------------------------------------------------------


def _chip_dirs(data: Mapping[str, Any], *, path: Path, file: str) -> list[Path]:
    if "chip_dirs" not in data:
        return []
    raw = _list(data["chip_dirs"], file=file, field="chip_dirs", example="chip_dirs: [./chips]")
    dirs: list[Path] = []
    for i, entry in enumerate(raw):
        field = f"chip_dirs[{i}]"
        text = _text(entry, file=file, field=field, example="./my_chips")
        directory = Path(text).expanduser()
        if not directory.is_absolute():
            directory = path.parent / directory
        if not directory.is_dir():
            raise BadInputError(f"chip directory '{directory}' does not exist", file=file,
                                field=field,
                                fix="give a directory of <chip>/chip.yaml folders, relative "
                                    "to the cluster file")
        dirs.append(directory)
    return dirs


def _with_inline_chips(data: Mapping[str, Any], library: dict[str, ChipSpec], *,
                       file: str) -> tuple[dict[str, ChipSpec], list[str]]:
    """The library with the file's ``chips:`` merged in, and the inline chips' names."""
    if "chips" not in data:
        return library, []
    raw = _mapping(data["chips"], file=file, field="chips",
                   example="chips: {MyChip: {vendor: ..., tflops_bf16: ...}}")
    merged = dict(library)
    inline: list[str] = []
    for key, body in raw.items():
        chip = parse_chip(body, file=file, field_prefix=f"chips.{key}", name=str(key))
        if chip.name.lower() in (n.lower() for n in inline):
            raise BadInputError(f"chip '{chip.name}' is defined twice", file=file,
                                field=f"chips.{key}", fix="keep one definition")
        for old in [n for n in merged if n.lower() == chip.name.lower()]:
            del merged[old]  # an inline chip replaces the library chip of that name
        labels = {label.lower() for label in (chip.name, *chip.aliases)}
        for other in merged.values():
            clash = labels & {label.lower() for label in (other.name, *other.aliases)}
            if clash:
                raise BadInputError(
                    f"name or alias '{sorted(clash)[0]}' is already used by library chip "
                    f"'{other.name}'", file=file, field=f"chips.{key}",
                    fix=f"rename the inline chip, or call it '{other.name}' to replace it")
        merged[chip.name] = chip
        inline.append(chip.name)
    return merged, inline


def _node_entries(raw_nodes: list[Any], *, library: Mapping[str, ChipSpec],
                  file: str) -> list[tuple[str, dict[str, Any], ChipSpec, int]]:
    """(field path, entry, chip, count) per ``nodes:`` entry, chips resolved."""
    out = []
    for i, entry in enumerate(raw_nodes):
        where = f"nodes[{i}]"
        body = _mapping(entry, file=file, field=where,
                        example="- {name: n0, chip: H100, devices: 8}")
        reject_unknown_keys(body, NODE_KEYS, file=file, field=where)
        for key in ("chip", "devices"):
            if key not in body:
                raise BadInputError("missing required field", file=file,
                                    field=f"{where}.{key}",
                                    fix=f"add `{key}:` (e.g. `chip: H100`, `devices: 8`)")
        chip_name = _text(body["chip"], file=file, field=f"{where}.chip", example="chip: H100")
        chip = resolve_chip(chip_name, library, file=file, field=f"{where}.chip")
        count = _whole(body.get("count", 1), file=file, field=f"{where}.count", what="nodes")
        out.append((where, body, chip, count))
    return out


def _build_nodes(entries: list[tuple[str, dict[str, Any], ChipSpec, int]], *,
                 default_nic: float | None, file: str) -> list[Node]:
    total = sum(count for *_, count in entries)
    nodes: list[Node] = []
    names: dict[str, tuple[str, bool]] = {}  # node name -> (entry path, came from count)
    for where, body, chip, count in entries:
        base = body.get("name", chip.name.lower())
        if not isinstance(base, str) or not _NODE_NAME_RE.match(base):
            raise BadInputError(f"invalid node name {base!r}", file=file, field=f"{where}.name",
                                fix="use letters, digits, '.', '_' or '-' (e.g. h100-a)")
        devices = _whole(body["devices"], file=file, field=f"{where}.devices",
                         what="devices per node")
        link = chip.intra_node_link
        if "intra_link" in body:
            link = _choice(body["intra_link"], INTRA_NODE_LINKS, file=file,
                           field=f"{where}.intra_link")
        if "intra_bw_gbs" in body:
            intra_bw = _number(body["intra_bw_gbs"], file=file, field=f"{where}.intra_bw_gbs")
        elif link != chip.intra_node_link:
            raise BadInputError(
                f"intra_link '{link}' differs from {chip.name}'s '{chip.intra_node_link}', so "
                "its bandwidth is unknown", file=file, field=f"{where}.intra_bw_gbs",
                fix="add `intra_bw_gbs:` (per direction, GB/s; PCIe 4.0 x16 is 32)")
        else:
            intra_bw = chip.intra_node_bw_gbs
        if "nic_bw_gbs" in body:
            nic = _number(body["nic_bw_gbs"], file=file, field=f"{where}.nic_bw_gbs")
        elif default_nic is not None:
            nic = default_nic
        elif total > 1:
            raise BadInputError(
                "no network bandwidth for this node, and the cluster has more than one node",
                file=file, field=f"{where}.nic_bw_gbs",
                fix="add `nic_bw_gbs:` to the node or `network: {nic_bw_gbs: ...}` at the top "
                    "(per device, per direction, GB/s; InfiniBand NDR 400 Gb/s is 50)")
        else:
            nic = 0.0  # a single node never uses the network
        memory = (_number(body["memory_gb"], file=file, field=f"{where}.memory_gb")
                  if "memory_gb" in body else None)
        host = (_number(body["host_bw_gbs"], file=file, field=f"{where}.host_bw_gbs")
                if "host_bw_gbs" in body else None)
        expanded = [base] if count == 1 else [f"{base}-{k}" for k in range(count)]
        for name in expanded:
            if name in names:
                other, other_expanded = names[name]
                after = " (after expanding `count`)" if count > 1 or other_expanded else ""
                raise BadInputError(
                    f"node name '{name}' is also used by {other}{after}",
                    file=file, field=f"{where}.name",
                    fix="give each node entry a unique `name:` (entries with `count: N` "
                        "become <name>-0 … <name>-(N-1))")
            names[name] = (where, count > 1)
            nodes.append(Node(name=name, chip=chip.name, devices=devices, intra_link=link,
                              intra_bw_gbs=intra_bw, nic_bw_gbs=nic, memory_gb=memory,
                              host_bw_gbs=host))
    return nodes


def _endpoint(value: Any, used: Mapping[str, ChipSpec], *, file: str, field: str) -> str:
    """A ``between:`` entry: a vendor or a chip of this cluster (canonical spelling)."""
    text = _text(value, file=file, field=field, example="NVIDIA")
    vendors = {c.vendor.lower(): c.vendor for c in used.values()}
    labels = {label.lower(): c.name for c in used.values() for label in (c.name, *c.aliases)}
    if text.lower() in labels:
        return labels[text.lower()]
    if text.lower() in vendors:
        return vendors[text.lower()]
    known = sorted(set(vendors.values())) + list(used)
    near = difflib.get_close_matches(text, known, n=2, cutoff=0.5)
    hint = ("did you mean " + " or ".join(f"'{n}'" for n in near) + "? ") if near else ""
    raise BadInputError(f"'{text}' is neither a vendor nor a chip of this cluster", file=file,
                        field=field, fix=hint + "use one of: " + ", ".join(known))


def _vendor_links(raw: Any, used: Mapping[str, ChipSpec], *, default_mode: str,
                  file: str) -> tuple[VendorLink, ...]:
    entries = _list(raw, file=file, field="interconnect.links",
                    example="links: [{between: [NVIDIA, Huawei], mode: rdma}]")
    vendor_of = {c.name: c.vendor for c in used.values()}
    vendor_of.update({c.vendor: c.vendor for c in used.values()})
    links: list[VendorLink] = []
    seen: dict[frozenset[str], str] = {}
    for i, entry in enumerate(entries):
        where = f"interconnect.links[{i}]"
        body = _mapping(entry, file=file, field=where,
                        example="{between: [NVIDIA, Huawei], mode: rdma, bw_gbs: 25}")
        reject_unknown_keys(body, _LINK_KEYS, file=file, field=where)
        if "between" not in body:
            raise BadInputError("missing required field", file=file, field=f"{where}.between",
                                fix="add `between: [<vendor or chip>, <vendor or chip>]`")
        pair = _list(body["between"], file=file, field=f"{where}.between",
                     example="between: [NVIDIA, Huawei]")
        if len(pair) != 2:
            raise BadInputError(f"expected exactly two names, got {len(pair)}", file=file,
                                field=f"{where}.between",
                                fix="name the two sides, e.g. `between: [NVIDIA, Huawei]`")
        a, b = (_endpoint(v, used, file=file, field=f"{where}.between[{k}]")
                for k, v in enumerate(pair))
        if (a in used) != (b in used):
            raise BadInputError(
                f"'{a}' is a {'chip' if a in used else 'vendor'} but '{b}' is a "
                f"{'chip' if b in used else 'vendor'}", file=file, field=f"{where}.between",
                fix="name two vendors (e.g. [NVIDIA, Huawei]) or two chips "
                    "(e.g. [H100, Ascend910B])")
        if vendor_of[a] == vendor_of[b] and a not in used:
            raise BadInputError(
                f"'{a}' and '{b}' are both {vendor_of[a]}: devices of one vendor use the "
                "network directly unless two chips of it are named", file=file,
                field=f"{where}.between",
                fix="remove it, pair two vendors, or name the two chips that must relay "
                    "(e.g. [H100, H20])")
        key = frozenset((a.lower(), b.lower()))
        if key in seen:
            raise BadInputError(f"the pair {a} / {b} is already described by {seen[key]}",
                                file=file, field=f"{where}.between", fix="keep one entry per pair")
        seen[key] = where
        mode = (_choice(body["mode"], CROSS_VENDOR_MODES, file=file, field=f"{where}.mode")
                if "mode" in body else default_mode)
        bw = (_number(body["bw_gbs"], file=file, field=f"{where}.bw_gbs")
              if "bw_gbs" in body else None)
        latency = (_number(body["latency_us"], file=file, field=f"{where}.latency_us")
                   if "latency_us" in body else None)
        links.append(VendorLink(a=a, b=b, mode=mode, bw_gbs=bw, latency_us=latency))
    # The first matching link wins in Cluster.link_between: chip pairs before vendor pairs.
    return tuple(sorted(links, key=lambda vl: vl.a not in used))


def _collective_groups(raw: Any, used: Mapping[str, ChipSpec], *,
                       file: str) -> tuple[frozenset[str], ...]:
    groups_raw = _list(raw, file=file, field="interconnect.collective_groups",
                       example="collective_groups: [[H100, A100]]")
    labels = {label.lower(): c.name for c in used.values() for label in (c.name, *c.aliases)}
    groups: list[frozenset[str]] = []
    for i, group in enumerate(groups_raw):
        where = f"interconnect.collective_groups[{i}]"
        members = _list(group, file=file, field=where, example="[H100, A100]")
        names: list[str] = []
        for k, member in enumerate(members):
            text = _text(member, file=file, field=f"{where}[{k}]", example="H100")
            if text.lower() not in labels:
                near = difflib.get_close_matches(text, list(used), n=2, cutoff=0.5)
                hint = ("did you mean " + " or ".join(f"'{n}'" for n in near) + "? "
                        if near else "")
                raise BadInputError(f"'{text}' is not a chip of this cluster", file=file,
                                    field=f"{where}[{k}]",
                                    fix=hint + "chips in this cluster: " + ", ".join(used))
            names.append(labels[text.lower()])
        if len(set(names)) < 2:
            raise BadInputError("a collective group needs at least two different chips",
                                file=file, field=where,
                                fix="list two or more chips whose collective libraries "
                                    "interoperate, e.g. [H100, A100]")
        groups.append(frozenset(names))
    return tuple(groups)


# ---- entry point -----------------------------------------------------------------------


def load_cluster(path: str | Path, *, chip_dirs: Sequence[Path] = ()) -> Cluster:
    """Validate the cluster file at ``path`` into a ``Cluster``.

    ``chip_dirs`` are extra chip directories (searched after ``profiles/`` and
    ``AUTOSPLIT_CHIP_PATH``, before the file's own ``chip_dirs``). Any problem raises
    ``BadInputError`` naming the file, the field and the fix.
    """
    path = Path(path)
    file = str(path)
    data = read_yaml_mapping(path, what="cluster file")
    reject_unknown_keys(data, CLUSTER_KEYS, file=file)
    name = (_text(data["name"], file=file, field="name", example="name: my-cluster")
            if "name" in data else path.stem)
    extra: dict[str, str] = {}
    if "description" in data:
        extra["description"] = " ".join(
            _text(data["description"], file=file, field="description",
                  example="description: two racks of H100").split())

    library = load_chip_library(extra_dirs=[*chip_dirs, *_chip_dirs(data, path=path,
                                                                     file=file)])
    library, inline = _with_inline_chips(data, library, file=file)

    network = _mapping(data.get("network", {}), file=file, field="network",
                       example="network: {nic_bw_gbs: 50, latency_us: 10}")
    reject_unknown_keys(network, _NETWORK_KEYS, file=file, field="network")
    default_nic = (_number(network["nic_bw_gbs"], file=file, field="network.nic_bw_gbs")
                   if "nic_bw_gbs" in network else None)
    latency_us = (_number(network["latency_us"], file=file, field="network.latency_us",
                          allow_zero=True) if "latency_us" in network else 10.0)

    if "nodes" not in data:
        raise BadInputError("missing required field", file=file, field="nodes",
                            fix="add `nodes:` with one entry per node type, e.g. "
                                "`- {name: n0, chip: H100, devices: 8}`")
    raw_nodes = _list(data["nodes"], file=file, field="nodes",
                      example="nodes: [{name: n0, chip: H100, devices: 8}]")
    if not raw_nodes:
        raise BadInputError("the cluster has no nodes", file=file, field="nodes",
                            fix="list at least one node")
    entries = _node_entries(raw_nodes, library=library, file=file)
    nodes = _build_nodes(entries, default_nic=default_nic, file=file)

    used: dict[str, ChipSpec] = {}
    for node in nodes:
        used.setdefault(node.chip, library[node.chip])
    chips = dict(used)
    for chip_name in inline:
        chips.setdefault(chip_name, library[chip_name])

    inter = _mapping(data.get("interconnect", {}), file=file, field="interconnect",
                     example="interconnect: {cross_vendor: cpu_relay}")
    reject_unknown_keys(inter, _INTERCONNECT_KEYS, file=file, field="interconnect")
    cross_vendor = (_choice(inter["cross_vendor"], CROSS_VENDOR_MODES, file=file,
                            field="interconnect.cross_vendor")
                    if "cross_vendor" in inter else "cpu_relay")
    relay_us = (_number(inter["relay_latency_us"], file=file,
                        field="interconnect.relay_latency_us", allow_zero=True)
                if "relay_latency_us" in inter else 50.0)
    pipelined = inter.get("relay_pipelined", False)
    if not isinstance(pipelined, bool):
        raise BadInputError(f"expected true or false, got {pipelined!r}", file=file,
                            field="interconnect.relay_pipelined",
                            fix="write relay_pipelined: true (chunked relay) or false")
    links = (_vendor_links(inter["links"], used, default_mode=cross_vendor, file=file)
             if "links" in inter else ())
    groups = (_collective_groups(inter["collective_groups"], used, file=file)
              if "collective_groups" in inter else ())

    return Cluster(
        name=name,
        nodes=tuple(nodes),
        chips=chips,
        cross_vendor=cross_vendor,
        vendor_links=links,
        collective_groups=groups,
        network_latency_s=latency_us / 1e6,
        relay_latency_s=relay_us / 1e6,
        relay_pipelined=pipelined,
        source_file=file,
        extra=extra,
    )
