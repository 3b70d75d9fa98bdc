"""``autosplit report PLAN.json -o report.html``: the plan as a page people read at a glance.

The report needs only the plan; the model and cluster it names are reloaded to cost the
baselines (uniform and TFLOPS-proportional splits of the same devices). If they cannot be
reloaded — a moved model file, say — the page is still written, without baselines, and says
why.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from autosplit.cli._common import parse_model_args
from autosplit.cli.outputs import (
    OutputFile,
    check_output_file,
    check_output_folder,
    write_output,
)
from autosplit.errors import BadInputError
from autosplit.plan.schema import Plan

__all__ = ["register"]


def _baselines(plan: Plan, *, plan_file: Path, model: str | None, cluster: str | None,
               model_args: dict[str, str] | None
               ) -> tuple[Plan, list[tuple[str, Plan]], str]:
    """Reload the plan's context; return the plan (re-costed if it had no prediction), the
    baselines and a note explaining anything that could not be done."""
    from autosplit.plan.context import load_plan_context
    from autosplit.plan.evaluate import evaluate_plan
    from autosplit.search.baselines import tflops_proportional_split, uniform_split

    try:
        ctx = load_plan_context(plan, model_path=model, cluster_path=cluster,
                                model_args=model_args, plan_file=str(plan_file))
    except Exception as exc:  # any failure here only costs the baselines
        reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        return plan, [], (f"Baselines not shown: the plan's model or cluster could not be "
                          f"reloaded ({reason}). Pass --model/--cluster to include them.")
    if plan.prediction is None:
        plan = evaluate_plan(plan, model=ctx.model, cluster=ctx.cluster, costs=ctx.costs)
    out: list[tuple[str, Plan]] = []
    failed: list[str] = []
    for name, make in (("uniform split", uniform_split),
                       ("TFLOPS-proportional split", tflops_proportional_split)):
        try:
            out.append((name, make(plan, model=ctx.model, cluster=ctx.cluster,
                                   costs=ctx.costs)))
        except Exception as exc:  # one failing must not stop the page
            failed.append(f"{name}: {getattr(exc, 'message', None) or exc}")
    note = ("Some baselines could not be costed: " + "; ".join(failed)) if failed else ""
    return plan, out, note


def report(
    plan_file: Path = typer.Argument(..., help="Plan JSON (from `autosplit search -o`)."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="HTML file to write (default: PLAN with .html; - for "
                                            "stdout)."),
    measured: Path | None = typer.Option(None, "--measured",
                                         help="Measured-run JSON (step_time_s, per_rank)."),
    png_dir: Path | None = typer.Option(None, "--png-dir",
                                        help="Also write the charts as SVG and PNG here."),
    svg_dir: Path | None = typer.Option(None, "--svg-dir",
                                        help="Also write the charts as SVG only here."),
    model: str | None = typer.Option(None, "--model", help="Model file (default: the plan's)."),
    cluster: str | None = typer.Option(None, "--cluster", "-c",
                                       help="Cluster YAML (default: the plan's)."),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a",
                                        help="Override the plan's model args (k=v)."),
    no_baselines: bool = typer.Option(False, "--no-baselines",
                                      help="Skip reloading the model to cost baselines."),
) -> None:
    """Write a self-contained HTML report of PLAN (works offline, no scripts)."""
    from autosplit.plan.io import load_plan
    from autosplit.report.measured import load_measured
    from autosplit.report.static import write_static_charts

    console = Console(stderr=True)
    target_out = check_output_file(output or plan_file.with_suffix(".html"), option="--output")
    folders = {"--png-dir": check_output_folder(png_dir, option="--png-dir"),
               "--svg-dir": check_output_folder(svg_dir, option="--svg-dir")}
    plan = load_plan(plan_file)
    run = load_measured(measured) if measured else None
    args = parse_model_args(model_arg) if model_arg else None
    baselines: list[tuple[str, Plan]] = []
    note = "Baselines not shown (--no-baselines)." if no_baselines else ""
    if not no_baselines:
        with console.status("reloading the model and cluster to cost the baselines…"):
            plan, baselines, note = _baselines(plan, plan_file=plan_file, model=model,
                                               cluster=cluster, model_args=args)
        if note:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
    out = Console(stderr=target_out.to_stdout)
    charts = []
    for folder, png in ((folders["--png-dir"], True), (folders["--svg-dir"], False)):
        if folder is None:
            continue
        try:
            result = write_static_charts(plan, folder, png=png)
        except OSError as exc:
            raise BadInputError(f"cannot write the charts: {exc.strerror or exc}",
                                file=str(folder), fix="pass a writable folder") from exc
        charts.append(f"charts written to [bold]{folder}[/]: "
                      + ", ".join(p.name for p in (*result.svg, *result.png)))
        if png and result.png_note:
            console.print(f"[yellow]note:[/] {result.png_note}", highlight=False)
    _write_page(plan, target_out, baselines=baselines, measured=run, note=note)
    out.print(f"report written to [bold]{target_out}[/]", highlight=False)
    for line in charts:
        out.print(line, highlight=False)


def _write_page(plan: Plan, out: OutputFile, *, baselines: list[tuple[str, Plan]],
                measured: object, note: str) -> None:
    """The HTML page, last (after the charts), so a failure leaves no page behind."""
    from autosplit.report import render_report

    try:
        html = render_report(plan, baselines=baselines, measured=measured, baseline_note=note)
        write_output(out, html)
    except OSError as exc:
        raise BadInputError(f"cannot write the report: {exc.strerror or exc}", file=str(out),
                            fix="pass -o with a writable file path") from exc


def register(app: typer.Typer) -> None:
    """Add this command to the app."""
    app.command("report")(report)
