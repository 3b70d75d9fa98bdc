"""Predicted against measured, as markdown: the tables of a run folder of the MPS scripts.

run_h200_mix.sh and run_h200x2.sh leave, per plan NAME, ``plan_NAME.json``,
``measured_NAME.json`` and ``validation_NAME.json`` (``autosplit validate``) in their output
folder. This prints, for every plan with a validation: its layout, the iteration predicted and
measured, and per stage the compute (forward + backward of all micro-batches, slowest rank)
and the peak memory, with signed errors ``(predicted - measured) / measured``; the measured
speed-up of each searched plan over its uniform split (``searched``/``uniform``, or
``X_searched``/``X_uniform``); the loss and gradient norms, which say whether the run trained
(norms of millions mean wrong GEMMs); and how the errors compare with the targets (iteration
median 5 %, worst 10 %; per-stage compute 5 %; memory 2 %).

    python3 experiments/runtime/analyse_runs.py OUT/mix-55-30-15-gpt [OUT/... ...]

A folder without a validation, or a file that is not what the scripts write, is reported on
stderr with exit code 2.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PlanRun", "StageRow", "load_runs", "render", "main"]

TARGETS = {"iteration median": 5.0, "iteration worst": 10.0, "stage compute worst": 5.0,
           "memory worst": 2.0}


@dataclass(frozen=True)
class StageRow:
    """One stage of one plan: where it ran and its predicted and measured figures."""

    stage: int
    chip: str
    layout: str
    compute_pred_s: float
    compute_meas_s: float | None
    compute_err: float | None
    memory_pred_b: float
    memory_meas_b: float | None
    memory_err: float | None


@dataclass(frozen=True)
class PlanRun:
    """A plan with its validation and the health of its run."""

    name: str
    iteration_pred_s: float
    iteration_meas_s: float
    iteration_err: float
    tokens_per_s: float
    stages: tuple[StageRow, ...]
    losses: tuple[float, ...]
    grad_norms: tuple[float, ...]
    notes: tuple[str, ...]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def _layout(stage: dict[str, Any]) -> str:
    """``units a-b, tp T, shares 3+1`` — the stage's cut and replicas."""
    shares = "+".join(str(r["batch_share"]) for r in stage["replicas"])
    chips = sorted({r.get("chip") or stage["chip"] for r in stage["replicas"]})
    mixed = f", mixed {'+'.join(chips)}" if len(chips) > 1 else ""
    return (f"units {stage['layer_start']}-{stage['layer_end'] - 1}, tp {stage['tp']}, "
            f"dp {len(stage['replicas'])} ({shares}){mixed}")


def _plan_run(folder: Path, name: str) -> PlanRun:
    v = _read(folder / f"validation_{name}.json")
    plan = _read(folder / f"plan_{name}.json")
    measured = _read(folder / f"measured_{name}.json")
    try:
        stages = tuple(StageRow(
            stage=s["stage"], chip=s["chip"], layout=_layout(p),
            compute_pred_s=s.get("predicted_compute_s", 0.0),
            compute_meas_s=s.get("measured_compute_s"), compute_err=s.get("compute_error_pct"),
            memory_pred_b=s["predicted_memory_bytes"], memory_meas_b=s["measured_memory_bytes"],
            memory_err=s["memory_error_pct"])
            for s, p in zip(v["stages"], plan["stages"], strict=True))
        notes = tuple(str(n) for r in measured["ranks"] for n in r.get("notes", []))
        return PlanRun(name=name, iteration_pred_s=v["predicted_iteration_s"],
                       iteration_meas_s=v["measured_iteration_s"],
                       iteration_err=v["iteration_error_pct"],
                       tokens_per_s=v["measured_tokens_per_s"], stages=stages,
                       losses=tuple(measured["loss"]),
                       grad_norms=tuple(measured["ranks"][0].get("grad_norms", [])),
                       notes=notes)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{folder}: validation_{name}.json, plan_{name}.json or "
                         f"measured_{name}.json lacks a field ({exc}); re-run "
                         f"`autosplit validate` on that plan") from None


