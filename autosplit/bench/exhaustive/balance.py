"""The perfect-balance ratio: how close a plan's time comes to the cluster's raw compute.

Perfect balance is the time the global batch's forward and backward work would take spread
over every device of the cluster at its own best rate — no pipeline bubble, no
communication, no recomputation, no memory limit. A device's rate is its samples per second
on the whole model at TP 1 and its most efficient allowed micro-batch, from the same
per-unit costs the plans are costed with. The ratio of that time to a plan's iteration time
is at most about 1 and says how much any planner could still gain.
"""

from __future__ import annotations

import math

from autosplit.cluster.schema import Cluster, Node
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.cost.stage import build_tables
from autosplit.model.types import ModelProfile
from autosplit.protocols.cost import LayerCostProvider

__all__ = ["perfect_balance_ratio"]


def perfect_balance_ratio(iteration_s: float, *, model: ModelProfile, cluster: Cluster,
                          training: TrainingConfig, search: SearchConfig | None = None,
                          costs: LayerCostProvider | None = None) -> float:
    """Perfect-balance time ÷ ``iteration_s`` (``nan`` for a time that is not finite)."""
    if not math.isfinite(iteration_s) or iteration_s <= 0:
        return math.nan
    sizes = (search or SearchConfig()).micro_batch_sizes
    costs = costs or AnalyticCosts()
    rate = sum(node.devices * max(b / _model_time(model, cluster, node, b, costs,
                                                  training.dtype) for b in sizes)
               for node in cluster.nodes)
    return training.global_batch / rate / iteration_s


def _model_time(model: ModelProfile, cluster: Cluster, node: Node, share: int,
                costs: LayerCostProvider, dtype: str) -> float:
    """Forward plus backward of every unit, one device, ``share`` samples."""
    t = build_tables(model=model, chip=cluster.chips[node.chip], node=node, tp=1, share=share,
                     costs=costs, dtype=dtype)
    return float(t.fwd[-1] + t.bwd[-1])
