"""`autosplit export`: hand a plan to Megatron-LM, torchtitan, DeepSpeed or Kubernetes (HAMi).

The uniform runtimes cannot run every plan, so the command first says what the target cannot
express, projects the plan to the nearest one it can (re-costed against the model and cluster
the plan was made for) and prints the loss, then writes the projected plan in the target's
terms. Messages go to stderr, the export to ``-o`` or stdout, so the output can be piped.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer
from rich.console import Console

from autosplit.cli.outputs import check_output_file, write_output
from autosplit.cli.ranges import Range, check_ranges
from autosplit.errors import BadInputError
from autosplit.export import TARGETS
from autosplit.export.deepspeed import deepspeed_export, render_deepspeed
from autosplit.export.kubernetes import (
    DEFAULT_COMMAND,
    KubernetesOptions,
    kubernetes_manifests,
    render_kubernetes,
)
from autosplit.export.megatron import megatron_args, render_megatron
from autosplit.export.model_shape import ModelShape, load_model_shape
from autosplit.export.naming import IDENTITY, NameMap, load_name_map
from autosplit.export.shape import check_structure
from autosplit.export.torchtitan import (
    render_torchtitan,
    render_torchtitan_json,
    torchtitan_job,
)
from autosplit.plan.io import load_plan, plan_sources
from autosplit.plan.schema import Plan

__all__ = ["register", "export_text"]

_err = Console(stderr=True, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this command to the app."""
    app.command("export")(export)


