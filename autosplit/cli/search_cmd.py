"""``autosplit search MODEL.py --cluster CLUSTER.yaml``: the main use of the tool."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from autosplit.cli._common import parse_int_list, parse_model_args
from autosplit.config import DTYPE_BYTES, SCHEDULES, SearchConfig, TrainingConfig
from autosplit.errors import BadInputError

__all__ = ["register"]


def _check_choice(value: str, choices: tuple[str, ...] | list[str], option: str) -> str:
    if value not in choices:
        raise BadInputError(f"{value!r} is not a valid choice", field=option,
                            fix=f"use one of: {', '.join(choices)}")
    return value


def search(
    model: Path = typer.Argument(..., help="Model file (see README: Model files)."),
    cluster: Path = typer.Option(..., "--cluster", "-c", help="Cluster YAML."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the plan JSON here."),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a",
                                        help="KEY=VALUE passed to build_model (repeatable)."),
    seq_len: int = typer.Option(2048, "--seq-len", help="Tokens per sample."),
    global_batch: int = typer.Option(64, "--global-batch", "-b", help="Samples per iteration."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 | fp16 | fp32."),
    schedule: str = typer.Option("1f1b", "--schedule", help="1f1b | gpipe."),
    zero1: bool = typer.Option(False, "--zero1", help="Shard optimizer states over DP."),
    memory_reserve_gb: float = typer.Option(2.0, "--memory-reserve-gb",
                                            help="GB per device kept free for the framework."),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Search time limit (s)."),
    micro_batch_sizes: str = typer.Option("1,2,4,8", "--micro-batch-sizes",
                                          help="Per-replica micro-batch sizes allowed."),
    tp_degrees: str = typer.Option("1,2,4,8", "--tp", help="TP degrees allowed."),
    max_stages: int = typer.Option(0, "--max-stages", help="Max pipeline depth (0: no limit)."),
    no_idle: bool = typer.Option(False, "--no-idle", help="Use every device."),
    no_recompute: bool = typer.Option(False, "--no-recompute", help="Never recompute."),
    target: str = typer.Option("", "--target",
                               help="Only plans megatron | torchtitan | deepspeed can run."),
    solver: str = typer.Option("dp", "--solver",
                               help="Layer-split solver: dp (exact, fast) | cpsat (OR-Tools)."),
    certify: int = typer.Option(0, "--certify",
                                help="Re-solve up to N open candidates exactly with CP-SAT "
                                     "to shrink the reported optimality gap."),
    chips_dir: list[Path] = typer.Option([], "--chips-dir", help="Extra chip directories."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan JSON to stdout."),
    report: Path | None = typer.Option(None, "--report", help="Also write an HTML report."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages."),
    no_cache: bool = typer.Option(False, "--no-cache",
                                  help="Re-ingest the model instead of using the cached profile."),
) -> None:
    """Search the best split plan for MODEL on CLUSTER."""
    from autosplit.cluster.load import load_cluster
    from autosplit.model.cache import ingest_model_cached
    from autosplit.plan.context import cost_provider
    from autosplit.plan.io import plan_to_json, save_plan
    from autosplit.search.baselines import uniform_split
    from autosplit.search.engine import search_plan

    _check_choice(dtype, list(DTYPE_BYTES), "--dtype")
    _check_choice(schedule, SCHEDULES, "--schedule")
    if target:
        _check_choice(target, ("megatron", "torchtitan", "deepspeed"), "--target")
        from autosplit.export.expressible import TARGET_SCHEDULES

        if schedule not in TARGET_SCHEDULES[target]:
            raise BadInputError(f"{target} does not run the {schedule} schedule",
                                field="--schedule",
                                fix=f"use --schedule {TARGET_SCHEDULES[target][0]}")
    for name, val in (("--seq-len", seq_len), ("--global-batch", global_batch)):
        if val < 1:
            raise BadInputError(f"must be a positive integer, got {val}", field=name,
                                fix=f"pass {name} 2048" if name == "--seq-len" else
                                f"pass {name} 64")
    console = Console(stderr=True, quiet=quiet or as_json)
    t0 = time.perf_counter()
    training = TrainingConfig(global_batch=global_batch, seq_len=seq_len, dtype=dtype,
                              schedule=schedule, zero1=zero1,
                              memory_reserve_gb=memory_reserve_gb)
    cfg = SearchConfig(time_limit_s=time_limit,
                       micro_batch_sizes=parse_int_list(micro_batch_sizes,
                                                        option="--micro-batch-sizes"),
                       tp_degrees=parse_int_list(tp_degrees, option="--tp"),
                       max_stages=max_stages, allow_idle=not no_idle,
                       allow_recompute=not no_recompute, target=target,
                       solver=_check_choice(solver, ("dp", "cpsat"), "--solver"),
                       certify_max=max(certify, 0))
    cl = load_cluster(cluster, chip_dirs=tuple(chips_dir))
    with console.status("ingesting model on the meta device…"):
        prof = ingest_model_cached(str(model), model_args=parse_model_args(model_arg),
                                   seq_len=seq_len, dtype=dtype, use_cache=not no_cache)
    params = (f"{prof.total_params / 1e9:.2f} B" if prof.total_params >= 1e8
              else f"{prof.total_params / 1e6:.2f} M")
    console.print(f"[dim]model[/] {prof.name}: {params} parameters, "
                  f"{prof.num_layers} units ({time.perf_counter() - t0:.1f} s)")
    costs = cost_provider(model=prof, chips=cl.chip_types(), extra_dirs=tuple(chips_dir))
    with console.status("searching…") as status:
        plan = search_plan(model=prof, cluster=cl, training=training, search=cfg, costs=costs,
                           progress=lambda msg: status.update(f"searching… {msg}"))
    if target:
        from autosplit.export.expressible import expressibility_problems

        problems = expressibility_problems(plan, target)
        if problems:  # the search space guarantees this; fail loudly if it ever breaks
            raise AssertionError("; ".join(problems))
    baseline = uniform_split(plan, model=prof, cluster=cl, costs=costs)
    if output:
        save_plan(plan, output)
    if report:
        from autosplit.report import write_report
        from autosplit.search.baselines import tflops_proportional_split

        write_report(plan, report, baselines=[
            ("uniform split", baseline),
            ("TFLOPS-proportional split",
             tflops_proportional_split(plan, model=prof, cluster=cl, costs=costs))])
    if as_json:
        typer.echo(plan_to_json(plan), nl=False)
        return
    out = Console()
    _summary(plan, out, baselines=[("uniform split", baseline)])
    if output:
        out.print(f"plan written to [bold]{output}[/]")
    if report:
        out.print(f"report written to [bold]{report}[/]")
    out.print(f"[dim]whole command: {time.perf_counter() - t0:.1f} s[/]")


def _summary(plan, console: Console, *, baselines) -> None:
    from autosplit.report.terminal import render_plan_summary

    render_plan_summary(plan, console, baselines=baselines)


def register(app: typer.Typer) -> None:
    app.command("search")(search)


