"""Plan reports: a self-contained HTML page, static chart images and a terminal summary.

Public entry points:

- ``write_report(plan, path, *, baselines=(), measured=None)`` — the HTML report, written
  atomically (``autosplit report`` and ``autosplit search --report`` both call it);
- ``autosplit.report.terminal.render_plan_summary(plan, console, *, baselines=())`` — the
  rich summary the search and evaluate commands print;
- ``autosplit.report.static.write_static_charts(plan, out_dir, *, png=True)`` — timeline and
  memory charts as SVG (and PNG where a converter exists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autosplit import __version__
from autosplit.atomic import atomic_write_text
from autosplit.plan.schema import Plan
from autosplit.report.html import render_html
from autosplit.report.measured import MeasuredRun, parse_measured

__all__ = ["write_report", "render_report"]


def render_report(plan: Plan, *, baselines: Sequence[tuple[str, Plan]] = (),
                  measured: Mapping[str, Any] | MeasuredRun | None = None,
                  notes: Sequence[str] = (), baseline_note: str = "") -> str:
    """The report page as a string (``write_report`` without the file)."""
    run = measured if isinstance(measured, MeasuredRun) or measured is None else \
        parse_measured(measured)
    return render_html(plan, baselines=baselines, measured=run, notes=notes,
                       baseline_note=baseline_note, version=__version__)


def write_report(plan: Plan, path: Path, *, baselines: Sequence[tuple[str, Plan]] = (),
                 measured: Mapping[str, Any] | MeasuredRun | None = None,
                 notes: Sequence[str] = (), baseline_note: str = "") -> None:
    """Write the HTML report of ``plan`` to ``path`` (atomically).

    ``baselines`` are ``(name, plan)`` pairs costed on the same devices (e.g. from
    ``autosplit.search.baselines``); ``measured`` is a measured-run document
    (``{"step_time_s": ..., "per_rank": [...]}``, see ``autosplit.report.measured``);
    ``notes`` are shown at the top of the page, ``baseline_note`` above the comparison table
    (e.g. why baselines are missing). Raises ``BadInputError`` for a malformed ``measured``.
    """
    html = render_report(plan, baselines=baselines, measured=measured, notes=notes,
                         baseline_note=baseline_note)
    atomic_write_text(Path(path), html)
