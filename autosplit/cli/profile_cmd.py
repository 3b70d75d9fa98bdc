"""``autosplit profile``, ``profile-chip`` and ``profile-import``: measured costs on real chips.

- ``profile MODEL.py --device cuda -o FILE`` times forward, backward and recompute + backward of
  every distinct layer kind and measures its activation memory, writing the profile store CSV.
- ``profile-chip --device cuda -o FILE`` runs the GEMM / memory / host-copy micro-benchmarks and,
  with ``--write-chip``, writes a calibrated ``chip.yaml``.
- ``profile-import --format sailor|metis PATH -o DIR`` converts other planners' profiles.
- ``profile-load MODEL.py --until FILE`` trains the model in a loop: the load a training
  neighbour puts on a shared device, for profiling the other clients under it.

Sibling commands rather than one ``profile`` group, because ``profile`` takes the model
file as its first argument and a sub-command name there would be ambiguous.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autosplit.cli._common import check_choice, parse_int_list, parse_model_args
from autosplit.cli.outputs import check_output_file, check_output_folder
from autosplit.cli.progress import reporter
from autosplit.cli.progress_lines import import_line
from autosplit.cli.ranges import Range, check_ranges
from autosplit.config import DTYPE_BYTES
from autosplit.errors import BadInputError
from autosplit.profiler.store import ProfileRow

__all__ = ["register", "noisy_rows", "PROFILE_RANGES", "IMPORT_RANGES"]

_console = Console(stderr=True)

#: The ranges of ``profile``'s and ``profile-load``'s numeric options checked here (the
#: counts have typer's own bounds).
PROFILE_RANGES: dict[str, Range] = {"--seq-len": Range(1, 1_048_576, "2048")}
#: ``profile-import --seq-len``: 0 means "not given" (neither format records it).
IMPORT_RANGES: dict[str, Range] = {"--seq-len": Range(0, 1_048_576, "2048")}


def _int_list(text: str, option: str) -> tuple[int, ...]:
    return tuple(sorted(set(parse_int_list(text, option=option))))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def _default_chip(handle) -> str:
    """``cpu-<model>-<n>c`` on the CPU; on an accelerator the library chip whose name or
    alias the device name contains (longest match), else a slug of the device name."""
    from autosplit.profiler.device import cpu_model_name, device_description

    if handle.is_cpu:
        name = re.sub(r"\(r\)|\(tm\)|processor|cpu|@.*", "", cpu_model_name().lower())
        return f"cpu-{_slug(name)}-{os.cpu_count() or 1}c"
    described = device_description(handle)
    try:
        from autosplit.chips.library import load_chip_library

        library = load_chip_library()
    except BadInputError:
        library = {}
    best = ""
    for chip in library.values():
        for label in (chip.name, *chip.aliases):
            if re.search(rf"\b{re.escape(label.lower())}\b", described.lower()) \
                    and len(label) > len(best):
                best = chip.name
    return best or _slug(described)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[step]}"), TimeElapsedColumn(), console=_console,
                    transient=False)


def _command(parts: list[str]) -> str:
    return " ".join(shlex.quote(p) for p in parts)


def _apply_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def profile(
    model: str = typer.Argument(..., help="The model file (build_model, example_batch)."),
    device: str = typer.Option("cpu", "--device", "-d", help="torch device: cpu, cuda, cuda:1, "
                               "npu, xpu, mlu …"),
    chip: str = typer.Option("", "--chip", help="Chip name the rows are stored under "
                             "(default: derived from the device)."),
    micro_batch: str = typer.Option("1,2,4", "--micro-batch", help="Micro-batch sizes."),
    tp: str = typer.Option("1", "--tp", help="Tensor-parallel degrees (tp>1 is estimated from "
                           "Linear calls re-timed at 1/tp shapes; see docs/profiles.md)."),
    seq_len: int = typer.Option(2048, "--seq-len", help="Sequence length."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp16 or fp32."),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a", help="KEY=VALUE for "
                                        "build_model (repeatable)."),
    repeats: int = typer.Option(10, "--repeats", min=1, help="Timed runs (median kept)."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed runs first."),
    max_spread: float = typer.Option(0.03, "--max-spread", help="Take a unit's runs again "
                                     "while their spread (interquartile range over the "
                                     "median) is above this (0.03 = 3 %)."),
    max_rounds: int = typer.Option(5, "--max-rounds", min=1, max=100, help="At most this many "
                                   "sets of --repeats runs per unit and micro-batch."),
    fresh_grads: bool = typer.Option(False, "--fresh-grads", help="Time each backward into "
                                     "freshly allocated weight gradients (a step's first "
                                     "micro-batch) instead of adding into existing ones (every "
                                     "later micro-batch, the default)."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0: PyTorch's "
                                "default)."),
    load: str = typer.Option("", "--load", help="What the device's other clients ran "
                             "meanwhile (e.g. 'h200-mps33, h200-mps20: profile-load gpt.py "
                             "size=1.3b mb 2'), stored with every row; see docs/profiles.md."),
    output: Path = typer.Option(..., "--output", "-o", help="CSV file to write "
                                "(e.g. profiles/<chip>/measured/<model>.csv)."),
) -> None:
    """Measure forward, backward, recompute and activation memory of each distinct layer kind."""
    from autosplit.model.cache import ingest_model_cached
    from autosplit.profiler.device import open_device
    from autosplit.profiler.layer_bench import ProfileSettings, count_steps, profile_model
    from autosplit.profiler.store import write_rows

    check_ranges({"--seq-len": seq_len}, PROFILE_RANGES)
    check_choice(dtype, list(DTYPE_BYTES), "--dtype")
    check_output_file(output, option="--output", allow_stdout=False)
    if not 0 < max_spread < 10:  # also refuses NaN
        raise BadInputError(f"{max_spread} is not a spread between 0 and 10", field="--max-spread",
                            fix="e.g. --max-spread 0.03 (3 %)")
    args = parse_model_args(model_arg)
    settings = ProfileSettings(micro_batches=_int_list(micro_batch, "--micro-batch"),
                               tps=_int_list(tp, "--tp"), seq_len=seq_len, dtype=dtype,
                               repeats=repeats, warmup=warmup, max_spread=max_spread,
                               max_rounds=max_rounds, accumulate_grads=not fresh_grads)
    handle = open_device(device)
    _apply_threads(threads)
    chip_name = chip or _default_chip(handle)
    command = _command(
        ["autosplit", "profile", model, "--device", device, "--chip", chip_name,
         "--micro-batch", ",".join(map(str, settings.micro_batches)),
         "--tp", ",".join(map(str, settings.tps)), "--seq-len", str(seq_len),
         "--dtype", dtype, *[f"--model-arg={k}={v}" for k, v in sorted(args.items())],
         "--repeats", str(repeats), "--warmup", str(warmup), "--max-spread", str(max_spread),
         "--max-rounds", str(max_rounds), *(["--fresh-grads"] if fresh_grads else []),
         *(["--threads", str(threads)] if threads else []),
         *(["--load", load] if load else []), "-o", str(output)])
    _console.print(f"ingesting {model} …")
    # In a child process first (cached): a model file that exits, loops or crashes at
    # import is reported with exit 2 before it is imported here to be measured.
    ingested = ingest_model_cached(model, model_args=args, seq_len=seq_len, dtype=dtype)
    with _progress() as bar:
        task = bar.add_task(f"profiling on {chip_name}", total=count_steps(ingested, settings),
                            step="")

        def advance(label: str) -> None:
            bar.update(task, advance=1, step=label)

        rows = profile_model(model, model_args=args, settings=settings, handle=handle,
                             chip=chip_name, command=command, profile=ingested,
                             progress=advance)
    if load:
        rows = [replace(r, load=load) for r in rows]
    write_rows(rows, output)
    Console().print(_rows_table(rows, title=f"{ingested.name} on {chip_name} (seq {seq_len}, "
                                f"{dtype}, timed by {rows[0].timer})"))
    for line in noisy_rows(rows, max_spread=max_spread):
        _console.print(f"[yellow]note:[/] {line}", highlight=False)
    _console.print(f"wrote {len(rows)} rows to {output}")


def _rows_table(rows: Sequence[ProfileRow], *, title: str) -> Table:
    """Each row's times, memory, spread and the rounds it took."""
    table = Table(title=title)
    for column in ("unit", "mb", "tp", "fwd ms", "bwd ms", "rc+bwd ms", "act MiB", "spread",
                   "rounds", "method"):
        table.add_column(column, justify="left" if column in ("unit", "method") else "right",
                         no_wrap=column == "method")
    for r in rows:
        act = "" if r.activation_bytes != r.activation_bytes else f"{r.activation_bytes/2**20:.1f}"
        table.add_row(r.unit, str(r.micro_batch), str(r.tp), f"{r.fwd_s*1e3:.3f}",
                      f"{r.bwd_s*1e3:.3f}", f"{r.recompute_bwd_s*1e3:.3f}", act,
                      f"{r.spread:.1%}", str(r.rounds), r.method)
    return table


