"""Read a cluster YAML file into a validated ``Cluster``.

Everything a user can get wrong in a cluster file is caught here, with the file, the field
path (``nodes[1].devices``) and a fix, so the search and the cost model never see a
half-valid cluster. The format is documented in docs/cluster-format.md. What one field can get
wrong (type, range, unknown key, a value outside a fixed set) is declared in the pydantic model
``autosplit.cluster.file_format.ClusterFile``; this module checks what spans fields and files.

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
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from autosplit.chips.chip_file import ChipFile
from autosplit.chips.library import chip_spec, load_chip_library, resolve_chip
from autosplit.chips.spec import ChipSpec
from autosplit.cluster.file_format import (
    CLUSTER_DOC,
    MAX_DEVICES,
    MAX_NODES,
    ClusterFile,
    LinkEntry,
    NodeEntry,
)
from autosplit.cluster.schema import Cluster, Node, VendorLink
from autosplit.errors import BadInputError
from autosplit.inputs.files import read_input_text
from autosplit.inputs.validation import validate
from autosplit.inputs.yaml_file import MAX_YAML_BYTES, parse_yaml_mapping

__all__ = ["load_cluster", "cluster_fingerprint", "CLUSTER_KEYS", "NODE_KEYS"]

#: Keys allowed at the top of a cluster file.
CLUSTER_KEYS: tuple[str, ...] = tuple(ClusterFile.model_fields)
#: Keys allowed in one ``nodes:`` entry.
NODE_KEYS: tuple[str, ...] = tuple(NodeEntry.model_fields)

_FORMAT_FIX = f"see {CLUSTER_DOC} for the file format"


def cluster_fingerprint(text: str) -> str:
    """Stable hash of a cluster file's content (a plan records it to recognise its cluster)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---- sections --------------------------------------------------------------------------


def _chip_dirs(entries: Sequence[str], *, path: Path, file: str) -> list[Path]:
    dirs: list[Path] = []
    for i, text in enumerate(entries):
        directory = Path(text).expanduser()
        if not directory.is_absolute():
            directory = path.parent / directory
        if not directory.is_dir():
            raise BadInputError(f"chip directory '{directory}' does not exist", file=file,
                                field=f"chip_dirs[{i}]",
                                fix="give a directory of <chip>/chip.yaml folders, relative "
                                    "to the cluster file")
        dirs.append(directory)
    return dirs


def _with_inline_chips(entries: Mapping[str, ChipFile], library: dict[str, ChipSpec], *,
                       file: str) -> tuple[dict[str, ChipSpec], list[str]]:
    """The library with the file's ``chips:`` merged in, and the inline chips' names."""
    merged = dict(library)
    inline: list[str] = []
    for key, entry in entries.items():
        chip = chip_spec(entry, file=file, field_prefix=f"chips.{key}", name=str(key))
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


def _resolved_nodes(entries: Sequence[NodeEntry], *, library: Mapping[str, ChipSpec],
                    file: str) -> list[tuple[str, NodeEntry, ChipSpec]]:
    """(field path, entry, chip) per ``nodes:`` entry, chips resolved, sizes bounded."""
    if not entries:
        raise BadInputError("the cluster has no nodes", file=file, field="nodes",
                            fix="list at least one node, e.g. "
                                "`- {name: n0, chip: H100, devices: 8}`")
    out = [(f"nodes[{i}]", entry, resolve_chip(entry.chip, library, file=file,
                                                field=f"nodes[{i}].chip"))
           for i, entry in enumerate(entries)]
    nodes = sum(entry.count for entry in entries)
    devices = sum(entry.count * entry.devices for entry in entries)
    if nodes > MAX_NODES:
        raise BadInputError(f"the cluster has {nodes:,} nodes after expanding `count`; at most "
                            f"{MAX_NODES:,} are supported (allowed range 1 to {MAX_NODES:,})",
                            file=file, field="nodes",
                            fix="check the `count:` values (a typo adds digits)")
    if devices > MAX_DEVICES:
        raise BadInputError(f"the cluster has {devices:,} devices; at most {MAX_DEVICES:,} are "
                            f"supported (allowed range 1 to {MAX_DEVICES:,})", file=file,
                            field="nodes", fix="check the `devices:` and `count:` values")
    return out


def _intra(entry: NodeEntry, chip: ChipSpec, *, where: str, file: str) -> tuple[str, float]:
    """The node's intra-node link and its bandwidth (the chip's unless overridden)."""
    link = entry.intra_link or chip.intra_node_link
    if entry.intra_bw_gbs is not None:
        return link, entry.intra_bw_gbs
    if link != chip.intra_node_link:
        raise BadInputError(
            f"intra_link '{link}' differs from {chip.name}'s '{chip.intra_node_link}', so "
            "its bandwidth is unknown", file=file, field=f"{where}.intra_bw_gbs",
            fix="add `intra_bw_gbs:` (per direction, GB/s; PCIe 4.0 x16 is 32)")
    return link, chip.intra_node_bw_gbs


