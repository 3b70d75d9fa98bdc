"""``autosplit profile``, ``profile-chip`` and ``profile-import``: measured costs on real chips.

- ``profile MODEL.py --device cuda -o FILE`` times forward, backward and recompute + backward of
  every distinct layer kind and measures its activation memory, writing the profile store CSV.
- ``profile-chip --device cuda -o FILE`` runs the GEMM / memory / host-copy micro-benchmarks and,
  with ``--write-chip``, writes a calibrated ``chip.yaml``.
- ``profile-import --format sailor|metis PATH -o DIR`` converts other planners' profiles.

Three sibling commands rather than one ``profile`` group, because ``profile`` takes the model
file as its first argument and a sub-command name there would be ambiguous.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autosplit.cli._common import parse_int_list, parse_model_args
from autosplit.errors import BadInputError

__all__ = ["register"]

_console = Console(stderr=True)


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
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0: PyTorch's "
                                "default)."),
    output: Path = typer.Option(..., "--output", "-o", help="CSV file to write "
                                "(e.g. profiles/<chip>/measured/<model>.csv)."),
) -> None:
    """Measure forward, backward, recompute and activation memory of each distinct layer kind."""
    from autosplit.model.ingest import ingest_model
    from autosplit.profiler.device import open_device
    from autosplit.profiler.layer_bench import ProfileSettings, count_steps, profile_model
    from autosplit.profiler.store import write_rows

    if seq_len < 1:
        raise BadInputError("must be positive", field="--seq-len", fix="e.g. --seq-len 2048")
    args = parse_model_args(model_arg)
    settings = ProfileSettings(micro_batches=_int_list(micro_batch, "--micro-batch"),
                               tps=_int_list(tp, "--tp"), seq_len=seq_len, dtype=dtype,
                               repeats=repeats, warmup=warmup)
    handle = open_device(device)
    _apply_threads(threads)
    chip_name = chip or _default_chip(handle)
    command = _command(
        ["autosplit", "profile", model, "--device", device, "--chip", chip_name,
         "--micro-batch", ",".join(map(str, settings.micro_batches)),
         "--tp", ",".join(map(str, settings.tps)), "--seq-len", str(seq_len),
         "--dtype", dtype, *[f"--model-arg={k}={v}" for k, v in sorted(args.items())],
         "--repeats", str(repeats), "--warmup", str(warmup),
         *(["--threads", str(threads)] if threads else []), "-o", str(output)])
    _console.print(f"ingesting {model} …")
    ingested = ingest_model(model, model_args=args, seq_len=seq_len, dtype=dtype)
    with _progress() as bar:
        task = bar.add_task(f"profiling on {chip_name}", total=count_steps(ingested, settings),
                            step="")

        def advance(label: str) -> None:
            bar.update(task, advance=1, step=label)

        rows = profile_model(model, model_args=args, settings=settings, handle=handle,
                             chip=chip_name, command=command, profile=ingested,
                             progress=advance)
    write_rows(rows, output)
    table = Table(title=f"{ingested.name} on {chip_name} (seq {seq_len}, {dtype})")
    for column in ("unit", "mb", "tp", "fwd ms", "bwd ms", "rc+bwd ms", "act MiB", "spread",
                   "method"):
        table.add_column(column, justify="left" if column in ("unit", "method") else "right",
                         no_wrap=column == "method")
    for r in rows:
        act = "" if r.activation_bytes != r.activation_bytes else f"{r.activation_bytes/2**20:.1f}"
        table.add_row(r.unit, str(r.micro_batch), str(r.tp), f"{r.fwd_s*1e3:.3f}",
                      f"{r.bwd_s*1e3:.3f}", f"{r.recompute_bwd_s*1e3:.3f}", act,
                      f"{r.spread:.1%}", r.method)
    Console().print(table)
    _console.print(f"wrote {len(rows)} rows to {output}")


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
) -> None:
    """GEMM throughput over sizes, memory bandwidth and host↔device copy bandwidth."""
    from autosplit.chips.library import read_yaml_mapping
    from autosplit.profiler.calibrate import calibrated_chip, write_chip_yaml
    from autosplit.profiler.chip_bench import ChipBenchSettings, run_chip_bench, write_bench
    from autosplit.profiler.device import open_device
    from autosplit.profiler.store import profiles_root

    handle = open_device(device)
    _apply_threads(threads)
    chip_name = chip or _default_chip(handle)
    settings = ChipBenchSettings.defaults_for(handle, repeats=repeats, warmup=warmup)
    command = _command(["autosplit", "profile-chip", "--device", device, "--chip", chip_name,
                        "--repeats", str(repeats), "--warmup", str(warmup),
                        *(["--threads", str(threads)] if threads else []), "-o", str(output)]
                       + (["--write-chip"] if write_chip else [])
                       + (["--chip-file", str(chip_file)] if chip_file else []))
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
    if write_chip:
        target = chip_file or profiles_root() / chip_name.lower() / "chip.yaml"
        base = read_yaml_mapping(target, what="chip file") if target.is_file() else None
        data = calibrated_chip(results, chip=chip_name, base=base, command=command)
        write_chip_yaml(data, target, header=f"Calibrated by: {command}")
        _console.print(f"wrote calibrated chip entry {target} (compute_efficiency "
                       f"{data.get('compute_efficiency')}, memory_efficiency "
                       f"{data.get('memory_efficiency')})")


def profile_import(
    path: Path = typer.Argument(..., help="Sailor profile folder or profile.json, or Metis "
                                "profile folder or file."),
    fmt: str = typer.Option(..., "--format", "-f", help="sailor or metis."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory: written to "
                                "DIR/<chip>/measured/imported-<format>-<model>-s<N>-<dtype>.csv."),
    seq_len: int = typer.Option(0, "--seq-len", help="Sequence length the profile was taken "
                                "at (neither format records it)."),
    chip: str = typer.Option("", "--chip", help="Chip name (default: Sailor's GPU folder name, "
                             "Metis' GPU type from the file name)."),
    model: str = typer.Option("", "--model", help="The model file the profile was taken of: "
                              "rows then carry its layer kinds, so searches on it use them."),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a", help="KEY=VALUE for "
                                        "build_model (with --model)."),
    model_name: str = typer.Option("", "--model-name", help="Name used in file names and "
                                   "generic kinds (default: from the files)."),
    dtype: str = typer.Option("bf16", "--dtype", help="dtype the profile was taken in."),
) -> None:
    """Convert Sailor or Metis profiles into autosplit's profile store."""
    from autosplit.profiler.importers import UnitKinds, import_profiles

    units = None
    if model:
        units = UnitKinds.from_model(model, model_args=parse_model_args(model_arg),
                                     seq_len=seq_len or 2048, dtype=dtype)
    command = _command(["autosplit", "profile-import", str(path), "--format", fmt, "-o",
                        str(output)] + (["--seq-len", str(seq_len)] if seq_len else [])
                       + (["--chip", chip] if chip else []) + (["--model", model] if model else [])
                       + [f"--model-arg={a}" for a in model_arg]
                       + (["--model-name", model_name] if model_name else [])
                       + ["--dtype", dtype])
    written = import_profiles(path, fmt=fmt, output=output, chip=chip or None,
                              model_name=model_name or None, seq_len=seq_len or None,
                              dtype=dtype, units=units, command=command)
    for file in written:
        _console.print(f"wrote {file}")


def register(app: typer.Typer) -> None:
    """Add the three profiling commands to the app."""
    app.command("profile")(profile)
    app.command("profile-chip")(profile_chip)
    app.command("profile-import")(profile_import)