def noisy_rows(rows: Sequence[ProfileRow], *, max_spread: float) -> list[str]:
    """One line per measurement whose spread stayed above the target (the rows of one unit
    and micro-batch at several TP degrees share one measurement, so it is named once)."""
    first: dict[tuple[str, int], ProfileRow] = {}
    for r in sorted(rows, key=lambda r: r.tp):
        first.setdefault((r.unit, r.micro_batch), r)
    return [f"{r.unit} mb={r.micro_batch}: spread {r.spread:.1%} is still above "
            f"{max_spread:.1%} after {r.rounds} round(s) of {r.repeats} runs; its times are "
            "the steadiest round's. Re-run on an idle device, or raise --repeats or "
            "--max-rounds" for r in first.values() if r.spread > max_spread]


def profile_chip(
    device: str = typer.Option("cpu", "--device", "-d", help="torch device."),
    chip: str = typer.Option("", "--chip", help="Chip name (default: derived from the device)."),
    repeats: int = typer.Option(10, "--repeats", min=1),
    warmup: int = typer.Option(3, "--warmup", min=0),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0: default)."),
    output: Path = typer.Option(..., "--output", "-o", help="CSV file for the results."),
    write_chip: bool = typer.Option(False, "--write-chip", help="Write a calibrated chip.yaml "
                                    "(measured efficiencies, provenance, command)."),
    chip_file: Path | None = typer.Option(None, "--chip-file", help="Where --write-chip "
                                          "writes (default: profiles/<chip>/chip.yaml); an "
                                          "existing file there is the base that is updated."),
    sweep: bool = typer.Option(True, "--sweep/--no-sweep", help="Also sweep GEMM shapes, "
                               "memory-bound kernels and attention, and fit the compute "
                               "surface (written to <output>-sweep.csv)."),
    links: bool = typer.Option(False, "--links", help="Also time p2p and all-reduce between "
                               "two processes (NCCL with two GPUs, else gloo) and fit latency "
                               "and bandwidth (written to <output>-links.csv)."),
) -> None:
    """GEMM throughput over sizes, memory bandwidth and host↔device copy bandwidth; the
    kernel-shape sweep and its fitted compute surface; optionally the link benchmark."""
    from autosplit.inputs.yaml_file import read_yaml_mapping
    from autosplit.profiler.calibrate import calibrated_chip, write_chip_yaml
    from autosplit.profiler.chip_bench import ChipBenchSettings, run_chip_bench, write_bench
    from autosplit.profiler.device import open_device
    from autosplit.profiler.store import profiles_root

    check_output_file(output, option="--output", allow_stdout=False)
    for suffix, wanted in (("-sweep.csv", sweep), ("-links.csv", links)):
        if wanted:
            check_output_file(output.with_name(output.stem + suffix), option="--output",
                              allow_stdout=False)
    if chip_file is not None:
        check_output_file(chip_file, option="--chip-file", allow_stdout=False)
    handle = open_device(device)
    _apply_threads(threads)
    chip_name = chip or _default_chip(handle)
    if write_chip and chip_file is None:
        check_output_file(profiles_root() / chip_name.lower() / "chip.yaml",
                          option="--write-chip", allow_stdout=False)
    settings = ChipBenchSettings.defaults_for(handle, repeats=repeats, warmup=warmup)
    command = _command(["autosplit", "profile-chip", "--device", device, "--chip", chip_name,
                        "--repeats", str(repeats), "--warmup", str(warmup),
                        *(["--threads", str(threads)] if threads else []), "-o", str(output)]
                       + (["--write-chip"] if write_chip else [])
                       + (["--chip-file", str(chip_file)] if chip_file else [])
                       + ([] if sweep else ["--no-sweep"]) + (["--links"] if links else []))
    total = len(settings.gemm_sizes) * len(settings.gemm_dtypes) + 1 + (
        2 if settings.host_copy_bytes and not handle.is_cpu else 0)
    with _progress() as bar:
        task = bar.add_task(f"benchmarking {chip_name}", total=total, step="")
        results = run_chip_bench(handle, chip=chip_name, settings=settings, command=command,
                                 progress=lambda s: bar.update(task, advance=1, step=s))
    write_bench(results, output)
    table = Table(title=f"{chip_name}: {results[0].device}")
    for column in ("benchmark", "dtype", "size", "ms", "rate", "spread"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r.benchmark, r.dtype, str(r.size), f"{r.seconds*1e3:.3f}",
                      f"{r.rate:.1f} {r.unit}", f"{r.spread:.1%}")
    Console().print(table)
    _console.print(f"wrote {output}")
    # The chip file, where there is one, gives the datasheet peaks the surface is fitted
    # against (and is the base --write-chip updates).
    target = chip_file or profiles_root() / chip_name.lower() / "chip.yaml"
    base = read_yaml_mapping(target, what="chip file") if target.is_file() else None
    data = calibrated_chip(results, chip=chip_name, base=base, command=command)
    if sweep:
        data = _chip_sweep(handle, data, chip=chip_name, output=output, command=command,
                           repeats=repeats, warmup=warmup)
    if links:
        data = _chip_links(handle, data, output=output, command=command, repeats=repeats,
                           warmup=warmup)
    if write_chip:
        write_chip_yaml(data, target, header=f"Calibrated by: {command}")
        _console.print(f"wrote calibrated chip entry {target} (compute_efficiency "
                       f"{data.get('compute_efficiency')}, memory_efficiency "
                       f"{data.get('memory_efficiency')})")