def load_runs(folder: Path) -> list[PlanRun]:
    """Every validated plan of ``folder``, by name."""
    names = sorted(p.name[len("validation_"):-len(".json")]
                   for p in folder.glob("validation_*.json"))
    if not names:
        raise ValueError(f"{folder}: no validation_*.json (did the runs fail? see run.log)")
    return [_plan_run(folder, n) for n in names]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f} %"


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:.1f}"


def _gb(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1e9:.2f}"


def _speedups(runs: list[PlanRun]) -> list[str]:
    by_name = {r.name: r for r in runs}
    lines = []
    for name, r in sorted(by_name.items()):
        if not name.endswith("searched"):
            continue
        u = by_name.get(name[:-len("searched")] + "uniform")
        if u is not None:
            lines.append(f"- speed-up of `{name}` over `{u.name}`: measured "
                         f"**{u.iteration_meas_s / r.iteration_meas_s:.2f}x**, predicted "
                         f"{u.iteration_pred_s / r.iteration_pred_s:.2f}x")
    return lines


def _against_targets(runs: list[PlanRun]) -> list[str]:
    iters = [abs(r.iteration_err) for r in runs]
    compute = [abs(s.compute_err) for r in runs for s in r.stages if s.compute_err is not None]
    memory = [abs(s.memory_err) for r in runs for s in r.stages if s.memory_err is not None]
    got = {"iteration median": statistics.median(iters), "iteration worst": max(iters),
           "stage compute worst": max(compute) if compute else None,
           "memory worst": max(memory) if memory else None}
    return [f"- {k}: {'n/a' if v is None else f'{v:.1f} %'} (target <= {TARGETS[k]:.0f} %"
            f"{'' if v is None else ', met' if v <= TARGETS[k] else ', NOT met'})"
            for k, v in got.items()]


def render(folder: Path, runs: list[PlanRun]) -> str:
    """The markdown for one folder."""
    out = [f"### {folder.name}", "",
           "| plan | iteration pred / meas (ms) | error | tokens/s meas | loss first -> last "
           "| grad norm first -> last |", "| --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        loss = f"{r.losses[0]:.3f} -> {r.losses[-1]:.3f}" if r.losses else "n/a"
        norm = f"{r.grad_norms[0]:.2f} -> {r.grad_norms[-1]:.2f}" if r.grad_norms else "n/a"
        out.append(f"| {r.name} | {_ms(r.iteration_pred_s)} / {_ms(r.iteration_meas_s)} | "
                   f"{_pct(r.iteration_err)} | {r.tokens_per_s:,.0f} | {loss} | {norm} |")
    out += ["", "| plan | stage | chip | layout | compute pred / meas (ms) | error | "
            "memory pred / meas (GB) | error |", "|" + " --- |" * 8]
    for r in runs:
        for s in r.stages:
            out.append(f"| {r.name} | {s.stage} | {s.chip} | {s.layout} | "
                       f"{_ms(s.compute_pred_s)} / {_ms(s.compute_meas_s)} | "
                       f"{_pct(s.compute_err)} | {_gb(s.memory_pred_b)} / "
                       f"{_gb(s.memory_meas_b)} | {_pct(s.memory_err)} |")
    out += [""] + _speedups(runs) + _against_targets(runs)
    notes = [f"- `{r.name}`: {n}" for r in runs for n in r.notes]
    if notes:
        out += ["", "Health notes of the first step:"] + notes
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: analyse_runs.py RUN_FOLDER [RUN_FOLDER ...]", file=sys.stderr)
        return 2
    parts = []
    for arg in argv:
        try:
            parts.append(render(Path(arg), load_runs(Path(arg))))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print("\n".join(parts), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
