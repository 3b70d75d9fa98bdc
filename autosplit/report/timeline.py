"""The iteration the report draws: the cost model's own simulation of the plan's schedule.

The report has no schedule logic of its own. It rebuilds the per-stage pass and transfer
times from the plan's prediction (``stage_times_from_prediction``) and runs the same event
simulation the prediction's ``pipeline_s``, ``bubble_s`` and ``iteration_s`` came from
(``autosplit.cost.schedule_sim``), so the timeline, the summary card and the terminal show one
bubble figure: ``bubble_s / pipeline_s``, the idle share of all ranks' pipeline time.
"""

from __future__ import annotations

from autosplit.cost.schedule import get_schedule
from autosplit.cost.schedule_sim import Simulation, stage_times_from_prediction
from autosplit.plan.schema import Plan, Prediction

__all__ = ["plan_timeline", "bubble_share"]


def plan_timeline(plan: Plan) -> Simulation | None:
    """The simulated iteration of ``plan`` (None when the plan carries no prediction)."""
    if plan.prediction is None:
        return None
    schedule = get_schedule(plan.schedule, virtual_stages=plan.virtual_stages)
    return schedule.simulate(stage_times_from_prediction(plan.prediction.stages),
                             plan.micro_batch_count)


def bubble_share(prediction: Prediction) -> float:
    """The bubble as a share of the pipeline time (what every view of a plan prints)."""
    return prediction.bubble_s / prediction.pipeline_s if prediction.pipeline_s > 0 else 0.0
