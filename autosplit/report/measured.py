"""Read what a real run measured, so the report can hold the prediction against it.

Two forms are read. The file ``autosplit run`` writes (``schema: autosplit.measured/1``):
``median_step_s`` and ``ranks`` (each with ``rank``, ``stage``, ``peak_memory_bytes`` — compared
only when ``memory_kind`` is the GPU allocator's — and ``compute_s`` per step). And a minimal
hand-written form for runs of other runtimes: ``step_time_s`` (seconds per iteration) and
optionally ``per_rank``: a list of ``{"rank", "stage", "peak_memory_bytes"}``. Other keys are
ignored. Anything malformed is a ``BadInputError`` naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autosplit.errors import BadInputError
from autosplit.plan.schema import Plan
from autosplit.runtime.measure import MEASURED_SCHEMA, measured_from_dict

__all__ = ["MeasuredRank", "MeasuredRun", "StageComparison", "parse_measured",
           "load_measured", "compare_stages", "relative_error"]


@dataclass(frozen=True)
class MeasuredRank:
    rank: int
    stage: int
    peak_memory_bytes: float | None
    #: Median seconds per step the rank spent computing (``autosplit run`` files only).
    compute_s: float | None = None


@dataclass(frozen=True)
class MeasuredRun:
    step_time_s: float
    per_rank: tuple[MeasuredRank, ...] = ()

    def stage_peak_memory(self, stage: int) -> float | None:
        """Highest peak memory any rank of ``stage`` reported (None if none did)."""
        vals = [r.peak_memory_bytes for r in self.per_rank
                if r.stage == stage and r.peak_memory_bytes is not None]
        return max(vals) if vals else None

    def stage_compute(self, stage: int) -> float | None:
        """Compute seconds per step of the slowest rank of ``stage`` (None if unknown)."""
        ranks = [r for r in self.per_rank if r.stage == stage]
        if not ranks or any(r.compute_s is None for r in ranks):
            return None
        return max(r.compute_s for r in ranks if r.compute_s is not None)


@dataclass(frozen=True)
class StageComparison:
    stage: int
    predicted_bytes: float
    measured_bytes: float | None
    ranks: tuple[int, ...]

    @property
    def error(self) -> float | None:
        if self.measured_bytes is None:
            return None
        return relative_error(self.predicted_bytes, self.measured_bytes)


def relative_error(predicted: float, measured: float) -> float:
    """(predicted − measured) / measured; positive means the model over-predicts."""
    if measured == 0:
        return math.inf if predicted else 0.0
    return (predicted - measured) / measured


def _number(value: Any, *, field: str, file: str | None, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInputError(f"expected a number, got {value!r}", file=file, field=field,
                            fix="write a plain JSON number")
    if positive and value <= 0:
        raise BadInputError(f"must be positive, got {value!r}", file=file, field=field)
    if value < 0:
        raise BadInputError(f"must not be negative, got {value!r}", file=file, field=field)
    return float(value)


def _int(value: Any, *, field: str, file: str | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadInputError(f"expected a non-negative integer, got {value!r}", file=file,
                            field=field)
    return value


def _parse_runtime(data: Mapping[str, Any], *, file: str | None) -> MeasuredRun:
    """The file ``autosplit run`` writes, read by the runtime's own reader."""
    run = measured_from_dict(dict(data), path=file)
    ranks = [MeasuredRank(rank=r.rank, stage=r.stage,
                          peak_memory_bytes=(float(r.peak_memory_bytes)
                                             if r.memory_kind == "cuda_max_allocated"
                                             and r.peak_memory_bytes is not None else None),
                          compute_s=r.timed_compute_s(run.warmup))
             for r in run.ranks]
    ranks.sort(key=lambda r: (r.stage, r.rank))
    return MeasuredRun(step_time_s=run.median_step_s, per_rank=tuple(ranks))


def parse_measured(data: Any, *, file: str | None = None) -> MeasuredRun:
    """Validate a measured-run document (already parsed from JSON)."""
    if not isinstance(data, Mapping):
        raise BadInputError("expected a JSON object", file=file,
                            fix='write {"step_time_s": <seconds>, "per_rank": [...]}')
    if data.get("schema") == MEASURED_SCHEMA:
        return _parse_runtime(data, file=file)
    if "step_time_s" not in data:
        raise BadInputError("missing the measured iteration time", file=file,
                            field="step_time_s", fix="add the seconds one training step took")
    step = _number(data["step_time_s"], field="step_time_s", file=file, positive=True)
    raw_ranks = data.get("per_rank") or []
    if not isinstance(raw_ranks, list):
        raise BadInputError("expected a list", file=file, field="per_rank")
    ranks: list[MeasuredRank] = []
    for i, entry in enumerate(raw_ranks):
        where = f"per_rank[{i}]"
        if not isinstance(entry, Mapping):
            raise BadInputError("expected an object", file=file, field=where)
        for key in ("rank", "stage"):
            if key not in entry:
                raise BadInputError(f"missing '{key}'", file=file, field=where)
        mem = entry.get("peak_memory_bytes")
        ranks.append(MeasuredRank(
            rank=_int(entry["rank"], field=f"{where}.rank", file=file),
            stage=_int(entry["stage"], field=f"{where}.stage", file=file),
            peak_memory_bytes=None if mem is None else _number(
                mem, field=f"{where}.peak_memory_bytes", file=file, positive=False),
        ))
    ranks.sort(key=lambda r: (r.stage, r.rank))
    return MeasuredRun(step_time_s=step, per_rank=tuple(ranks))


def load_measured(path: Path) -> MeasuredRun:
    """Read and validate a measured-run JSON file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot read the measured-run file: {exc.strerror}",
                            file=str(path)) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"not valid JSON (line {exc.lineno}, column {exc.colno}): "
                            f"{exc.msg}", file=str(path)) from exc
    return parse_measured(data, file=str(path))


def compare_stages(plan: Plan, run: MeasuredRun) -> list[StageComparison]:
    """Predicted peak memory of each stage's most loaded device against what its ranks
    measured (stages the run does not mention get ``measured_bytes=None``).

    The prediction is compared without its reserve: the reserve is head-room the planner
    keeps for the framework and fragmentation, not memory the allocator reports as used."""
    if plan.prediction is None:
        return []
    out: list[StageComparison] = []
    for sp in sorted(plan.prediction.stages, key=lambda s: s.index):
        ranks = tuple(r.rank for r in run.per_rank if r.stage == sp.index)
        out.append(StageComparison(sp.index, sp.memory.allocated,
                                   run.stage_peak_memory(sp.index), ranks))
    return out
