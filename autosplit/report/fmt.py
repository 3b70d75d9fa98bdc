"""Number formatting shared by the HTML report, the charts and the terminal summary.

One place decides how a time, a size or a ratio is written, so the page, the SVG files and
the terminal never disagree about the same figure (tests compare them against the plan JSON).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "fmt_seconds",
    "fmt_bytes",
    "fmt_pct",
    "fmt_rate",
    "fmt_ratio",
    "fmt_count",
    "fmt_signed_pct",
    "layer_span",
    "fmt_layout",
]


def fmt_seconds(s: float) -> str:
    """``1.23 s``, ``45.6 ms`` or ``789 µs``: three significant digits."""
    a = abs(s)
    if a >= 1.0:
        return f"{s:.3g} s" if a < 100 else f"{s:.0f} s"
    if a >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    if a == 0:
        return "0 s"
    return f"{s * 1e6:.3g} µs"


def fmt_bytes(b: float) -> str:
    """Decimal units (GB = 1e9 bytes), as chip datasheets and the cost model count them."""
    a = abs(b)
    if a >= 1e9:
        return f"{b / 1e9:.1f} GB"
    if a >= 1e6:
        return f"{b / 1e6:.1f} MB"
    if a >= 1e3:
        return f"{b / 1e3:.1f} kB"
    return f"{b:.0f} B"


def fmt_pct(x: float, digits: int = 1) -> str:
    """A fraction as a percentage: ``0.456 -> 45.6%``."""
    return f"{x * 100:.{digits}f}%"


def fmt_signed_pct(x: float) -> str:
    """A relative error with its sign: ``+4.2%`` / ``-3.0%``."""
    return f"{x * 100:+.1f}%"


def fmt_rate(x: float) -> str:
    """A throughput with a k/M suffix: ``12.3k``, ``1.45M``."""
    a = abs(x)
    if a >= 1e6:
        return f"{x / 1e6:.3g}M"
    if a >= 1e4:
        return f"{x / 1e3:.3g}k"
    return f"{x:.4g}"


def fmt_count(n: float) -> str:
    """A parameter or item count: ``957k``, ``1.31 B``, ``70 B``."""
    a = abs(n)
    if a >= 1e9:
        return f"{n / 1e9:.3g} B"
    if a >= 1e6:
        return f"{n / 1e6:.3g} M"
    if a >= 1e3:
        return f"{n / 1e3:.3g}k"
    return f"{n:.0f}"


def fmt_ratio(x: float) -> str:
    """``1.32×``."""
    return f"{x:.2f}×"


def fmt_layout(counts: Sequence[int]) -> str:
    """Units per stage: ``10 | 8 | 8``; long pipelines run-length encoded: ``1 (×9) | 7 (×3)``
    is nine stages of one unit, then three of seven."""
    if len(counts) <= 8:
        return " | ".join(str(c) for c in counts)
    runs: list[list[int]] = []
    for c in counts:
        if runs and runs[-1][0] == c:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
    return " | ".join(f"{c} (×{n})" if n > 1 else str(c) for c, n in runs)


def layer_span(names: Sequence[str], start: int, end: int) -> str:
    """A compact description of a stage's partition units: ``embed … layers.5 (7 units)``."""
    n = end - start
    if n <= 0:
        return "(none)"
    if not names:
        return f"units {start}–{end - 1}" if n > 1 else f"unit {start}"
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"{names[0]}, {names[1]}"
    return f"{names[0]} … {names[-1]} ({len(names)} units)"
