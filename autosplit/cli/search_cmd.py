"""``autosplit search MODEL.py --cluster CLUSTER.yaml``: the main use of the tool."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from autosplit.cli._common import check_choice, parse_int_list, parse_model_args
from autosplit.cli.clock import process_elapsed
from autosplit.cli.outputs import check_output_file, write_output
from autosplit.cli.progress import reporter
from autosplit.cli.progress_lines import search_line
from autosplit.cli.ranges import LIST_HIGH, SEARCH_RANGES, check_ranges, check_tp_degrees
from autosplit.config import DTYPE_BYTES, SearchConfig, TrainingConfig
from autosplit.errors import BadInputError

__all__ = ["register"]

_DEFAULT_TP = "1,2,4,8"


def search(
    model: Path = typer.Argument(..., help="Model file (see README: Model files)."),
    cluster: Path = typer.Option(..., "--cluster", "-c", help="Cluster YAML."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Write the plan JSON here (- for stdout)."),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a",
                                        help="KEY=VALUE passed to build_model (repeatable)."),
    seq_len: int = typer.Option(2048, "--seq-len", help="Tokens per sample."),
    global_batch: int = typer.Option(64, "--global-batch", "-b", help="Samples per iteration."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 | fp16 | fp32."),
    schedule: str = typer.Option("auto", "--schedule",
                                 help="auto (the fastest that fits) | 1f1b | gpipe | "
                                      "interleaved-1f1b | zb-h1 | interleaved-zb | zbv; "
                                      "`autosplit run` executes 1f1b and gpipe."),
    zero1: bool = typer.Option(False, "--zero1", help="Shard optimizer states over DP."),
    memory_reserve_gb: float = typer.Option(2.0, "--memory-reserve-gb",
                                            help="GB per device kept free for the framework."),
    grad_bucket_mb: float = typer.Option(25.0, "--grad-bucket-mb",
                                         help="DP gradient all-reduce bucket size (MB)."),
    no_grad_overlap: bool = typer.Option(False, "--no-grad-overlap",
                                         help="Do not overlap the DP all-reduce with the "
                                              "backward."),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Search time limit (s)."),
    micro_batch_sizes: str = typer.Option("1,2,4,8", "--micro-batch-sizes",
                                          help="Per-replica micro-batch sizes allowed."),
    tp_degrees: str = typer.Option(_DEFAULT_TP, "--tp", help="TP degrees allowed."),
    max_stages: int = typer.Option(0, "--max-stages", help="Max pipeline depth (0: no limit)."),
    no_idle: bool = typer.Option(False, "--no-idle", help="Use every device."),
    no_recompute: bool = typer.Option(False, "--no-recompute", help="Never recompute."),
    target: str = typer.Option("", "--target",
                               help="Only plans megatron | torchtitan | deepspeed can run."),
    solver: str = typer.Option("dp", "--solver",
                               help="Layer-split solver: dp (exact, fast) | cpsat (OR-Tools)."),
    budget: float = typer.Option(SearchConfig.budget, "--budget",
                                 help="Deterministic work budget (millions of steps): the same "
                                      "inputs and budget give the same plan on any machine."),
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
    from autosplit.plan.context import cost_provider, with_sources
    from autosplit.plan.io import plan_to_json, save_plan
    from autosplit.search.baselines import uniform_split
    from autosplit.search.engine import search_plan
    from autosplit.search.schedule_choice import AUTO, SCHEDULE_CHOICES, base_schedule

    check_choice(dtype, list(DTYPE_BYTES), "--dtype")
    check_choice(schedule, SCHEDULE_CHOICES, "--schedule")
    if target:
        check_choice(target, ("megatron", "torchtitan", "deepspeed"), "--target")
        from autosplit.export.expressible import TARGET_SCHEDULES

        if schedule != AUTO and schedule not in TARGET_SCHEDULES[target]:
            raise BadInputError(f"{target} does not run the {schedule} schedule",
                                field="--schedule",
                                fix=f"use --schedule auto or one of "
                                    f"{', '.join(TARGET_SCHEDULES[target])}")
    check_ranges({"--seq-len": seq_len, "--global-batch": global_batch,
                  "--memory-reserve-gb": memory_reserve_gb, "--time-limit": time_limit,
                  "--budget": budget, "--max-stages": max_stages,
                  "--grad-bucket-mb": grad_bucket_mb}, SEARCH_RANGES)
    plan_out = check_output_file(output, option="--output")
    report_out = check_output_file(report, option="--report", allow_stdout=False)
    as_json = as_json or bool(plan_out and plan_out.to_stdout)
    console = Console(stderr=True, quiet=quiet or as_json)
    progress = reporter(quiet=quiet or as_json, console=console)
    t0 = time.perf_counter()
    training = TrainingConfig(global_batch=global_batch, seq_len=seq_len, dtype=dtype,
                              schedule=base_schedule(schedule), zero1=zero1,
                              memory_reserve_gb=memory_reserve_gb,
                              grad_bucket_mb=grad_bucket_mb, grad_overlap=not no_grad_overlap)
    cfg = SearchConfig(time_limit_s=time_limit,
                       micro_batch_sizes=parse_int_list(
                           micro_batch_sizes, option="--micro-batch-sizes",
                           high=LIST_HIGH["--micro-batch-sizes"]),
                       tp_degrees=parse_int_list(tp_degrees, option="--tp",
                                                 high=LIST_HIGH["--tp"]),
                       max_stages=max_stages, allow_idle=not no_idle,
                       allow_recompute=not no_recompute, target=target,
                       solver=check_choice(solver, ("dp", "cpsat"), "--solver"),
                       budget=budget, schedule=schedule)
    cl = load_cluster(cluster, chip_dirs=tuple(chips_dir))
    if tp_degrees != _DEFAULT_TP:  # the default lists 8 for 8-device nodes; others skip it
        check_tp_degrees(cfg.tp_degrees, {n.name: n.devices for n in cl.nodes})
    with progress.phase("ingesting the model on the meta device"):
        prof = ingest_model_cached(str(model), model_args=parse_model_args(model_arg),
                                   seq_len=seq_len, dtype=dtype, use_cache=not no_cache)
    params = (f"{prof.total_params / 1e9:.2f} B" if prof.total_params >= 1e8
              else f"{prof.total_params / 1e6:.2f} M")
    console.print(f"[dim]model[/] {prof.name}: {params} parameters, "
                  f"{prof.num_layers} units ({time.perf_counter() - t0:.1f} s)")
    costs = cost_provider(model=prof, chips=cl.chip_types(), extra_dirs=tuple(chips_dir))
    _profile_notes(costs)
    with progress.phase("searching") as shown:
        plan = search_plan(model=prof, cluster=cl, training=training, search=cfg, costs=costs,
                           progress=lambda event: shown.update(search_line(event)))
    plan = with_sources(plan, cluster=cl)
    if target:
        from autosplit.export.expressible import expressibility_problems

        problems = expressibility_problems(plan, target)
        if problems:  # the search space guarantees this; fail loudly if it ever breaks
            raise AssertionError("; ".join(problems))
    baseline = uniform_split(plan, model=prof, cluster=cl, costs=costs)
    if plan_out and plan_out.path is not None:
        save_plan(plan, plan_out.path)
    if report_out and report_out.path is not None:
        from autosplit.report import write_report
        from autosplit.search.baselines import tflops_proportional_split

        write_report(plan, report_out.path, baselines=[
            ("uniform split", baseline),
            ("TFLOPS-proportional split",
             tflops_proportional_split(plan, model=prof, cluster=cl, costs=costs))])
    if as_json:
        write_output(check_output_file("-", option="--json"), plan_to_json(plan))
        return
    out = Console()
    _summary(plan, out, baselines=[("uniform split", baseline)])
    if output:
        out.print(f"plan written to [bold]{output}[/]")
    if report:
        out.print(f"report written to [bold]{report}[/]")
    out.print(f"[dim]{process_elapsed()}[/]")


def _profile_notes(costs) -> None:
    """Profiles of this model that exist but are not used, on standard error even with -q
    and --json: they are warnings, not progress, and a silent fall-back to the analytic model
    is what they warn of."""
    from autosplit.profiler.status import profile_notes

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for note in profile_notes(costs):
        err.print(f"[yellow]note:[/] {note}")


def _summary(plan, console: Console, *, baselines) -> None:
    from autosplit.report.terminal import render_plan_summary

    render_plan_summary(plan, console, baselines=baselines)


def register(app: typer.Typer) -> None:
    app.command("search")(search)