def _chip_sweep(handle, data: dict, *, chip: str, output: Path, command: str, repeats: int,
                warmup: int) -> dict:
    """Run the kernel sweep, fit the surface against ``data``'s peaks, print the fit."""
    from autosplit.profiler.calibrate import surface_peaks, with_surface
    from autosplit.profiler.kernel_sweep import SweepSettings, run_sweep, sweep_size, write_sweep
    from autosplit.profiler.surface_fit import fit_surface, surface_entry

    settings = SweepSettings.defaults_for(handle, repeats=repeats, warmup=warmup)
    with _progress() as bar:
        task = bar.add_task(f"sweeping {chip}", total=sweep_size(settings), step="")
        rows = run_sweep(handle, chip=chip, settings=settings, command=command,
                         progress=lambda s: bar.update(task, advance=1, step=s))
    path = write_sweep(rows, output.with_name(output.stem + "-sweep.csv"))
    fit = fit_surface(rows, peaks_tflops=surface_peaks(data),
                      memory_bw_gbs=float(data["memory_bw_gbs"]),
                      source=f"`{command}` on {rows[0].device}, {rows[0].date}")
    table = Table(title=f"{chip}: compute surface fitted to {len(rows)} kernels")
    for column in ("kernels", "fit", "median error", "worst error"):
        table.add_column(column, justify="right")
    s = fit.surface
    for name, (med, worst) in fit.errors.items():
        if name.startswith("gemm-"):
            f = s.fit(name[5:])
            desc = (f"eta_max {f.peak_fraction:.3f}, halves {f.m_half:g}/{f.n_half:g}/"
                    f"{f.k_half:g}")
        elif name == "memory":
            desc = f"launch {s.launch_s * 1e6:.2f} us, {s.memory_fraction:.3f} of bandwidth"
        else:
            desc = f"{s.attention_fraction:.3f} of a GEMM's rate"
        table.add_row(name, desc, f"{med:.1%}", f"{worst:.1%}")
    Console().print(table)
    _console.print(f"wrote {path}")
    return with_surface(data, surface_entry(fit.surface))


