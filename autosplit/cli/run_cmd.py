"""``autosplit run`` executes a plan for real; ``autosplit validate`` compares the prediction
with what the run measured."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from autosplit.cli._common import parse_model_args
from autosplit.cli.outputs import check_output_file, write_output
from autosplit.cli.ranges import Range, check_ranges
from autosplit.errors import BadInputError
from autosplit.runtime.config import DEFAULT_GRAD_CLIP, DEFAULT_LR

__all__ = ["register", "RUN_RANGES"]

#: The ranges of ``autosplit run``'s numeric options.
RUN_RANGES: dict[str, Range] = {
    "--steps": Range(1, 1_000_000, "10"),
    "--warmup": Range(0, 1_000_000, "3"),
    "--seed": Range(0, 2**63 - 1, "0"),
    "--timeout": Range(0, 604_800, "600", low_open=True),
    "--lr": Range(0, 10, "3e-4", low_open=True),
    "--grad-clip": Range(0, 1e6, "1.0 (or 0: no clipping)"),
}


def _parse_cuda_devices(text: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BadInputError(f"{text!r} is not a comma-separated list of GPU indices",
                            field="--cuda-devices", fix="e.g. --cuda-devices 0,1 or 0,0") from None
    if any(v < 0 for v in values):
        raise BadInputError("GPU indices cannot be negative", field="--cuda-devices",
                            fix="e.g. --cuda-devices 0,1")
    return values


def _parse_rank_env(items: list[str]) -> dict[int, dict[str, str]]:
    out: dict[int, dict[str, str]] = {}
    for item in items:
        rank_text, sep, assignment = item.partition(":")
        name, eq, value = assignment.partition("=")
        if not sep or not eq or not name or not rank_text.strip().isdigit():
            raise BadInputError(f"--rank-env {item!r} is not RANK:NAME=VALUE",
                                field="--rank-env",
                                fix="e.g. --rank-env 0:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=75")
        out.setdefault(int(rank_text), {})[name.strip()] = value
    return out


def _gb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e9:.2f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}%"


def run(
    plan_file: Path = typer.Argument(..., help="Plan JSON (from `autosplit search`)."),
    model: Path | None = typer.Argument(None, help="Model file (default: the plan's)."),
    steps: int = typer.Option(10, "--steps", help="Optimizer steps to run."),
    warmup: int = typer.Option(3, "--warmup", help="Steps left out of the median."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    backend: str | None = typer.Option(
        None, "--backend", help="gloo or nccl (default: nccl on cuda, gloo on cpu). gloo with "
        "--device cuda sends stage boundaries through host memory (the CPU relay)."),
    model_arg: list[str] = typer.Option([], "--model-arg", "-a",
                                        help="Override the plan's model args (KEY=VALUE)."),
    cuda_devices: str = typer.Option(
        "", "--cuda-devices", help="GPU index per rank, e.g. 0,1; repeat an index to share a "
        "GPU (CUDA MPS)."),
    rank_env: list[str] = typer.Option(
        [], "--rank-env", help="RANK:NAME=VALUE environment for one rank, set before CUDA "
        "starts (e.g. 0:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=75)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and synthetic data."),
    output: Path = typer.Option(Path("measured.json"), "--output", "-o",
                                help="Where to write the measurements."),
    timeout: float | None = typer.Option(None, "--timeout", help="Give up after this many s."),
    as_json: bool = typer.Option(False, "--json", help="Print the measured JSON."),
    attention_backend: str = typer.Option(
        "", "--attention-backend", help="Restrict scaled-dot-product attention to one "
        "backend: math | flash | efficient | cudnn (default: PyTorch's choice)."),
    precision: str = typer.Option(
        "master", "--precision", help="bf16/fp16 plans: master (weights and gradients in the "
        "plan's dtype, fp32 master weights in the optimizer, as Megatron-LM) or autocast "
        "(fp32 weights, forward under torch.autocast)."),
    dtype: str = typer.Option(
        "", "--dtype", help="Compute dtype bf16 | fp16 | fp32 (default: the plan's on cuda, "
        "fp32 on cpu)."),
    lr: float = typer.Option(DEFAULT_LR, "--lr", help="AdamW learning rate."),
    grad_clip: float = typer.Option(
        DEFAULT_GRAD_CLIP, "--grad-clip", help="Clip gradients to this global L2 norm over "
        "all stages (0: no clipping)."),
    dump_params: str = typer.Option("", "--dump-params", hidden=True,
                                     help="Save each stage's parameters here after the run."),
) -> None:
    """Train PLAN for a few steps on synthetic data and measure it."""
    check_ranges({"--steps": steps, "--warmup": warmup, "--seed": seed, "--lr": lr,
                  "--grad-clip": grad_clip, **({"--timeout": timeout} if timeout is not None
                                               else {})}, RUN_RANGES)
    check_output_file(output, option="--output", allow_stdout=False)
    # After the checks: importing the runtime imports PyTorch, seconds on a small machine.
    from autosplit.plan.io import load_plan, plan_sources
    from autosplit.runtime.launch import RunRequest, launch, prepare_run, under_torchrun


    model_path = str(model) if model else plan_sources(load_plan(plan_file),
                                                       plan_file).model_file
    request = RunRequest(
        plan_path=str(plan_file), model_path=model_path,
        model_args=parse_model_args(model_arg), steps=steps, warmup=warmup, device=device,
        backend=backend, cuda_devices=_parse_cuda_devices(cuda_devices),
        rank_env=_parse_rank_env(rank_env), seed=seed, output=str(output),
        dump_params_dir=dump_params, attention_backend=attention_backend,
        precision=precision, dtype=dtype, lr=lr, grad_clip=grad_clip)
    config, world = prepare_run(request)
    console = Console()
    if not under_torchrun() and not as_json:
        relay = " (CPU relay)" if config.cpu_relay else ""
        precision = (f", {config.dtype} {config.precision}" if config.dtype != "fp32"
                     else ", fp32")
        console.print(f"running {world} rank(s) on {config.device}, {config.backend}{relay}"
                      f"{precision}, {steps} steps ({warmup} warm-up)")
    measured = launch(config, world, timeout_s=timeout)
    if measured is None:
        return
    if as_json:
        typer.echo(json.dumps(measured.to_dict(), indent=2, sort_keys=True))
        return
    table = Table(title="measured run")
    for col in ("rank", "stage", "replica", "tp", "device", "params", "peak memory GB"):
        table.add_column(col)
    for r in measured.ranks:
        table.add_row(str(r.rank), str(r.stage), str(r.replica), str(r.tp_index),
                      r.device_name, f"{r.params:,}", _gb(r.peak_memory_bytes))
    console.print(table)
    for r in measured.ranks:
        for note in r.notes:
            console.print(f"[yellow]rank {r.rank}:[/] {note}")
    loss = (f", loss {measured.loss[0]:.4f} -> {measured.loss[-1]:.4f}" if measured.loss
            else "")
    norms = measured.ranks[0].grad_norms if measured.ranks else ()
    if norms:
        loss += f", gradient norm {norms[0]:.3g} -> {norms[-1]:.3g}"
    console.print(f"median step {measured.median_step_s * 1e3:.1f} ms, "
                  f"{measured.tokens_per_s:,.0f} tokens/s{loss}")
    console.print(f"written to {output}")


def validate(
    plan_file: Path = typer.Argument(..., help="Plan JSON with a prediction."),
    measured_file: Path = typer.Argument(..., help="measured.json from `autosplit run`."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Write the comparison JSON here."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison JSON."),
) -> None:
    """Compare PLAN's predicted iteration time and memory with a measured run."""
    from autosplit.inputs.files import check_input_file
    from autosplit.plan.io import load_plan
    from autosplit.runtime.measure import load_measured
    from autosplit.runtime.validate import compare

    out = check_output_file(output, option="--output")
    as_json = as_json or bool(out and out.to_stdout)
    plan = load_plan(plan_file)
    check_input_file(measured_file, what="measured-run file")
    measured = load_measured(str(measured_file))
    result = compare(plan, measured, plan_path=str(plan_file),
                     measured_path=str(measured_file))
    text = json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n"
    if out and out.path is not None:
        write_output(out, text)
    if as_json:
        typer.echo(text, nl=False)
        return
    console = Console()
    table = Table(title=f"predicted vs measured ({result.device}, {result.backend}"
                        f"{', CPU relay' if result.cpu_relay else ''})",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    # Predicted and measured side by side in one cell each: readable at 80 columns.
    for col in ("stage", "chip", "ranks", "memory GB pred. / meas.", "error",
                "compute ms pred. / meas.", "error"):
        table.add_column(col, justify="left" if col in ("chip", "ranks") else "right")
    for s in result.stages:
        table.add_row(str(s.stage), s.chip, ",".join(map(str, s.ranks)),
                      f"{_gb(s.predicted_memory_bytes)} / {_gb(s.measured_memory_bytes)}",
                      _pct(s.memory_error_pct),
                      f"{_ms(s.predicted_compute_s)} / {_ms(s.measured_compute_s)}",
                      _pct(s.compute_error_pct))
    console.print(table)
    console.print(
        f"iteration: predicted {result.predicted_iteration_s * 1e3:.1f} ms, measured "
        f"{result.measured_iteration_s * 1e3:.1f} ms (median of {result.measured_steps}), "
        f"error {_pct(result.iteration_error_pct)}")
    console.print(f"tokens/s: predicted {result.predicted_tokens_per_s:,.0f}, measured "
                  f"{result.measured_tokens_per_s:,.0f}")
    if out:
        console.print(f"written to {out}")


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``validate`` to the app."""
    app.command("run")(run)
    app.command("validate")(validate)
