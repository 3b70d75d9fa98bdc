"""Range checks of numeric command-line options, before any work starts.

Why: typer parses ``--time-limit nan`` or ``--max-stages -1`` as valid numbers, and a value
outside what the search means then surfaces late, as a false reason ("stopped before any
candidate", exit 3) or not at all (NaN disables a comparison). Every numeric option is checked
here against the range it is documented to take, and refused with exit 2 naming the option,
the allowed range and an example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autosplit.errors import BadInputError

__all__ = ["Range", "check_range", "check_ranges", "SEARCH_RANGES", "LIST_HIGH",
           "check_tp_degrees"]


@dataclass(frozen=True)
class Range:
    """The values an option accepts: ``low``/``high`` (``None``: unbounded), each end
    inclusive unless ``*_open``; ``example`` is a value to suggest in the fix."""

    low: float | None
    high: float | None
    example: str
    low_open: bool = False
    high_open: bool = False

    def text(self) -> str:
        """``[1, 1024]``, ``(0, 604800]``, ``[0, ∞)`` — interval notation, as in the docs."""
        lo = "-∞" if self.low is None else _bound(self.low)
        hi = "∞" if self.high is None else _bound(self.high)
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{left}{lo}, {hi}{right}"

    def holds(self, value: float) -> bool:
        """Whether ``value`` is finite and inside the range."""
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high
                                         or (self.high_open and value == self.high))


def _bound(value: float) -> str:
    """``1048576`` rather than ``1.04858e+06``: whole ends in full up to 8 digits, as the docs
    write them; others (``1e+09``, ``0.5``) short."""
    if float(value).is_integer() and abs(value) < 1e8:
        return str(int(value))
    return f"{value:g}"


def check_range(value: float, *, option: str, allowed: Range) -> float:
    """``value`` unchanged if ``allowed`` holds it; else ``BadInputError`` (exit 2)."""
    if isinstance(value, bool) or not allowed.holds(float(value)):
        shown = value if not isinstance(value, float) else f"{value:g}"
        raise BadInputError(f"{shown} is outside the allowed range {allowed.text()}",
                            field=option, fix=f"pass {option} {allowed.example}")
    return value


def check_ranges(values: dict[str, float], ranges: dict[str, Range]) -> None:
    """``check_range`` for each ``option -> value``, in the order given."""
    for option, value in values.items():
        check_range(value, option=option, allowed=ranges[option])


#: The ranges of ``autosplit search``'s numeric options (docs/exit-codes.md lists them).
SEARCH_RANGES: dict[str, Range] = {
    "--seq-len": Range(1, 1_048_576, "2048"),
    "--global-batch": Range(1, 16_777_216, "64"),
    "--memory-reserve-gb": Range(0, 1024, "2"),
    "--time-limit": Range(0, 604_800, "60", low_open=True),
    "--budget": Range(0, 1e9, "4000", low_open=True),
    "--max-stages": Range(0, 4096, "8 (or 0: no limit)"),
    "--grad-bucket-mb": Range(0, 1_000_000, "25 (DDP's default)", low_open=True),
}

#: Bounds of the list options (``--tp 1,2,4``, ``--micro-batch-sizes 1,2``).
LIST_HIGH: dict[str, int] = {"--tp": 1024, "--micro-batch-sizes": 65_536}


def check_tp_degrees(degrees: tuple[int, ...], node_devices: dict[str, int], *,
                     option: str = "--tp") -> None:
    """Every TP degree asked for must fit in at least one node: a TP group lives inside one
    node, so a larger degree can never be used and would only show up later as a false
    reason for finding no plan. (A degree need not divide the node: TP 2 on nodes of 3 leaves
    the third device to a smaller group.)"""
    largest = max(node_devices.values(), default=0)
    for t in degrees:
        if t > largest:
            sizes = ", ".join(f"{name}: {n}" for name, n in sorted(node_devices.items()))
            usable = [2**k for k in range(11) if 2**k <= largest]
            raise BadInputError(f"TP degree {t} is larger than every node ({sizes}); a "
                                "TP group must fit inside one node", field=option,
                                fix=f"pass {option} with values from "
                                    + ",".join(map(str, usable)))
