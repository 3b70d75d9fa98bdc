"""A minimal SVG writer, so charts are plain text with no renderer, library or network.

Inline SVG keeps the report one small file that any browser shows offline, and the same
markup is the static image export. Every shape may carry a ``<title>``: browsers show it as
a tooltip, which gives the charts hover details without any script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

__all__ = ["Svg", "STAGE_COLORS", "stage_color", "nice_step"]

#: Qualitative palette: Tableau 10, then darker companions for pipelines of 11–20 stages.
STAGE_COLORS: tuple[str, ...] = (
    "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#e15759",
    "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#bab0ac",
    "#2b4f73", "#b35f12", "#2f6b2a", "#7a4b73", "#a8323a",
    "#3f7f7a", "#a88a1c", "#6b4c39", "#c2607a", "#6e6761",
)


def stage_color(index: int) -> str:
    """The colour of stage ``index`` everywhere in the report."""
    return STAGE_COLORS[index % len(STAGE_COLORS)]


def nice_step(span: float, target_ticks: int = 8) -> float:
    """A 1/2/5 × 10^k tick step giving about ``target_ticks`` ticks over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / max(1, target_ticks)
    mag = 10.0 ** _floor_log10(raw)
    for mult in (1.0, 2.0, 5.0, 10.0):
        if raw <= mult * mag:
            return mult * mag
    return 10.0 * mag  # pragma: no cover


def _floor_log10(x: float) -> int:
    k = 0
    while x >= 10:
        x /= 10
        k += 1
    while x < 1:
        x *= 10
        k -= 1
    return k


_SVG_NS = "http://www.w3.org/2000/svg"  # an identifier, never fetched


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


@dataclass
class Svg:
    """Accumulates SVG elements; ``render()`` returns the document (or inline element)."""

    width: float
    height: float
    label: str = ""
    parts: list[str] = field(default_factory=list)

    def rect(self, x: float, y: float, w: float, h: float, *, fill: str, title: str = "",
             stroke: str = "", stroke_width: float = 1.0, opacity: float = 1.0,
             rx: float = 0.0, cls: str = "", dash: str = "") -> None:
        attrs = (f'x="{_num(x)}" y="{_num(y)}" width="{_num(max(w, 0.0))}" '
                 f'height="{_num(max(h, 0.0))}" fill="{fill}"')
        if stroke:
            attrs += f' stroke="{stroke}" stroke-width="{_num(stroke_width)}"'
        if dash:
            attrs += f' stroke-dasharray="{dash}"'
        if opacity < 1:
            attrs += f' fill-opacity="{_num(opacity)}"'
        if rx:
            attrs += f' rx="{_num(rx)}"'
        if cls:
            attrs += f' class="{cls}"'
        if title:
            self.parts.append(f"<rect {attrs}><title>{escape(title)}</title></rect>")
        else:
            self.parts.append(f"<rect {attrs}/>")

    def line(self, x1: float, y1: float, x2: float, y2: float, *, stroke: str = "#888",
             width: float = 1.0, dash: str = "") -> None:
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" '
                          f'y2="{_num(y2)}" stroke="{stroke}" stroke-width="{_num(width)}"'
                          f'{extra}/>')

    def text(self, x: float, y: float, content: str, *, size: float = 12, anchor: str = "start",
             fill: str = "#222", weight: str = "normal", baseline: str = "middle",
             title: str = "") -> None:
        tip = f"<title>{escape(title)}</title>" if title else ""
        self.parts.append(
            f'<text x="{_num(x)}" y="{_num(y)}" font-size="{_num(size)}" '
            f'text-anchor="{anchor}" dominant-baseline="{baseline}" fill="{fill}" '
            f'font-weight="{weight}">{tip}{escape(content)}</text>')

    def raw(self, markup: str) -> None:
        self.parts.append(markup)

    def render(self, *, standalone: bool = False) -> str:
        """The ``<svg>`` element. ``standalone`` adds the XML namespace and a white
        background so the file is a valid image on its own."""
        w, h = _num(self.width), _num(self.height)
        aria = f' role="img" aria-label="{escape(self.label)}"' if self.label else ""
        font = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"'
        if standalone:
            head = (f'<svg xmlns="{_SVG_NS}" viewBox="0 0 {w} {h}" width="{w}" height="{h}"'
                    f'{aria} {font}>')
        else:  # inline in HTML: no namespace needed, scales with the page
            head = f'<svg class="chart" viewBox="0 0 {w} {h}"{aria} {font}>'
        body = "".join(self.parts)
        bg = f'<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>' if standalone else ""
        prolog = '<?xml version="1.0" encoding="UTF-8"?>\n' if standalone else ""
        return f"{prolog}{head}{bg}{body}</svg>"
