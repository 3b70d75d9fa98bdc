"""``autosplit evaluate PLAN.json``: re-cost any plan, hand-edited ones included."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from autosplit.cli._common import parse_model_args
from autosplit.errors import NoFeasiblePlanError

__all__ = ["register"]


def evaluate(
    plan_file: Path = typer.Argument(..., help="Plan JSON."),
    model: str | None = typer.Option(None, "--model", help="Model file (default: the plan's)."),
    cluster: str | None = typer.Option(None, "--cluster", "-c",
                                       help="Cluster YAML (default: the plan's)."),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a",
                                        help="Override the plan's model args."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Write the re-costed plan here."),
    as_json: bool = typer.Option(False, "--json", help="Print the re-costed plan JSON."),
) -> None:
    """Validate PLAN and predict its iteration time and memory."""
    from autosplit.plan.context import load_plan_context
    from autosplit.plan.evaluate import evaluate_plan
    from autosplit.plan.io import load_plan, plan_to_json, save_plan
    from autosplit.search.baselines import uniform_split

    plan = load_plan(plan_file)
    ctx = load_plan_context(plan, model_path=model, cluster_path=cluster,
                            model_args=parse_model_args(model_arg) if model_arg else None,
                            plan_file=str(plan_file))
    new = evaluate_plan(plan, model=ctx.model, cluster=ctx.cluster, costs=ctx.costs,
                        source=str(plan_file))
    if output:
        save_plan(new, output)
    if as_json:
        typer.echo(plan_to_json(new), nl=False)
    else:
        from autosplit.cli.search_cmd import _summary

        base = uniform_split(new, model=ctx.model, cluster=ctx.cluster, costs=ctx.costs)
        _summary(new, Console(), baselines=[("uniform split", base)])
    over = [s for s in new.prediction.stages if not s.memory.fits]
    if over:
        s = over[0]
        raise NoFeasiblePlanError(
            f"stage {s.index} needs {s.memory.total / 1e9:.1f} GB per device but has "
            f"{s.memory.capacity / 1e9:.1f} GB", file=str(plan_file),
            field=f"stages[{s.index}]", fix="move units off that stage or turn recompute on")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
