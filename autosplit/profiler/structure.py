"""What decides a unit's cost, as a key that survives edits of the model file.

A measured row must stay usable when the model file changes in ways that do not change the
cost (a comment, a reworded error message, a refactored forward with the same operations),
and must stop being used when the work itself changes (another hidden size, another head
count, an extra projection). The model fingerprint hashes the file's bytes, so it fails the
first test; ``layer_kind`` hashes the module classes under the name the model file was imported
as, which depends on where the checkout lies, so a profile taken on another machine never
matches it.

The structure key is written from what ingestion measured of the unit on the meta device: its
kind (``pre``/``block``/``post``), parameter count and bytes, forward and backward FLOPs (the
GEMM and attention shapes), bytes in and out, the bytes it keeps for its backward, and its TP
collectives. Sequence length and dtype are columns of their own. The key is readable
(``name=value`` pairs), so a mismatch can say which figure changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from autosplit.model.types import LayerProfile

__all__ = ["UnitStructure", "unit_structure", "parse_structure", "structure_changes",
           "same_work"]

#: Fields that scale with the dtype's size: a unit measured in another dtype differs only here.
_BYTE_FIELDS = frozenset({"param_bytes", "in_bytes", "out_bytes", "act_bytes"})
#: Order of the fields in the key (also the order in which changes are named).
_FIELDS: tuple[str, ...] = ("kind", "params", "param_bytes", "fwd_flops", "bwd_flops",
                            "in_bytes", "out_bytes", "act_bytes", "tp_collectives")


@dataclass(frozen=True)
class UnitStructure:
    """The cost-deciding figures of one unit at micro-batch 1 (see module docstring)."""

    kind: str
    params: int
    param_bytes: int
    fwd_flops: int
    bwd_flops: int
    in_bytes: int
    out_bytes: int
    act_bytes: int
    tp_collectives: int

    @property
    def key(self) -> str:
        """``kind=block params=… …``: the text stored in the profile's ``structure`` column."""
        return " ".join(f"{name}={getattr(self, name)}" for name in _FIELDS)


def unit_structure(layer: LayerProfile) -> UnitStructure:
    """The structure of an ingested unit."""
    return UnitStructure(kind=layer.kind, params=int(layer.params),
                         param_bytes=int(layer.param_bytes), fwd_flops=round(layer.fwd_flops),
                         bwd_flops=round(layer.bwd_flops), in_bytes=round(layer.input_bytes),
                         out_bytes=round(layer.output_bytes),
                         act_bytes=round(layer.activation_bytes),
                         tp_collectives=int(layer.tp_collectives))


def parse_structure(key: str) -> dict[str, str]:
    """The ``name=value`` pairs of a stored key (unknown or malformed parts are kept as
    given, so a hand-edited key still compares unequal rather than failing)."""
    pairs: dict[str, str] = {}
    for part in key.split():
        name, sep, value = part.partition("=")
        pairs[name if sep else part] = value
    return pairs


def structure_changes(stored: str, current: str) -> list[str]:
    """What differs between a stored key and the unit's current one, e.g.
    ``["params 50356224 → 52453376"]`` (empty when they are equal)."""
    old: Mapping[str, str] = parse_structure(stored)
    new: Mapping[str, str] = parse_structure(current)
    names = [*_FIELDS, *sorted((set(old) | set(new)) - set(_FIELDS))]
    return [f"{n} {old.get(n, '-')} → {new.get(n, '-')}" for n in names
            if old.get(n) != new.get(n)]


def same_work(stored: str, current: str) -> bool:
    """Whether two keys differ at most in their byte counts: the same unit in another dtype."""
    old, new = parse_structure(stored), parse_structure(current)
    return all(old.get(n) == new.get(n) for n in set(old) | set(new) if n not in _BYTE_FIELDS)
