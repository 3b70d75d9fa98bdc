"""``autosplit evaluate PLAN.json``: re-cost any plan, hand-edited ones included.

The plan is read by the one plan reader (``load_plan``), its model and cluster reloaded and
checked to be the plan's own (``load_plan_context``: another model or cluster is an error, exit
2), then re-costed. A plan that does not fit in memory is reported and exits 3 without writing
``-o``: a failing command leaves no output file.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from autosplit.cli._common import parse_model_args
from autosplit.cli.outputs import check_output_file, write_output
from autosplit.errors import NoFeasiblePlanError

__all__ = ["register"]


def evaluate(
    plan_file: Path = typer.Argument(..., help="Plan JSON."),
    model: str | None = typer.Option(None, "--model", help="Model file (default: the plan's)."),
    cluster: str | None = typer.Option(None, "--cluster", "-c",
                                       help="Cluster YAML (default: the plan's)."),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a",
                                        help="Model args (default: the plan's); they must give "
                                             "the plan's model."),
    chips_dir: list[Path] = typer.Option([], "--chips-dir",
                                         help="Chip directories with chip files and measured "
                                              "profiles (default: those the plan was searched "
                                              "with)."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Write the re-costed plan here (- for stdout)."),
    as_json: bool = typer.Option(False, "--json", help="Print the re-costed plan JSON."),
) -> None:
    """Validate PLAN and predict its iteration time and memory."""
    from autosplit.plan.context import load_plan_context, with_sources
    from autosplit.plan.evaluate import evaluate_plan
    from autosplit.plan.io import load_plan, plan_to_json, save_plan
    from autosplit.search.baselines import uniform_split

    out = check_output_file(output, option="--output")
    as_json = as_json or bool(out and out.to_stdout)
    plan = load_plan(plan_file)
    ctx = load_plan_context(plan, model_path=model, cluster_path=cluster,
                            model_args=parse_model_args(model_arg) if model_arg else None,
                            plan_file=str(plan_file),
                            chip_dirs=tuple(chips_dir) if chips_dir else None)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    from autosplit.profiler.status import profile_notes

    for note in (*ctx.notes, *profile_notes(ctx.costs)):
        err.print(f"[yellow]note:[/] {note}")
    new = with_sources(evaluate_plan(plan, model=ctx.model, cluster=ctx.cluster,
                                     costs=ctx.costs, source=str(plan_file)),
                       cluster=ctx.cluster, model=ctx.model)
    if as_json:
        write_output(check_output_file("-", option="--json"), plan_to_json(new))
    else:
        from autosplit.report.terminal import render_plan_summary

        base = uniform_split(new, model=ctx.model, cluster=ctx.cluster, costs=ctx.costs)
        render_plan_summary(new, Console(), baselines=[("uniform split", base)])
    over = [s for s in new.prediction.stages if not s.memory.fits]
    if over:
        s = over[0]
        raise NoFeasiblePlanError(
            f"stage {s.index} needs {s.memory.total / 1e9:.1f} GB per device but has "
            f"{s.memory.capacity / 1e9:.1f} GB", file=str(plan_file),
            field=f"stages[{s.index}]", fix="move units off that stage or turn recompute on")
    if out and out.path is not None:
        save_plan(new, out.path)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
