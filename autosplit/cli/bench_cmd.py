"""``autosplit bench [SUITE]``: the plan-quality and search-time regression suite.

Exit codes: 0 when every case ran (and, with ``--check``, none regressed); 2 for a broken
suite or baseline file; 5 (``autosplit.bench.check.EXIT_REGRESSION``) when ``--check`` finds a
case whose plan is more than 1 % worse or whose search became more than 2× slower relative
to the suite's reference case. See docs/bench.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from autosplit.cli.clock import process_elapsed
from autosplit.cli.outputs import check_output_file, write_output
from autosplit.cli.progress import reporter
from autosplit.errors import BadInputError

if TYPE_CHECKING:  # imported when the command runs: `autosplit --help` stays fast
    from autosplit.bench.suite import Suite

__all__ = ["register"]

_DEFAULT_SUITE = Path("experiments/bench/quick.yaml")


def bench(
    suite: Path = typer.Argument(_DEFAULT_SUITE, help="Suite YAML (see docs/bench.md)."),
    check: Path | None = typer.Option(None, "--check",
                                      help="Baseline CSV to compare with; exit 5 on a "
                                           "regression."),
    update: bool = typer.Option(False, "--update",
                                help="Rewrite the --check baseline with this run's results."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the table as CSV."),
    markdown: Path | None = typer.Option(None, "--markdown",
                                         help="Write the table as Markdown."),
    case: list[str] = typer.Option([], "--case", "-k",
                                   help="Run only this case (repeatable; the reference case "
                                        "always runs)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages."),
) -> None:
    """Run a benchmark suite; optionally check it against a committed baseline.

    Exit code 5 when --check finds a case whose plan is more than 1 % worse or whose search
    became more than 2× slower relative to the reference case (docs/bench.md).
    """
    from autosplit.bench.check import EXIT_REGRESSION, compare, read_baseline
    from autosplit.bench.suite import load_suite
    from autosplit.bench.table import to_csv, to_markdown
    if update and check is None:
        raise BadInputError("--update rewrites the baseline named by --check", field="--update",
                            fix="pass --check experiments/bench/baseline.csv --update")
    outputs = {"--output": check_output_file(output, option="--output"),
               "--markdown": check_output_file(markdown, option="--markdown")}
    if update and check is not None:
        check_output_file(check, option="--check", allow_stdout=False)
    spec = load_suite(suite)
    names = {c.name for c in spec.cases}
    for k in case:
        if k not in names:
            raise BadInputError(f"no case named {k!r} in {suite}", field="--case",
                                fix="use one of: " + ", ".join(sorted(names)))
    baseline = read_baseline(check) if check is not None and not update else None
    # After the checks: the runner imports PyTorch (for ingestion), seconds on a small machine.
    from autosplit.bench.runner import results_frame, run_suite

    progress = reporter(quiet=quiet)
    t0 = time.perf_counter()
    total = len(set(case) | {spec.reference}) if case else len(spec.cases)
    with progress.phase("checking the model files"):
        _vet_models(spec, only=tuple(case))
    with progress.phase(f"benchmarking {total} case(s)") as shown:
        results = run_suite(spec, only=tuple(case), progress=lambda name: shown.update(
            f"case {shown.updates + 1} of {total}: {name}"))
    df = results_frame(results)
    to_stdout = any(o is not None and o.to_stdout for o in outputs.values())
    for option, render in (("--output", to_csv), ("--markdown", to_markdown)):
        if outputs[option] is not None:
            write_output(outputs[option], render(df))
    out = Console(width=max(Console().width, 150), stderr=to_stdout)
    out.print(_table(df))
    out.print(f"[dim]{len(df)} cases in {time.perf_counter() - t0:.1f} s ({process_elapsed()}); "
              f"reference case {spec.reference}[/]")
    if update and check is not None:
        write_output(check_output_file(check, option="--check"), to_csv(df))
        out.print(f"baseline written to [bold]{check}[/]")
        return
    if baseline is None:
        return
    findings = compare(df, baseline)
    for f in findings:
        style = "bold red" if f.failed else "yellow"
        out.print(f"[{style}]{'FAIL' if f.failed else 'note'}[/] {f.case} ({f.what}): "
                  f"{f.message}", highlight=False)
    failed = [f for f in findings if f.failed]
    if failed:
        out.print(f"[bold red]bench check failed:[/] {len(failed)} regression(s) against "
                  f"{check}")
        raise typer.Exit(EXIT_REGRESSION)
    out.print(f"[green]bench check passed[/] against {check}")


def _vet_models(spec: Suite, *, only: tuple[str, ...]) -> None:
    """Ingest each model of the cases to run once in a child process (cached): the suite
    runner imports model files in-process, where one that exits at import ended the whole
    bench with exit 0 and no table; here it is reported (exit 2) before any case runs."""
    from autosplit.model.cache import ingest_model_cached

    seen: set[tuple] = set()
    for c in spec.cases:
        if only and c.name not in only and c.name != spec.reference:
            continue
        key = (str(c.model), tuple(sorted(c.model_args.items())), c.training.seq_len,
               c.training.dtype)
        if key not in seen:
            seen.add(key)
            ingest_model_cached(str(c.model), model_args=c.model_args,
                                seq_len=c.training.seq_len, dtype=c.training.dtype)


#: The columns shown in the terminal (the Markdown and CSV files have them all).
_TERMINAL = ("name", "devices", "units", "iteration_s", "mfu", "search_s", "time_ratio",
             "peak_mem_mib",
             "optimality_gap", "vs_uniform", "vs_tflops", "vs_single_type", "vs_brute_force")


def _table(df) -> Table:
    from autosplit.bench.table import MARKDOWN_COLUMNS, format_cell

    table = Table(title="autosplit bench", show_lines=False)
    cols = [c for c in MARKDOWN_COLUMNS if c[0] in _TERMINAL and c[0] in df.columns]
    for key, header, _ in cols:
        table.add_column(header, justify="left" if key == "name" else "right",
                         no_wrap=key == "name")
    for _, row in df.iterrows():
        cells = [format_cell(row[c], f) for c, _, f in cols]
        if isinstance(row.get("error"), str) and row["error"]:
            cells[0] += " (no plan)"
        table.add_row(*cells)
    return table


def register(app: typer.Typer) -> None:
    """Add this command to the app."""
    app.command("bench")(bench)