def _chip_links(handle, data: dict, *, output: Path, command: str, repeats: int,
                warmup: int) -> dict:
    """Run the two-process link benchmark and fit α-β to its point-to-point rows."""
    import torch

    from autosplit.atomic import atomic_write_text
    from autosplit.profiler.calibrate import with_links
    from autosplit.profiler.link_bench import fit_alpha_beta, run_link_bench

    two_gpus = handle.device.type == "cuda" and torch.cuda.device_count() >= 2
    backend = "nccl" if two_gpus else "gloo"
    _console.print(f"timing p2p and all-reduce between two processes over {backend}")
    rows = run_link_bench(backend=backend, repeats=repeats, warmup=warmup)
    path = output.with_name(output.stem + "-links.csv")
    lines = ["kind,backend,nbytes,seconds"] + [f"{r.kind},{r.backend},{r.nbytes},{r.seconds!r}"
                                               for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
    fits = [fit_alpha_beta(rows, kind) for kind in ("p2p", "all_reduce")]
    table = Table(title=f"links over {backend}")
    for column in ("kind", "alpha (us)", "beta (GB/s)", "median error", "worst error"):
        table.add_column(column, justify="right")
    for f in fits:
        table.add_row(f.kind, f"{f.alpha_s * 1e6:.1f}", f"{f.beta_gbs:.2f}",
                      f"{f.median_error:.1%}", f"{f.worst_error:.1%}")
    Console().print(table)
    _console.print(f"wrote {path}")
    p2p = fits[0]
    return with_links(data, alpha_s=p2p.alpha_s, beta_gbs=p2p.beta_gbs,
                      source=f"{backend} p2p ping-pong, 4 KiB-64 MiB, alpha-beta fit; "
                             f"`{command}`")


def profile_import(
    path: Path = typer.Argument(..., help="Sailor profile folder (<model>/ or <model>/<gpu>/) "
                                "or profile.json, or Metis profile folder or file."),
    fmt: str = typer.Option(..., "--format", "-f", help="sailor or metis."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory: written to "
                                "DIR/<chip>/measured/imported-<format>-<model>-s<N>-<dtype>.csv."),
    seq_len: int = typer.Option(0, "--seq-len", help="Sequence length the profile was taken "
                                "at (neither format records it)."),
    chip: str = typer.Option("", "--chip", help="Library chip the rows are stored under "
                             "(default: Sailor's GPU folder name or Metis' GPU type, mapped to "
                             "a library chip)."),
    chips_dir: list[Path] = typer.Option([], "--chips-dir", help="Extra chip directories "
                                         "where GPU names are looked up (repeatable)."),
    model: str = typer.Option("", "--model", help="The model file the profile was taken of: "
                              "rows then carry its layer kinds, so searches on it use them."),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a", help="KEY=VALUE for "
                                        "build_model (with --model)."),
    model_name: str = typer.Option("", "--model-name", help="Name used in file names, generic "
                                   "kinds and Sailor's llm_info.json (default: from the "
                                   "files)."),
    llm_info: Path | None = typer.Option(None, "--llm-info", help="Sailor: llm_info.json with "
                                         "activation memory (default: found beside the "
                                         "profile or above it)."),
    dtype: str = typer.Option("bf16", "--dtype", help="dtype the profile was taken in."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress line (the files "
                               "written and the notes are still printed)."),
) -> None:
    """Convert Sailor or Metis profiles into autosplit's profile store."""
    from autosplit.profiler.importers import UnitKinds, import_profiles

    check_ranges({"--seq-len": seq_len}, IMPORT_RANGES)
    check_choice(dtype, list(DTYPE_BYTES), "--dtype")
    check_output_folder(output, option="--output")
    units = None
    if model:
        units = UnitKinds.from_model(model, model_args=parse_model_args(model_arg),
                                     seq_len=seq_len or 2048, dtype=dtype)
    command = _command(["autosplit", "profile-import", str(path), "--format", fmt, "-o",
                        str(output)] + (["--seq-len", str(seq_len)] if seq_len else [])
                       + (["--chip", chip] if chip else []) + (["--model", model] if model else [])
                       + [f"--model-arg={a}" for a in model_arg]
                       + (["--model-name", model_name] if model_name else [])
                       + (["--llm-info", str(llm_info)] if llm_info else [])
                       + ["--dtype", dtype])
    with reporter(quiet=quiet).phase(f"importing {fmt} profiles") as shown:
        report = import_profiles(path, fmt=fmt, output=output, chip=chip or None,
                                 model_name=model_name or None, seq_len=seq_len or None,
                                 dtype=dtype, units=units, command=command,
                                 chip_dirs=tuple(chips_dir), llm_info=llm_info,
                                 progress=lambda event: shown.update(import_line(event)))
    for note in report.notes:
        _console.print(f"[yellow]note:[/] {note}", highlight=False)
    for file in report.files:
        _console.print(f"wrote {file}")
    _console.print(f"{report.rows} rows in {len(report.files)} file(s)")


def profile_load(
    model: str = typer.Argument(..., help="The model file the neighbours train."),
    device: str = typer.Option("cuda", "--device", "-d", help="torch device."),
    micro_batch: int = typer.Option(1, "--micro-batch", min=1, help="Training micro-batch."),
    seq_len: int = typer.Option(2048, "--seq-len", help="Sequence length."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp16 or fp32."),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a", help="KEY=VALUE for "
                                        "build_model (repeatable)."),
    until: Path | None = typer.Option(None, "--until", help="Stop when this file exists."),
    ready: Path | None = typer.Option(None, "--ready", help="Create this file once the first "
                                      "training step has run (a script waits for it)."),
    limit: float = typer.Option(600.0, "--limit", help="Stop after this many seconds at the "
                                "latest."),
) -> None:
    """Train the model (forward, loss, backward) in a loop: the load of a training neighbour.

    Run it in the other clients of a shared device (CUDA MPS) while `autosplit profile` measures
    one of them, so the profile is taken under the kernels and memory traffic training puts
    on the card (docs/profiles.md, "Profiling under load").
    """
    from autosplit.profiler.device import open_device
    from autosplit.profiler.load import LoadSettings, run_training_load

    check_ranges({"--seq-len": seq_len}, PROFILE_RANGES)
    check_choice(dtype, list(DTYPE_BYTES), "--dtype")
    if not 0 < limit < 86400:  # also refuses NaN
        raise BadInputError(f"{limit} is not a number of seconds in (0, 86400)", field="--limit",
                            fix="e.g. --limit 600")
    if until is not None and until.exists():
        raise BadInputError("the stop file exists already: the load would stop at once",
                            file=str(until), field="--until",
                            fix="remove it first, or name a file that does not exist yet")
    settings = LoadSettings(micro_batch=micro_batch, seq_len=seq_len, dtype=dtype,
                            stop_file=until, limit_s=limit, ready_file=ready)
    handle = open_device(device)
    args = parse_model_args(model_arg)
    # Vetted in a child process first (cached), as `profile` does: a model file that exits
    # at import would otherwise end this command with exit 0 and no message.
    from autosplit.model.cache import ingest_model_cached

    ingest_model_cached(model, model_args=args, seq_len=seq_len, dtype=dtype)
    shown = [0.0]

    def progress(steps: int, seconds: float) -> None:
        if seconds - shown[0] >= 10:
            shown[0] = seconds
            _console.print(f"{steps} training steps, {seconds:.0f} s")

    report = run_training_load(model, model_args=args, settings=settings, handle=handle,
                               progress=progress)
    _console.print(f"{report.steps} training steps of {model} (micro-batch {micro_batch}) in "
                   f"{report.seconds:.1f} s, {report.step_s * 1e3:.1f} ms each; stopped by the "
                   f"{report.stopped_by}")


def register(app: typer.Typer) -> None:
    """Add the profiling commands to the app."""
    app.command("profile")(profile)
    app.command("profile-chip")(profile_chip)
    app.command("profile-import")(profile_import)
    app.command("profile-load")(profile_load)
