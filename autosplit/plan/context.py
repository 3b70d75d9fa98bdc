"""Everything needed to re-cost a plan: the model profile, the cluster and the costs.

A plan records where its model file and cluster file were, the model arguments it was made
with, fingerprints of both, and the extra chip directories it was searched with; this module
reloads them so ``evaluate``, ``report`` and ``export`` need only the plan (recorded paths are
resolved by ``autosplit.plan.io.plan_sources``).

A model or cluster given instead of the recorded one must be the same one: a plan made for
GPT is not silently re-costed as Llama and still labelled GPT. The model must have the
recorded fingerprint (file content, model args, sequence length, dtype — what ``autosplit
run`` checks too); the cluster must have the recorded name, device count and chips. A cluster
file edited since (say, a measured bandwidth) is accepted, and the re-costed plan records the
file it was costed with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from autosplit.cluster.schema import Cluster
from autosplit.errors import BadInputError
from autosplit.model.types import ModelProfile
from autosplit.plan.evaluate import validate_plan
from autosplit.plan.io import plan_sources
from autosplit.plan.schema import Plan
from autosplit.protocols.cost import LayerCostProvider

__all__ = ["PlanContext", "load_plan_context", "cost_provider", "with_sources"]


@dataclass
class PlanContext:
    model: ModelProfile
    cluster: Cluster
    costs: LayerCostProvider
    #: What a user should know about how the context was found (shown on stderr).
    notes: tuple[str, ...] = ()


def _require(path: str, *, plan_file: str | None, what: str, field: str, flag: str) -> str:
    if not path:
        raise BadInputError(f"the plan records no {what}", file=plan_file, field=field,
                            fix=f"pass it with {flag} PATH")
    if not Path(path).is_file():
        raise BadInputError(f"the plan's {what} {path!r} was not found", file=plan_file,
                            field=field, fix=f"pass it explicitly with {flag} PATH")
    return path


def cost_provider(*, model: ModelProfile, chips: list[str],
                  extra_dirs: tuple[Path, ...] = ()) -> LayerCostProvider:
    """Measured profiles where they exist, the analytic roofline otherwise."""
    try:
        from autosplit.profiler.provider import cost_provider_for
    except ImportError:
        from autosplit.cost.analytic import AnalyticCosts

        return AnalyticCosts()
    return cost_provider_for(model=model, chips=chips, extra_dirs=extra_dirs)


def with_sources(plan: Plan, *, cluster: Cluster, model: ModelProfile | None = None) -> Plan:
    """``plan`` recording the files it was made from (absolute paths): the cluster's file,
    fingerprint and extra chip directories, and the model's file when given."""
    cluster_ref = replace(plan.cluster, source_file=_absolute(cluster.source_file),
                          fingerprint=cluster.fingerprint,
                          chip_dirs=tuple(_absolute(d) for d in cluster.chip_dirs))
    model_ref = plan.model if model is None else replace(
        plan.model, source_file=_absolute(model.source_file))
    return replace(plan, cluster=cluster_ref, model=model_ref)


def _absolute(path: str) -> str:
    return os.path.abspath(path) if path and not path.startswith("<") else path


def _check_model(plan: Plan, model: ModelProfile, *, path: str, plan_file: str | None,
                 args: dict[str, str]) -> None:
    ref = plan.model
    if ref.fingerprint and model.fingerprint and ref.fingerprint != model.fingerprint:
        raise BadInputError(
            f"the plan was made for another model: {ref.name} from {ref.source_file or '?'} "
            f"(fingerprint {ref.fingerprint}); {path} with {args or 'no model args'} is "
            f"{model.name} (fingerprint {model.fingerprint})", file=plan_file,
            field="model.fingerprint",
            fix="pass the model file and --model-arg values the plan was searched with (a "
                "model file changed since gives another fingerprint), or search a plan for "
                "this model")


def _check_cluster(plan: Plan, cluster: Cluster, *, plan_file: str | None) -> tuple[str, ...]:
    ref = plan.cluster
    mine = (ref.name, ref.num_devices, tuple(ref.chips))
    theirs = (cluster.name, cluster.num_devices, tuple(cluster.chip_types()))
    if mine != theirs:
        raise BadInputError(
            f"the plan was made for cluster '{ref.name}' ({ref.num_devices} devices: "
            f"{', '.join(ref.chips)}); {cluster.source_file} describes '{cluster.name}' "
            f"({cluster.num_devices} devices: {', '.join(cluster.chip_types())})",
            file=plan_file, field="cluster",
            fix="pass the cluster file the plan was searched for, or search a plan for this "
                "cluster")
    if ref.fingerprint and cluster.fingerprint and ref.fingerprint != cluster.fingerprint:
        return (f"cluster file {cluster.source_file} changed since the plan was made "
                f"(fingerprint {ref.fingerprint} → {cluster.fingerprint}); costed with the "
                "file as it is now",)
    return ()


def load_plan_context(plan: Plan, *, model_path: str | None = None,
                      cluster_path: str | None = None, model_args: dict[str, str] | None = None,
                      plan_file: str | None = None,
                      chip_dirs: tuple[Path, ...] | None = None) -> PlanContext:
    """Reload the plan's model and cluster (or the ones given), check they are the plan's, and
    validate the plan against them.

    ``chip_dirs`` replace the chip directories the plan recorded (``--chips-dir``); chips and
    measured profiles are looked up there.
    """
    from autosplit.cluster.load import load_cluster
    from autosplit.model.cache import ingest_model_cached

    sources = plan_sources(plan, plan_file)
    mpath = model_path or _require(sources.model_file, plan_file=plan_file,
                                   what="model file", field="model.source_file", flag="--model")
    cpath = cluster_path or _require(sources.cluster_file, plan_file=plan_file,
                                     what="cluster file", field="cluster.source_file",
                                     flag="--cluster")
    dirs = tuple(Path(d) for d in sources.chip_dirs) if chip_dirs is None else chip_dirs
    for d in dirs:
        if not d.is_dir():
            raise BadInputError(f"the chip directory {str(d)!r} was not found", file=plan_file,
                                field="cluster.chip_dirs",
                                fix="pass the chip directories with --chips-dir DIR")
    args = dict(plan.model.model_args) if model_args is None else model_args
    cluster = load_cluster(cpath, chip_dirs=dirs)
    notes = _check_cluster(plan, cluster, plan_file=plan_file)
    model = ingest_model_cached(mpath, model_args=args, seq_len=plan.model.seq_len,
                                dtype=plan.model.dtype)
    _check_model(plan, model, path=mpath, plan_file=plan_file, args=args)
    validate_plan(plan, model=model, cluster=cluster, source=plan_file or "")
    return PlanContext(model=model, cluster=cluster, notes=notes,
                       costs=cost_provider(model=model, chips=cluster.chip_types(),
                                           extra_dirs=dirs))
