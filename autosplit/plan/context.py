"""Everything needed to re-cost a plan: the model profile, the cluster and the costs.

A plan records where its model file and cluster file were and the model arguments it was
made with; this module reloads them (relative paths are tried against the working directory
and then the plan file's folder) so ``evaluate``, ``report`` and ``export`` need only the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autosplit.cluster.schema import Cluster
from autosplit.errors import BadInputError
from autosplit.model.types import ModelProfile
from autosplit.plan.schema import Plan
from autosplit.protocols.cost import LayerCostProvider

__all__ = ["PlanContext", "load_plan_context", "cost_provider"]


@dataclass
class PlanContext:
    model: ModelProfile
    cluster: Cluster
    costs: LayerCostProvider


def _resolve(path: str, plan_file: str | None, what: str, flag: str) -> str:
    candidates = [Path(path)]
    if plan_file and not Path(path).is_absolute():
        candidates.append(Path(plan_file).resolve().parent / path)
    for c in candidates:
        if c.exists():
            return str(c)
    raise BadInputError(f"the plan's {what} {path!r} was not found", file=plan_file,
                        field=f"{'model' if what == 'model file' else 'cluster'}.source_file",
                        fix=f"pass it explicitly with {flag} PATH")


def cost_provider(*, model: ModelProfile, chips: list[str],
                  extra_dirs: tuple[Path, ...] = ()) -> LayerCostProvider:
    """Measured profiles where they exist, the analytic roofline otherwise."""
    try:
        from autosplit.profiler.provider import cost_provider_for
    except ImportError:
        from autosplit.cost.analytic import AnalyticCosts

        return AnalyticCosts()
    return cost_provider_for(model=model, chips=chips, extra_dirs=extra_dirs)


def load_plan_context(plan: Plan, *, model_path: str | None = None,
                      cluster_path: str | None = None, model_args: dict[str, str] | None = None,
                      plan_file: str | None = None) -> PlanContext:
    from autosplit.cluster.load import load_cluster
    from autosplit.model.cache import ingest_model_cached

    mpath = model_path or _resolve(plan.model.source_file, plan_file, "model file", "--model")
    cpath = cluster_path or _resolve(plan.cluster.source_file, plan_file, "cluster file",
                                     "--cluster")
    args = dict(plan.model.model_args) if model_args is None else model_args
    model = ingest_model_cached(mpath, model_args=args, seq_len=plan.model.seq_len,
                                dtype=plan.model.dtype)
    cluster = load_cluster(cpath)
    return PlanContext(model=model, cluster=cluster,
                       costs=cost_provider(model=model, chips=cluster.chip_types()))