def export(
    plan_file: Path = typer.Argument(..., help="Plan JSON written by `autosplit search`."),
    to: str = typer.Option(..., "--to", "-t",
                           help="Target: megatron, torchtitan, deepspeed or kubernetes."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Write here instead of stdout (- for stdout)."),
    name_map: Path | None = typer.Option(
        None, "--name-map", help="YAML rules renaming the model's modules to the runtime's "
                                 "(see docs/export.md)."),
    no_project: bool = typer.Option(
        False, "--no-project", help="Fail instead of projecting a plan the target cannot "
                                    "express."),
    model: str | None = typer.Option(None, "--model",
                                     help="Model file for re-costing (default: the plan's)."),
    cluster: str | None = typer.Option(
        None, "--cluster", help="Cluster YAML for re-costing (default: the plan's)."),
    model_arg: list[str] = typer.Option([], "--model-arg",
                                        help="k=v passed to build_model (default: the plan's)."),
    as_json: bool = typer.Option(False, "--json",
                                 help="Megatron/torchtitan: structured JSON instead of bash."),
    tt_module: str = typer.Option("", "--torchtitan-module",
                                  help="torchtitan: --module of the job (default: llama3 for "
                                       "a Llama-shaped model)."),
    tt_config: str = typer.Option("", "--torchtitan-config",
                                  help="torchtitan: --config (config_registry function; "
                                       "default: the Llama 3 config with the model's layer "
                                       "count)."),
    image: str = typer.Option("autosplit:latest", "--image", help="Kubernetes: container image."),
    namespace: str = typer.Option("", "--namespace", help="Kubernetes: namespace."),
    job_name: str = typer.Option("", "--job-name", help="Kubernetes: name prefix of objects."),
    command: str = typer.Option("", "--command",
                                help="Kubernetes: container command (shell words); default: "
                                     "torchrun ... -m autosplit run $(AUTOSPLIT_PLAN)."),
    resource: list[str] = typer.Option([], "--resource",
                                       help="Kubernetes: CHIP=RESOURCE overriding the chip "
                                            "file, e.g. 910B=huawei.com/Ascend910B2."),
    request_memory: bool = typer.Option(False, "--request-memory",
                                        help="Kubernetes: also request HAMi's memory resource "
                                             "(nvidia.com/gpumem, ...) from the predicted "
                                             "peak memory."),
    no_pin_nodes: bool = typer.Option(False, "--no-pin-nodes",
                                      help="Kubernetes: select by chip label only, not by the "
                                           "plan's node names."),
    pre_layers: int = typer.Option(1, "--pre-layers",
                                   help="DeepSpeed: PipelineModule entries before the first "
                                        "block."),
    post_layers: int = typer.Option(1, "--post-layers",
                                    help="DeepSpeed: PipelineModule entries after the last "
                                         "block."),
) -> None:
    """Export a plan to a training runtime's configuration."""
    from autosplit.export.expressible import expressibility_problems

    target = to.strip().lower()
    if target not in TARGETS:
        raise BadInputError(f"unknown export target '{to}'", field="--to",
                            fix=f"use one of: {', '.join(TARGETS)}")
    check_ranges({"--pre-layers": pre_layers, "--post-layers": post_layers},
                 {"--pre-layers": Range(0, 1000, "1"), "--post-layers": Range(0, 1000, "1")})
    out = check_output_file(output, option="--output")
    names = load_name_map(name_map) if name_map else IDENTITY
    overrides = _pairs(resource, "--resource")
    args = _pairs(model_arg, "--model-arg")
    if plan_file.is_dir():
        raise BadInputError("is a folder, not a plan file", file=str(plan_file),
                            fix="pass the JSON written by `autosplit search -o FILE`")
    plan = load_plan(plan_file)
    check_structure(plan, source=str(plan_file))
    notes: list[str] = []
    problems = expressibility_problems(plan, target)
    if problems:
        if no_project:
            raise BadInputError(f"the plan cannot be expressed in {target}: "
                                + "; ".join(problems), file=str(plan_file),
                                fix="drop --no-project to export the nearest plan "
                                    f"{target} can run")
        plan, notes = _project(plan, target, problems, plan_file=str(plan_file), model=model,
                               cluster=cluster, model_args=args or None)
    k8s = None
    shape = None
    if target == "kubernetes":
        vendors, chip_resources = _chip_tables(plan, plan_file=str(plan_file))
        k8s = KubernetesOptions(
            image=image, namespace=namespace, job_name=job_name,
            command=tuple(shlex.split(command)) or DEFAULT_COMMAND, vendors=vendors,
            chip_resources=chip_resources, resources=overrides or None,
            request_memory=request_memory, pin_nodes=not no_pin_nodes)
    elif target in ("megatron", "torchtitan"):
        shape = _model_shape(plan, plan_file=str(plan_file), model=model,
                             model_args=args or None)
    text = export_text(plan, target, name_map=names, as_json=as_json, notes=tuple(notes),
                       k8s=k8s, pre_layers=pre_layers, post_layers=post_layers, shape=shape,
                       tt_module=tt_module, tt_config=tt_config)
    if out is None or out.to_stdout:
        typer.echo(text, nl=False)
    else:
        write_output(out, text)
        _err.print(f"wrote {target} export to {out}")


def export_text(plan: Plan, target: str, *, name_map: NameMap = IDENTITY,
                as_json: bool = False, notes: tuple[str, ...] = (),
                k8s: KubernetesOptions | None = None, pre_layers: int = 1,
                post_layers: int = 1, shape: ModelShape | None = None, tt_module: str = "",
                tt_config: str = "") -> str:
    """The export of an expressible plan, as the text the command writes.

    Megatron needs the model's ``shape``; torchtitan uses it to map names to its Llama 3.
    """
    if target == "megatron":
        if shape is None:
            raise BadInputError("the Megatron-LM export needs the model's shape",
                                field="model", fix="pass the model file with --model")
        margs = megatron_args(plan, shape)
        if as_json:
            return json.dumps({**margs.to_dict(), "notes": list(notes)}, indent=2) + "\n"
        return render_megatron(margs, plan=plan, notes=notes)
    if target == "torchtitan":
        job = torchtitan_job(plan, model=shape, name_map=name_map, module=tt_module,
                             config=tt_config)
        if as_json:
            return render_torchtitan_json(job)
        return render_torchtitan(job, plan=plan, notes=notes)
    if target == "deepspeed":
        return render_deepspeed(deepspeed_export(plan, name_map=name_map,
                                                 pre_layers=pre_layers,
                                                 post_layers=post_layers))
    if target == "kubernetes":
        if k8s is None:
            vendors, chip_resources = _chip_tables(plan)
            k8s = KubernetesOptions(vendors=vendors, chip_resources=chip_resources)
        options = k8s
        return render_kubernetes(kubernetes_manifests(plan, options=options), plan=plan,
                                 notes=notes)
    raise BadInputError(f"unknown export target '{target}'", field="--to",
                        fix=f"use one of: {', '.join(TARGETS)}")


def _project(plan: Plan, target: str, problems: list[str], *, plan_file: str,
             model: str | None, cluster: str | None,
             model_args: dict[str, str] | None) -> tuple[Plan, list[str]]:
    from autosplit.export.expressible import project_plan, projection_summary
    from autosplit.plan.context import load_plan_context
    from autosplit.plan.evaluate import evaluate_plan

    _err.print(f"[bold yellow]{target} cannot express this plan:[/]")
    for p in problems:
        _err.print(f"  - {p}")
    ctx = load_plan_context(plan, model_path=model, cluster_path=cluster, model_args=model_args,
                            plan_file=plan_file)
    original = plan if plan.prediction is not None else evaluate_plan(
        plan, model=ctx.model, cluster=ctx.cluster, costs=ctx.costs)
    projected = project_plan(original, target, model=ctx.model, cluster=ctx.cluster,
                             costs=ctx.costs)
    summary = projection_summary(original, projected, target)
    _err.print(f"[bold]exporting the nearest plan {target} can run:[/]")
    for line in summary:
        style = "bold red" if line.startswith("the plan does not fit") else ""
        _err.print(f"  - [{style}]{line}[/]" if style else f"  - {line}")
    return projected, [f"projected for {target}: {line}" for line in summary]


def _model_shape(plan: Plan, *, plan_file: str, model: str | None,
                 model_args: dict[str, str] | None) -> ModelShape:
    """The model's shape, from ``--model`` or the model file the plan records."""
    path = model or plan_sources(plan, plan_file).model_file
    if not path or not Path(path).is_file():
        raise BadInputError(f"the plan's model file {path!r} was not found", file=plan_file,
                            field="model.source_file",
                            fix="pass the model file with --model PATH (the export reads the "
                                "model's shape from it)")
    return load_model_shape(path, dict(model_args or plan.model.model_args),
                            block_list=plan.model.block_list)


def _chip_tables(plan: Plan, *, plan_file: str = "") -> tuple[dict[str, str], dict[str, str]]:
    """Chip → vendor and chip → ``kubernetes_resource``, from the plan's cluster file or the
    chip library; empty if neither loads (the exporter then goes by the chip name)."""
    src = plan_sources(plan, plan_file or None).cluster_file if plan.cluster.source_file else ""
    found = Path(src) if src and Path(src).is_file() else None
    try:
        if found is not None:
            from autosplit.cluster.load import load_cluster

            chips = load_cluster(found).chips
        else:
            from autosplit.chips.library import load_chip_library

            chips = load_chip_library()
    except (BadInputError, ImportError, OSError):
        return {}, {}
    vendors = {name: spec.vendor for name, spec in chips.items()}
    resources = {name: spec.kubernetes_resource for name, spec in chips.items()
                 if spec.kubernetes_resource}
    for spec in chips.values():  # a plan may name a chip by an alias
        for alias in spec.aliases:
            vendors.setdefault(alias, spec.vendor)
            if spec.kubernetes_resource:
                resources.setdefault(alias, spec.kubernetes_resource)
    return vendors, resources


def _pairs(items: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise BadInputError(f"expected KEY=VALUE, got '{item}'", field=option,
                                fix=f"write it as {option} name=value")
        out[key.strip()] = value.strip()
    return out
