"""What a real run measured, in the form ``autosplit validate`` compares with the plan.

Step time is wall-clock between two barriers around one optimizer step (every rank waits for
its device before the barrier), so it is the iteration time the cost model predicts. Memory is
``torch.cuda.max_memory_allocated`` per rank on CUDA (what tensors really held, without the
caching allocator's slack); on the CPU the peak resident-set growth of the rank process, which
is only indicative.
"""

from __future__ import annotations

import hashlib
import json
import resource
import statistics
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from autosplit.errors import BadInputError
from autosplit.plan.schema import Plan

if TYPE_CHECKING:
    import torch

__all__ = ["MEASURED_SCHEMA", "RankResult", "MeasuredRun", "plan_fingerprint",
           "fingerprint_matches", "peak_rss_bytes",
           "summarise", "save_measured", "load_measured", "measured_from_dict",
           "device_name"]

MEASURED_SCHEMA = "autosplit.measured/1"


@dataclass(frozen=True)
class RankResult:
    """One rank's share of the measurement."""

    rank: int
    stage: int
    replica: int
    device: str
    device_name: str
    peak_memory_bytes: int | None
    peak_reserved_bytes: int | None
    memory_kind: str  # "cuda_max_allocated" | "cpu_rss_growth"
    params: int
    step_times_s: tuple[float, ...]
    losses: tuple[float, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    #: Health checks of the first step (non-finite parameters or activations, where).
    notes: tuple[str, ...] = ()
    #: Global gradient norm of each step, before clipping (the same on every rank).
    grad_norms: tuple[float, ...] = ()
    #: Seconds of each step this rank spent computing its stage (forwards, loss, backwards;
    #: see ``compute_timer``), apart from waiting and communicating.
    compute_s: tuple[float, ...] = ()
    #: Index inside the replica's tensor-parallel group (0 without tensor parallelism).
    tp_index: int = 0
    #: Every stage this rank ran (its model chunks under a virtual-stage schedule); empty in
    #: files written before ranks could hold several, where ``stage`` is the only one.
    stages: tuple[int, ...] = ()

    def holds(self, stage: int) -> bool:
        """Whether this rank ran ``stage``."""
        return stage in (self.stages or (self.stage,))

    def timed_compute_s(self, warmup: int) -> float | None:
        """Median compute seconds per step after the warm-up steps (all steps when there are
        no more); ``None`` for files written before compute was recorded."""
        timed = self.compute_s[warmup:] or self.compute_s
        return statistics.median(timed) if timed else None


@dataclass(frozen=True)
class MeasuredRun:
    """The whole run, as written to ``measured.json``."""

    plan_fingerprint: str
    plan_file: str
    model_file: str
    model_args: dict[str, str]
    device: str
    backend: str
    cpu_relay: bool
    dtype: str
    steps: int
    warmup: int
    global_batch: int
    micro_batch_count: int
    tokens_per_sample: int
    step_times_s: tuple[float, ...]
    median_step_s: float
    tokens_per_s: float
    samples_per_s: float
    loss: tuple[float, ...]
    ranks: tuple[RankResult, ...]
    torch_version: str
    #: "master" (low-precision weights, fp32 masters), "autocast" or "fp32". Files written
    #: before the field existed were autocast runs.
    precision: str = "autocast"
    schema: str = MEASURED_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _executed(plan: Plan, *, with_source: bool = False) -> dict[str, Any]:
    """What the runtime executes. The model's file path is left out (``with_source``: the
    earlier form that kept it): it is stored relative to the plan file, so re-saving a plan
    elsewhere (``evaluate -o``) changed the fingerprint of the same model and layout."""
    d = plan.to_dict()
    keep = {k: d[k] for k in ("model", "global_batch", "micro_batch_count", "schedule",
                              "zero1", "stages")}
    if not with_source:
        keep["model"].pop("source_file", None)
    for stage in keep["stages"]:
        stage.pop("cost_source", None)
    return keep


def _drop_unset(value: Any) -> Any:
    """Leave out fields that are "" or None, so that a field added to the plan later with an
    empty default does not change the fingerprint of plans that do not use it."""
    if isinstance(value, dict):
        return {k: _drop_unset(v) for k, v in value.items() if v not in ("", None)}
    if isinstance(value, (list, tuple)):
        return [_drop_unset(v) for v in value]
    return value


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_fingerprint(plan: Plan) -> str:
    """Hash of what the runtime executes (stages, batch, schedule), not of the prediction."""
    return _digest(_drop_unset(_executed(plan)))


def fingerprint_matches(plan: Plan, fingerprint: str) -> bool:
    """Whether measurements carrying ``fingerprint`` are of ``plan``: the current fingerprint,
    or an earlier form (files written before the change) that hashed the model's file path,
    and before that unset fields too."""
    legacy = _executed(plan, with_source=True)
    return fingerprint in (plan_fingerprint(plan), _digest(_drop_unset(legacy)),
                           _digest(legacy))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return "cpu"


def summarise(*, ranks: list[RankResult], warmup: int, global_batch: int,
              tokens_per_sample: int) -> tuple[tuple[float, ...], float, float, float]:
    """Per-step time (slowest rank), median after warm-up, tokens/s, samples/s."""
    steps = min(len(r.step_times_s) for r in ranks)
    times = tuple(max(r.step_times_s[i] for r in ranks) for i in range(steps))
    timed = times[warmup:] or times
    median = statistics.median(timed)
    samples = global_batch / median if median > 0 else 0.0
    return times, median, samples * tokens_per_sample, samples


def save_measured(run: MeasuredRun, path: str) -> None:
    """Write atomically: a crash never leaves half a file behind."""
    from autosplit.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(run.to_dict(), indent=2, sort_keys=True) + "\n")


def load_measured(path: str) -> MeasuredRun:
    """Read ``measured.json``; malformed files raise ``BadInputError``."""
    try:
        with open(path) as fh:
            d = json.load(fh)
    except FileNotFoundError:
        raise BadInputError("file not found", file=path,
                            fix="pass the file written by `autosplit run -o`") from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"not valid JSON ({exc.msg}, line {exc.lineno})", file=path,
                            fix="pass the file written by `autosplit run -o`") from None
    return measured_from_dict(d, path=path)


def measured_from_dict(d: Any, *, path: str | None = None) -> MeasuredRun:
    """A parsed ``measured.json`` document as a ``MeasuredRun``; anything else raises
    ``BadInputError`` naming ``path``."""
    if not isinstance(d, dict) or d.get("schema") != MEASURED_SCHEMA:
        raise BadInputError(f"not a measured-run file (schema must be '{MEASURED_SCHEMA}')",
                            file=path, field="schema",
                            fix="pass the file written by `autosplit run -o`")
    try:
        ranks = tuple(RankResult(**{**r, "step_times_s": tuple(r["step_times_s"]),
                                    "losses": tuple(r.get("losses", ())),
                                    "notes": tuple(r.get("notes", ())),
                                    "grad_norms": tuple(r.get("grad_norms", ())),
                                    "compute_s": tuple(r.get("compute_s", ())),
                                    "stages": tuple(r.get("stages", ()))})
                      for r in d["ranks"])
        fields = {k: v for k, v in d.items() if k != "ranks"}
        fields["step_times_s"] = tuple(fields["step_times_s"])
        fields["loss"] = tuple(fields["loss"])
        return MeasuredRun(ranks=ranks, **fields)
    except (KeyError, TypeError) as exc:
        raise BadInputError(f"missing or unexpected field ({exc})", file=path,
                            fix="pass the file written by `autosplit run -o`") from None
