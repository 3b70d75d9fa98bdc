"""Idle devices as a count per node group, not a list of names.

Why: a plan on a large cluster may leave 1,792 devices idle, and listing ``node:index`` for
each buries the summary. Nodes expanded from one cluster entry with ``count: N`` are named
``<name>-0`` … ``<name>-(N-1)`` (``autosplit.cluster.load``); they form one group here, shown
as ``<name>-*`` with its idle devices and nodes. A handful of idle devices are still named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["IdleGroup", "idle_groups", "idle_summary"]

#: At most this many idle devices are listed by name.
_NAMED = 8
_EXPANDED = re.compile(r"^(?P<base>.+)-\d+$")


@dataclass(frozen=True)
class IdleGroup:
    """Idle devices of one node group: its label, device and node counts."""

    label: str
    devices: int
    nodes: int


def _group_of(node: str, expanded: set[str]) -> str:
    match = _EXPANDED.match(node)
    return f"{match['base']}-*" if match and match["base"] in expanded else node


def idle_groups(idle_devices: tuple[str, ...] | list[str]) -> list[IdleGroup]:
    """Groups in first-appearance order; a name ``base-k`` joins ``base-*`` when at least two
    nodes share the base (one such node keeps its own name)."""
    nodes = [d.rsplit(":", 1)[0] for d in idle_devices]
    bases: dict[str, set[str]] = {}
    for node in nodes:
        match = _EXPANDED.match(node)
        if match:
            bases.setdefault(match["base"], set()).add(node)
    expanded = {base for base, members in bases.items() if len(members) > 1}
    devices: dict[str, int] = {}
    members: dict[str, set[str]] = {}
    for node in nodes:
        label = _group_of(node, expanded)
        devices[label] = devices.get(label, 0) + 1
        members.setdefault(label, set()).add(node)
    return [IdleGroup(label, devices[label], len(members[label])) for label in devices]


def idle_summary(idle_devices: tuple[str, ...] | list[str]) -> str:
    """``a100:0, a100:1`` for a few; ``h100-* 1,536 on 192 nodes, a100 4 on 1 node`` else."""
    if len(idle_devices) <= _NAMED:
        return ", ".join(idle_devices)
    return ", ".join(f"{g.label} {g.devices:,} on {g.nodes:,} node{'s' if g.nodes > 1 else ''}"
                     for g in idle_groups(idle_devices))
