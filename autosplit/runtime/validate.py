"""Predicted versus measured: how far the cost model was from a real run of the same plan.

Iteration time is compared with the median step after warm-up, and per stage the predicted
compute (forward, backward and recompute of all micro-batches) with what its slowest rank
measured (``compute_timer``): where the iteration error comes from. A rank that runs several
stages (virtual stages) times them together, so each of its stages is compared with the
predicted compute of all the stages on that rank. Memory is compared per stage: the
prediction's weights + gradients + optimizer states + activations + library workspaces
(``MemoryBreakdown.allocated``; the reserve is head-room the planner keeps, not memory
anything allocates) against the largest
``torch.cuda.max_memory_allocated`` among the stage's ranks. CPU runs have no comparable
memory figure, so their memory rows show the measurement only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from autosplit.errors import BadInputError
from autosplit.plan.schema import Plan
from autosplit.runtime.measure import MeasuredRun, fingerprint_matches, plan_fingerprint

__all__ = ["StageComparison", "Validation", "compare", "error_pct"]


@dataclass(frozen=True)
class StageComparison:
    """One stage: predicted and measured busy/memory figures."""

    stage: int
    chip: str
    ranks: tuple[int, ...]
    devices: tuple[str, ...]
    predicted_memory_bytes: float
    measured_memory_bytes: float | None
    memory_error_pct: float | None
    predicted_weights_bytes: float
    predicted_activation_bytes: float
    predicted_busy_s: float
    #: Per step: the stage's forward + backward (+ recompute) over all micro-batches, against
    #: the median over the timed steps of its slowest rank's measured compute time.
    predicted_compute_s: float = 0.0
    measured_compute_s: float | None = None
    compute_error_pct: float | None = None


@dataclass(frozen=True)
class Validation:
    """The whole comparison, as written to ``validation.json``."""

    plan_fingerprint: str
    device: str
    backend: str
    cpu_relay: bool
    predicted_iteration_s: float
    measured_iteration_s: float
    iteration_error_pct: float
    predicted_tokens_per_s: float
    measured_tokens_per_s: float
    measured_steps: int
    warmup: int
    memory_kind: str
    stages: tuple[StageComparison, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def error_pct(predicted: float, measured: float) -> float:
    """Signed error of the prediction relative to the measurement, in percent."""
    if measured == 0:
        return 0.0 if predicted == 0 else float("inf")
    return 100.0 * (predicted - measured) / measured


def compare(plan: Plan, measured: MeasuredRun, *, plan_path: str = "",
            measured_path: str = "") -> Validation:
    """Compare a plan carrying a prediction with a run of that plan."""
    if plan.prediction is None:
        raise BadInputError("the plan has no prediction", file=plan_path, field="prediction",
                            fix="re-cost it with `autosplit evaluate PLAN -o PLAN`")
    fingerprint = plan_fingerprint(plan)
    if not fingerprint_matches(plan, measured.plan_fingerprint):
        raise BadInputError(
            f"the measurements are of another plan (fingerprint {measured.plan_fingerprint}, "
            f"this plan {fingerprint})", file=measured_path, field="plan_fingerprint",
            fix="validate the plan that `autosplit run` executed")
    pred = plan.prediction
    stages: list[StageComparison] = []
    kinds = {r.memory_kind for r in measured.ranks}
    comparable = kinds == {"cuda_max_allocated"}
    for sp, stage in zip(pred.stages, plan.stages, strict=True):
        ranks = [r for r in measured.ranks if r.holds(stage.index)]
        mem = sp.memory
        predicted_mem = mem.allocated
        peaks = [r.peak_memory_bytes for r in ranks if r.peak_memory_bytes is not None]
        measured_mem = float(max(peaks)) if peaks else None
        predicted_compute = plan.micro_batch_count * sum(
            other.compute_s for other, st in zip(pred.stages, plan.stages, strict=True)
            if st.pipeline_rank == stage.pipeline_rank)
        timed = [r.timed_compute_s(measured.warmup) for r in ranks]
        measured_compute = (max(t for t in timed if t is not None)
                            if timed and None not in timed else None)
        stages.append(StageComparison(
            stage=stage.index, chip=stage.chip_label, ranks=tuple(r.rank for r in ranks),
            devices=tuple(r.device_name for r in ranks), predicted_memory_bytes=predicted_mem,
            measured_memory_bytes=measured_mem,
            memory_error_pct=(error_pct(predicted_mem, measured_mem)
                              if comparable and measured_mem else None),
            predicted_weights_bytes=mem.weights, predicted_activation_bytes=mem.activations,
            predicted_busy_s=sp.busy_s, predicted_compute_s=predicted_compute,
            measured_compute_s=measured_compute,
            compute_error_pct=(error_pct(predicted_compute, measured_compute)
                               if measured_compute else None)))
    return Validation(
        plan_fingerprint=fingerprint, device=measured.device, backend=measured.backend,
        cpu_relay=measured.cpu_relay, predicted_iteration_s=pred.iteration_s,
        measured_iteration_s=measured.median_step_s,
        iteration_error_pct=error_pct(pred.iteration_s, measured.median_step_s),
        predicted_tokens_per_s=pred.tokens_per_s, measured_tokens_per_s=measured.tokens_per_s,
        measured_steps=len(measured.step_times_s) - measured.warmup, warmup=measured.warmup,
        memory_kind=",".join(sorted(kinds)), stages=tuple(stages))
