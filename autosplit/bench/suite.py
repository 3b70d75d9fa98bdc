"""The benchmark suite file: a YAML list of search problems whose answers must not regress.

A suite pins everything a search depends on — model file and arguments, cluster file, batch,
sequence length and search options — so that two runs of the same suite on the same code give
the same plans, and a change in plan quality or search time can be traced to a code change.
Paths inside a suite are relative to the suite file, so the suite can be run from anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autosplit.config import DTYPE_BYTES, SCHEDULES, SearchConfig, TrainingConfig
from autosplit.errors import BadInputError
from autosplit.inputs.validation import reject_unknown_keys
from autosplit.inputs.yaml_file import read_yaml_mapping

__all__ = ["BASELINE_KINDS", "BenchCase", "Suite", "load_suite"]

#: Baselines a case may ask for (see ``autosplit.bench.baselines``).
BASELINE_KINDS: tuple[str, ...] = ("uniform", "uniform_all", "tflops", "single_type",
                                   "brute_force")

_SUITE_KEYS = ("name", "description", "reference", "defaults", "cases")
_CASE_KEYS = ("name", "model", "model_args", "cluster", "global_batch", "seq_len", "options",
              "baselines", "repeat", "note")
_TRAINING_OPTIONS = ("dtype", "schedule", "zero1", "memory_reserve_gb")
_SEARCH_OPTIONS = ("time_limit_s", "micro_batch_sizes", "tp_degrees", "max_stages",
                   "allow_idle", "allow_recompute", "target")
_EXAMPLE = ("cases:\n  - name: gpt-1.3b-small\n    model: ../models/gpt.py\n"
            "    model_args: {size: 1.3b}\n    cluster: ../clusters/small_2type.yaml\n"
            "    global_batch: 64\n    seq_len: 2048")


@dataclass(frozen=True)
class BenchCase:
    """One search problem of the suite, with paths already resolved."""

    name: str
    model: Path
    model_args: dict[str, str]
    cluster: Path
    training: TrainingConfig
    search: SearchConfig
    #: Which baselines to compute (a subset of ``BASELINE_KINDS``).
    baselines: tuple[str, ...] = BASELINE_KINDS
    #: Timed searches per case; the fastest counts (damps noise on shared machines).
    repeat: int = 1
    note: str = ""


@dataclass(frozen=True)
class Suite:
    """A named list of cases and the case every search time is measured against."""

    name: str
    source_file: str
    cases: tuple[BenchCase, ...]
    reference: str
    description: str = ""

    def case(self, name: str) -> BenchCase:
        for c in self.cases:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True)
class _Ctx:
    file: str
    base: Path
    defaults: dict[str, Any] = field(default_factory=dict)


def load_suite(path: str | Path) -> Suite:
    """Validate the suite file at ``path``; any problem raises ``BadInputError``."""
    path = Path(path)
    file = str(path)
    data = read_yaml_mapping(path, what="bench suite", fix="see docs/bench.md for the format")
    reject_unknown_keys(data, _SUITE_KEYS, file=file)
    defaults = data.get("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise BadInputError("must be a mapping", file=file, field="defaults",
                            fix="write defaults: {global_batch: 64, seq_len: 2048}")
    reject_unknown_keys(defaults, ("global_batch", "seq_len", "options", "baselines", "repeat"),
                        file=file, field="defaults")
    ctx = _Ctx(file=file, base=path.resolve().parent, defaults=defaults)
    raw = data.get("cases")
    if not isinstance(raw, list) or not raw:
        raise BadInputError("a suite needs a non-empty list of cases", file=file, field="cases",
                            fix="add cases, e.g.\n" + _EXAMPLE)
    cases = tuple(_case(item, k, ctx) for k, item in enumerate(raw))
    names = [c.name for c in cases]
    for k, n in enumerate(names):
        if n in names[:k]:
            raise BadInputError(f"case name {n!r} is used twice", file=file,
                                field=f"cases[{k}].name", fix="give every case its own name")
    reference = data.get("reference", names[0])
    if reference not in names:
        raise BadInputError(f"reference case {reference!r} is not in the suite", file=file,
                            field="reference", fix="name one of: " + ", ".join(names))
    return Suite(name=str(data.get("name", path.stem)), source_file=file, cases=cases,
                 reference=str(reference), description=str(data.get("description", "")))


def _case(item: Any, k: int, ctx: _Ctx) -> BenchCase:
    where = f"cases[{k}]"
    if not isinstance(item, dict):
        raise BadInputError("each case must be a mapping", file=ctx.file, field=where,
                            fix="see the example:\n" + _EXAMPLE)
    reject_unknown_keys(item, _CASE_KEYS, file=ctx.file, field=where)
    for key in ("name", "model", "cluster"):
        if key not in item:
            raise BadInputError(f"missing '{key}'", file=ctx.file, field=f"{where}.{key}",
                                fix="see the example:\n" + _EXAMPLE)
    name = str(item["name"])
    model = _path(item["model"], ctx, f"{where}.model")
    cluster = _path(item["cluster"], ctx, f"{where}.cluster")
    args = item.get("model_args", {}) or {}
    if not isinstance(args, dict):
        raise BadInputError("must be a mapping", file=ctx.file, field=f"{where}.model_args",
                            fix="write model_args: {size: 1.3b}")
    model_args = {str(a): str(v) for a, v in sorted(args.items())}
    gb = _positive_int(item.get("global_batch", ctx.defaults.get("global_batch", 64)), ctx,
                       f"{where}.global_batch")
    seq = _positive_int(item.get("seq_len", ctx.defaults.get("seq_len", 2048)), ctx,
                        f"{where}.seq_len")
    options = {**(ctx.defaults.get("options") or {}), **(item.get("options") or {})}
    reject_unknown_keys(options, _TRAINING_OPTIONS + _SEARCH_OPTIONS, file=ctx.file,
                        field=f"{where}.options")
    training, search = _configs(options, gb, seq, ctx, f"{where}.options")
    baselines = item.get("baselines", ctx.defaults.get("baselines", list(BASELINE_KINDS)))
    if not isinstance(baselines, list) or any(b not in BASELINE_KINDS for b in baselines):
        raise BadInputError(f"unknown baseline in {baselines!r}", file=ctx.file,
                            field=f"{where}.baselines",
                            fix="list some of: " + ", ".join(BASELINE_KINDS))
    repeat = _positive_int(item.get("repeat", ctx.defaults.get("repeat", 1)), ctx,
                           f"{where}.repeat")
    return BenchCase(name=name, model=model, model_args=model_args, cluster=cluster,
                     training=training, search=search, baselines=tuple(baselines),
                     repeat=repeat, note=" ".join(str(item.get("note", "")).split()))


def _path(value: Any, ctx: _Ctx, fld: str) -> Path:
    if not isinstance(value, str) or not value:
        raise BadInputError("must be a file path", file=ctx.file, field=fld,
                            fix="give a path relative to the suite file")
    p = (ctx.base / value).resolve()
    if not p.is_file():
        raise BadInputError(f"{value!r} does not exist (looked at {p})", file=ctx.file,
                            field=fld, fix="paths in a suite are relative to the suite file")
    return p


def _positive_int(value: Any, ctx: _Ctx, fld: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInputError(f"must be a positive integer, got {value!r}", file=ctx.file,
                            field=fld, fix="use a whole number ≥ 1")
    return value


def _int_tuple(value: Any, ctx: _Ctx, fld: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise BadInputError("must be a non-empty list of integers", file=ctx.file, field=fld,
                            fix="write e.g. [1, 2, 4, 8]")
    return tuple(_positive_int(v, ctx, fld) for v in value)


def _bool(value: Any, ctx: _Ctx, fld: str) -> bool:
    if not isinstance(value, bool):
        raise BadInputError(f"must be true or false, got {value!r}", file=ctx.file, field=fld,
                            fix="write true or false")
    return value


def _configs(options: dict[str, Any], gb: int, seq: int, ctx: _Ctx, where: str
             ) -> tuple[TrainingConfig, SearchConfig]:
    def fld(key: str) -> str:
        return f"{where}.{key}"

    dtype = str(options.get("dtype", "bf16"))
    if dtype not in DTYPE_BYTES:
        raise BadInputError(f"unknown dtype {dtype!r}", file=ctx.file, field=fld("dtype"),
                            fix="use one of: " + ", ".join(DTYPE_BYTES))
    schedule = str(options.get("schedule", "1f1b"))
    if schedule not in SCHEDULES:
        raise BadInputError(f"unknown schedule {schedule!r}", file=ctx.file,
                            field=fld("schedule"), fix="use one of: " + ", ".join(SCHEDULES))
    reserve = options.get("memory_reserve_gb", 2.0)
    if (isinstance(reserve, bool) or not isinstance(reserve, int | float)
            or not math.isfinite(reserve) or reserve < 0):
        raise BadInputError(f"must be a number ≥ 0, got {reserve!r}", file=ctx.file,
                            field=fld("memory_reserve_gb"), fix="write e.g. 2.0")
    training = TrainingConfig(global_batch=gb, seq_len=seq, dtype=dtype, schedule=schedule,
                              zero1=_bool(options.get("zero1", False), ctx, fld("zero1")),
                              memory_reserve_gb=float(reserve))
    limit = options.get("time_limit_s", 60.0)
    if (isinstance(limit, bool) or not isinstance(limit, int | float)
            or not math.isfinite(limit) or limit <= 0):
        raise BadInputError(f"must be a positive number, got {limit!r}", file=ctx.file,
                            field=fld("time_limit_s"), fix="write e.g. 60")
    target = str(options.get("target", ""))
    if target not in ("", "megatron", "torchtitan", "deepspeed"):
        raise BadInputError(f"unknown target {target!r}", file=ctx.file, field=fld("target"),
                            fix="use megatron, torchtitan, deepspeed or leave it out")
    max_stages = options.get("max_stages", 0)
    if isinstance(max_stages, bool) or not isinstance(max_stages, int) or max_stages < 0:
        raise BadInputError(f"must be an integer ≥ 0, got {max_stages!r}", file=ctx.file,
                            field=fld("max_stages"), fix="write 0 for no limit")
    defaults = SearchConfig()
    search = SearchConfig(
        time_limit_s=float(limit),
        micro_batch_sizes=_int_tuple(options["micro_batch_sizes"], ctx,
                                     fld("micro_batch_sizes"))
        if "micro_batch_sizes" in options else defaults.micro_batch_sizes,
        tp_degrees=_int_tuple(options["tp_degrees"], ctx, fld("tp_degrees"))
        if "tp_degrees" in options else defaults.tp_degrees,
        max_stages=max_stages,
        allow_idle=_bool(options.get("allow_idle", True), ctx, fld("allow_idle")),
        allow_recompute=_bool(options.get("allow_recompute", True), ctx,
                              fld("allow_recompute")),
        target=target)
    return training, search
