"""Plan JSON on disk: the only place plans are serialised and parsed.

Parsing is strict and explains itself, because people hand-edit plans: a wrong type or a
missing field names the JSON path and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autosplit.atomic import atomic_write_text
from autosplit.errors import BadInputError
from autosplit.plan.schema import (
    SCHEMA_VERSION,
    Alternative,
    ClusterRef,
    MemoryBreakdown,
    ModelRef,
    Plan,
    Prediction,
    Replica,
    SearchStats,
    StagePlan,
    StagePrediction,
)

__all__ = ["load_plan", "save_plan", "plan_from_dict", "plan_to_json", "atomic_write_text"]


def plan_to_json(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), indent=2, sort_keys=False) + "\n"


def save_plan(plan: Plan, path: str | Path) -> None:
    atomic_write_text(path, plan_to_json(plan))


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    if not p.exists():
        raise BadInputError("plan file not found", file=str(p),
                            fix="pass the JSON written by `autosplit search -o FILE`")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read the plan ({exc.__class__.__name__})", file=str(p),
                            fix="pass the plan JSON file, not a folder or binary file") from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"not valid JSON ({exc.msg} at line {exc.lineno}, column "
                            f"{exc.colno})", file=str(p), fix="fix the JSON syntax") from None
    return plan_from_dict(data, source=str(p))


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, msg: str, fix: str | None = None) -> BadInputError:
        return BadInputError(msg, file=self.source or None, field=path, fix=fix)

    def get(self, d: Any, key: str, path: str, typ: type | tuple[type, ...], *,
            default: Any = ..., fix: str | None = None) -> Any:
        if not isinstance(d, dict):
            raise self.fail(path, "expected a JSON object")
        if key not in d:
            if default is ...:
                raise self.fail(f"{path}.{key}" if path else key, "missing field",
                                fix or f"add '{key}'")
            return default
        val = d[key]
        if typ is float and isinstance(val, int) and not isinstance(val, bool):
            val = float(val)
        if isinstance(val, bool) and typ in (int, float):
            raise self.fail(f"{path}.{key}" if path else key, f"expected {typ.__name__}, got bool")
        if not isinstance(val, typ):
            name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            raise self.fail(f"{path}.{key}" if path else key,
                            f"expected {name}, got {type(val).__name__}", fix)
        return val


def plan_from_dict(data: Any, *, source: str = "") -> Plan:
    """Parse a plan dict (as written by ``Plan.to_dict``) with precise error messages."""
    r = _Reader(source)
    if not isinstance(data, dict):
        raise r.fail("", "a plan must be a JSON object")
    version = r.get(data, "schema_version", "", str)
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise r.fail("schema_version", f"unsupported plan schema {version!r} (this autosplit "
                     f"reads {SCHEMA_VERSION})", "re-run `autosplit search` to regenerate it")
    md = r.get(data, "model", "", dict)
    model = ModelRef(
        name=r.get(md, "name", "model", str), source_file=r.get(md, "source_file", "model", str),
        fingerprint=r.get(md, "fingerprint", "model", str, default=""),
        num_layers=r.get(md, "num_layers", "model", int), params=r.get(md, "params", "model", int),
        seq_len=r.get(md, "seq_len", "model", int), dtype=r.get(md, "dtype", "model", str),
        tokens_per_sample=r.get(md, "tokens_per_sample", "model", int),
        block_list=r.get(md, "block_list", "model", str, default=""),
        model_args={str(k): str(v) for k, v in
                    r.get(md, "model_args", "model", dict, default={}).items()})
    cd = r.get(data, "cluster", "", dict)
    cluster = ClusterRef(
        name=r.get(cd, "name", "cluster", str),
        source_file=r.get(cd, "source_file", "cluster", str),
        num_devices=r.get(cd, "num_devices", "cluster", int),
        chips=tuple(r.get(cd, "chips", "cluster", list, default=[])))
    stages = []
    for k, sd in enumerate(r.get(data, "stages", "", list)):
        path = f"stages[{k}]"
        reps = []
        for q, rd in enumerate(r.get(sd, "replicas", path, list)):
            rpath = f"{path}.replicas[{q}]"
            idx = r.get(rd, "local_indices", rpath, list)
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
                raise r.fail(f"{rpath}.local_indices", "expected a list of integers")
            reps.append(Replica(node=r.get(rd, "node", rpath, str), local_indices=tuple(idx),
                                batch_share=r.get(rd, "batch_share", rpath, int),
                                chip=r.get(rd, "chip", rpath, str, default="")))
        stages.append(StagePlan(
            index=r.get(sd, "index", path, int, default=k), chip=r.get(sd, "chip", path, str),
            layer_start=r.get(sd, "layer_start", path, int),
            layer_end=r.get(sd, "layer_end", path, int),
            layer_names=tuple(r.get(sd, "layer_names", path, list, default=[])),
            module_names=tuple(r.get(sd, "module_names", path, list, default=[])),
            tp=r.get(sd, "tp", path, int), replicas=tuple(reps),
            recompute=r.get(sd, "recompute", path, bool, default=False),
            cost_source=r.get(sd, "cost_source", path, str, default="analytic")))
    pred = None
    if data.get("prediction") is not None:
        pred = _prediction(data["prediction"], r)
    sd = data.get("search") or {}
    stats = SearchStats(
        time_s=float(sd.get("time_s", 0.0)), explored=int(sd.get("explored", 0)),
        pruned={str(k): int(v) for k, v in (sd.get("pruned") or {}).items()},
        level1_candidates=int(sd.get("level1_candidates", 0)),
        exact_solves=int(sd.get("exact_solves", 0)), solver=str(sd.get("solver", "dp")),
        lower_bound_s=float(sd.get("lower_bound_s", 0.0)),
        optimality_gap=float(sd.get("optimality_gap", 0.0)),
        timed_out=bool(sd.get("timed_out", False)), notes=tuple(sd.get("notes", ())))
    alts = tuple(Alternative(summary=str(a.get("summary", "")),
                             iteration_s=float(a.get("iteration_s", 0.0)),
                             ratio_to_best=float(a.get("ratio_to_best", 0.0)),
                             stages=tuple(a.get("stages", ())))
                 for a in data.get("alternatives", []) if isinstance(a, dict))
    return Plan(
        model=model, cluster=cluster, global_batch=r.get(data, "global_batch", "", int),
        micro_batch_count=r.get(data, "micro_batch_count", "", int),
        schedule=r.get(data, "schedule", "", str), zero1=r.get(data, "zero1", "", bool,
                                                               default=False),
        stages=tuple(stages),
        memory_reserve_gb=r.get(data, "memory_reserve_gb", "", float, default=2.0),
        prediction=pred, idle_devices=tuple(data.get("idle_devices", ())),
        idle_note=str(data.get("idle_note", "")), search=stats, alternatives=alts,
        schema_version=version)


def _prediction(pd: Any, r: _Reader) -> Prediction | None:
    if not isinstance(pd, dict):
        raise r.fail("prediction", "expected a JSON object or null")
    try:
        stages = tuple(StagePrediction(
            index=int(s["index"]), fwd_s=float(s["fwd_s"]), bwd_s=float(s["bwd_s"]),
            recompute_s=float(s["recompute_s"]), tp_comm_s=float(s["tp_comm_s"]),
            p2p_in_s=float(s["p2p_in_s"]), p2p_out_s=float(s["p2p_out_s"]),
            busy_s=float(s["busy_s"]), dp_allreduce_s=float(s["dp_allreduce_s"]),
            optimizer_s=float(s["optimizer_s"]),
            memory=MemoryBreakdown(**{k: float(v) for k, v in s["memory"].items()
                                      if k in MemoryBreakdown.__dataclass_fields__}),
            in_flight=int(s["in_flight"])) for s in pd.get("stages", []))
        return Prediction(
            iteration_s=float(pd["iteration_s"]), tokens_per_s=float(pd["tokens_per_s"]),
            samples_per_s=float(pd["samples_per_s"]), mfu=float(pd["mfu"]),
            pipeline_s=float(pd["pipeline_s"]), bubble_s=float(pd["bubble_s"]),
            dp_sync_s=float(pd["dp_sync_s"]), optimizer_s=float(pd["optimizer_s"]),
            bottleneck_stage=int(pd["bottleneck_stage"]), stages=stages)
    except (KeyError, TypeError, ValueError):
        # A prediction is derived data: a hand-edited or stale one is dropped and re-costed.
        return None
