"""Charts as image files, for CI artefacts, slides and tickets.

SVG is always written: the charts are SVG already, so it needs nothing installed. PNG needs a
rasteriser; the first one found is used — the ``cairosvg`` Python package, librsvg's
``rsvg-convert``, or a headless Chromium — and when none is there the export says so and
keeps the SVG files, rather than failing the command.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autosplit.atomic import atomic_write_bytes, atomic_write_text
from autosplit.plan.schema import Plan
from autosplit.report.charts import cluster_map_svg, memory_svg, time_breakdown_svg, timeline_svg
from autosplit.report.html import plan_timeline
from autosplit.report.svg import Svg

__all__ = ["StaticExport", "write_static_charts", "find_chromium", "CHROMIUM_FLAGS"]

#: Flags for a headless Chromium that renders a local file and touches nothing else.
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-default-apps", "--hide-scrollbars", "--mute-audio",
)

_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@dataclass(frozen=True)
class StaticExport:
    """What was written; ``png_note`` says why PNG files are missing (empty if written)."""

    svg: tuple[Path, ...]
    png: tuple[Path, ...]
    png_note: str = ""


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on ``PATH`` (or the Debian location), or None."""
    for name in _CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _charts(plan: Plan) -> list[tuple[str, Svg]]:
    charts: list[tuple[str, Svg]] = [("cluster_map", cluster_map_svg(plan))]
    timeline = plan_timeline(plan)
    if timeline is not None and plan.prediction is not None:
        charts.append(("timeline", timeline_svg(plan, timeline,
                                                predicted_s=plan.prediction.iteration_s)))
        charts.append(("memory", memory_svg(plan)))
        charts.append(("stage_times", time_breakdown_svg(plan)))
    return charts


# ---- rasterisers: each takes (svg file, png file, width, height) and raises on failure ----

def _with_cairosvg(svg: Path, png: Path, width: float, height: float) -> None:
    cairosvg = importlib.import_module("cairosvg")
    cairosvg.svg2png(url=str(svg), write_to=str(png), output_width=int(width * 2),
                     output_height=int(height * 2))


def _with_rsvg(svg: Path, png: Path, width: float, height: float) -> None:
    exe = shutil.which("rsvg-convert")
    if exe is None:
        raise FileNotFoundError("rsvg-convert")
    subprocess.run([exe, "--zoom", "2", "--background-color", "white", "-o", str(png), str(svg)],
                   check=True, capture_output=True, timeout=60)


def _with_chromium(svg: Path, png: Path, width: float, height: float) -> None:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium")
    with tempfile.TemporaryDirectory(prefix="autosplit-png-") as tmp:
        page = Path(tmp) / "chart.html"
        page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><style>'
                        'html,body{margin:0;background:#fff}</style></head><body>'
                        + svg.read_text(encoding="utf-8").split("\n", 1)[-1]
                        + "</body></html>", encoding="utf-8")
        shot = Path(tmp) / "shot.png"
        subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile",
                        "--force-device-scale-factor=2",
                        f"--window-size={int(width)},{int(height)}",
                        f"--screenshot={shot}", page.as_uri()],
                       check=True, capture_output=True, timeout=90)
        if not shot.exists():
            raise RuntimeError("chromium wrote no screenshot")
        atomic_write_bytes(png, shot.read_bytes())


_RASTERISERS: tuple[tuple[str, Callable[[Path, Path, float, float], None]], ...] = (
    ("cairosvg", _with_cairosvg),
    ("rsvg-convert", _with_rsvg),
    ("chromium", _with_chromium),
)


def write_static_charts(plan: Plan, out_dir: Path, *, png: bool = True) -> StaticExport:
    """Write the report's charts into ``out_dir`` as SVG, and as PNG when ``png`` is set and
    a rasteriser is available."""
    out_dir = Path(out_dir)
    svgs: list[Path] = []
    sizes: list[tuple[float, float]] = []
    for name, chart in _charts(plan):
        path = out_dir / f"{name}.svg"
        atomic_write_text(path, chart.render(standalone=True))
        svgs.append(path)
        sizes.append((chart.width, chart.height))
    if not png:
        return StaticExport(tuple(svgs), ())
    failures: list[str] = []
    for tool, rasterise in _RASTERISERS:
        pngs: list[Path] = []
        try:
            for path, (w, h) in zip(svgs, sizes, strict=True):
                target = path.with_suffix(".png")
                rasterise(path, target, w, h)
                pngs.append(target)
        except (ImportError, OSError, subprocess.SubprocessError, RuntimeError) as exc:
            for p in pngs:
                p.unlink(missing_ok=True)
            failures.append(f"{tool}: {type(exc).__name__}: {exc}".strip())
            continue
        return StaticExport(tuple(svgs), tuple(pngs))
    note = ("PNG not written: no SVG rasteriser found (install the `cairosvg` Python package, "
            "librsvg's `rsvg-convert`, or Chromium); the SVG files are complete. Tried: "
            + "; ".join(failures))
    return StaticExport(tuple(svgs), (), note)