def _build_nodes(entries: list[tuple[str, NodeEntry, ChipSpec]], *,
                 default_nic: float | None, file: str) -> list[Node]:
    total = sum(entry.count for _, entry, _ in entries)
    nodes: list[Node] = []
    names: dict[str, tuple[str, bool]] = {}  # node name -> (entry path, came from count)
    for where, entry, chip in entries:
        base = entry.name or chip.name.lower()
        link, intra_bw = _intra(entry, chip, where=where, file=file)
        if entry.nic_bw_gbs is not None:
            nic = entry.nic_bw_gbs
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
        expanded = [base] if entry.count == 1 else [f"{base}-{k}" for k in range(entry.count)]
        for name in expanded:
            if name in names:
                other, other_expanded = names[name]
                after = " (after expanding `count`)" if entry.count > 1 or other_expanded else ""
                raise BadInputError(
                    f"node name '{name}' is also used by {other}{after}",
                    file=file, field=f"{where}.name",
                    fix="give each node entry a unique `name:` (entries with `count: N` "
                        "become <name>-0 … <name>-(N-1))")
            names[name] = (where, entry.count > 1)
            nodes.append(Node(name=name, chip=chip.name, devices=entry.devices,
                              intra_link=link, intra_bw_gbs=intra_bw, nic_bw_gbs=nic,
                              memory_gb=entry.memory_gb, host_bw_gbs=entry.host_bw_gbs,
                              intra_latency_s=chip.intra_node_latency_s))
    return nodes


def _endpoint(text: str, used: Mapping[str, ChipSpec], *, file: str, field: str) -> str:
    """A ``between:`` entry: a vendor or a chip of this cluster (canonical spelling)."""
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


def _vendor_links(entries: Sequence[LinkEntry], used: Mapping[str, ChipSpec], *,
                  default_mode: str, file: str) -> tuple[VendorLink, ...]:
    vendor_of = {c.name: c.vendor for c in used.values()}
    vendor_of.update({c.vendor: c.vendor for c in used.values()})
    links: list[VendorLink] = []
    seen: dict[frozenset[str], str] = {}
    for i, entry in enumerate(entries):
        where = f"interconnect.links[{i}]"
        a, b = (_endpoint(v, used, file=file, field=f"{where}.between[{k}]")
                for k, v in enumerate(entry.between))
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
        links.append(VendorLink(a=a, b=b, mode=entry.mode or default_mode, bw_gbs=entry.bw_gbs,
                                latency_us=entry.latency_us))
    # The first matching link wins in Cluster.link_between: chip pairs before vendor pairs.
    return tuple(sorted(links, key=lambda vl: vl.a not in used))


def _collective_groups(groups_raw: Sequence[Sequence[str]], used: Mapping[str, ChipSpec], *,
                       file: str) -> tuple[frozenset[str], ...]:
    labels = {label.lower(): c.name for c in used.values() for label in (c.name, *c.aliases)}
    groups: list[frozenset[str]] = []
    for i, members in enumerate(groups_raw):
        where = f"interconnect.collective_groups[{i}]"
        names: list[str] = []
        for k, text in enumerate(members):
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
    text = read_input_text(path, what="cluster file", limit=MAX_YAML_BYTES)
    data = parse_yaml_mapping(text, file=file, what="cluster file", fix=_FORMAT_FIX)
    spec = validate(ClusterFile, data, file=file, doc=CLUSTER_DOC)
    extra = {"description": " ".join(spec.description.split())} if spec.description else {}

    given_dirs = [Path(d).expanduser() for d in chip_dirs]
    library = load_chip_library(
        extra_dirs=[*given_dirs, *_chip_dirs(spec.chip_dirs, path=path, file=file)])
    library, inline = _with_inline_chips(spec.chips, library, file=file)

    entries = _resolved_nodes(spec.nodes, library=library, file=file)
    nodes = _build_nodes(entries, default_nic=spec.network.nic_bw_gbs, file=file)

    used: dict[str, ChipSpec] = {}
    for node in nodes:
        used.setdefault(node.chip, library[node.chip])
    chips = dict(used)
    for chip_name in inline:
        chips.setdefault(chip_name, library[chip_name])

    inter = spec.interconnect
    return Cluster(
        name=spec.name or path.stem,
        nodes=tuple(nodes),
        chips=chips,
        cross_vendor=inter.cross_vendor,
        vendor_links=_vendor_links(inter.links, used, default_mode=inter.cross_vendor,
                                   file=file),
        collective_groups=_collective_groups(inter.collective_groups, used, file=file),
        network_latency_s=spec.network.latency_us / 1e6,
        relay_latency_s=inter.relay_latency_us / 1e6,
        relay_pipelined=inter.relay_pipelined,
        source_file=file,
        extra=extra,
        fingerprint=cluster_fingerprint(text),
        chip_dirs=tuple(str(d.resolve()) for d in given_dirs),
    )
