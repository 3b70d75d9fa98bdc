"""What a uniform runtime cannot express, and the nearest plan it can.

Megatron-LM, torchtitan and DeepSpeed take one TP size and one DP size for all stages and
split every micro-batch equally over the replicas (see docs/export.md). A heterogeneous plan
often wants more: TP 4 on the fast chips and 2 on the slow ones, three replicas here and two
there, a larger batch share for a faster replica, recompute only where memory is short.

``expressibility_problems`` names each such feature in a sentence. It is pure and cheap (no
model, no cost model), so the search can call it on every candidate to keep only plans a
target runs. ``project_plan`` turns a plan into the nearest one the target can run — one TP
size (the one that re-costs best), equal DP, equal batch shares, one recompute switch (on if
any stage needs it to fit) — and re-costs it, so the user sees what the runtime costs them.
Kubernetes launches our own runtime, which runs any plan, so it has no problems.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from autosplit.cluster.schema import Cluster
from autosplit.cost.schedule import get_schedule
from autosplit.errors import BadInputError
from autosplit.export import TARGETS
from autosplit.export.schedules import TARGET_SCHEDULES, UNIFORM_TARGETS, schedule_problems
from autosplit.model.types import ModelProfile
from autosplit.plan.schema import Plan, Replica, StagePlan
from autosplit.protocols.cost import LayerCostProvider

__all__ = [
    "UNIFORM_TARGETS",
    "TARGET_SCHEDULES",
    "expressibility_problems",
    "project_plan",
    "projection_summary",
    "memory_problems",
]

# ``UNIFORM_TARGETS`` and ``TARGET_SCHEDULES`` live in ``export.schedules`` (derived from the
# schedule registry); they are named here too because the search and the command line read
# them beside ``expressibility_problems``.


def expressibility_problems(plan: Plan, target: str) -> list[str]:
    """Sentences naming what ``target`` cannot express in ``plan``; empty when it can.

    ``target`` is one of ``TARGETS`` (case-insensitive); ``""`` means "no target" and has no
    problems. Pure: reads only the plan's stages.
    """
    t = _target(target)
    if t not in UNIFORM_TARGETS:
        return []
    stages = plan.stages
    problems: list[str] = []
    problems += _size_problems(stages, t, "TP", [s.tp for s in stages],
                               lambda v: f"uses TP={v}")
    problems += _size_problems(stages, t, "DP", [s.dp for s in stages],
                               lambda v: f"has DP={v} ({v} replica{'s' if v != 1 else ''})")
    for s in stages:
        shares = [r.batch_share for r in s.replicas]
        if len(set(shares)) > 1:
            problems.append(
                f"uneven batch shares in stage {s.index} (its replicas take "
                f"{', '.join(map(str, shares))} samples of each micro-batch) but {t} gives "
                "every replica the same share")
    on = [s.index for s in stages if s.recompute]
    off = [s.index for s in stages if not s.recompute]
    if on and off:
        problems.append(
            f"per-stage recompute differs ({_stages(on)} recompute{'s' if len(on) == 1 else ''}"
            f", {_stages(off)} do{'es' if len(off) == 1 else ''} not) but {t} applies one "
            "recompute setting to all stages")
    problems += schedule_problems(plan, t)
    return problems


def project_plan(plan: Plan, target: str, *, model: ModelProfile, cluster: Cluster,
                 costs: LayerCostProvider | None) -> Plan:
    """The nearest plan ``target`` can express, re-costed with ``evaluate_plan``.

    Stages keep their layers, chip and nodes. Every TP size the plan uses is tried; each stage
    regroups its own devices into groups of that size (inside one node), DP becomes the
    smallest group count over the stages (lowered until it divides the global batch), the
    micro-batch count moves to the nearest one that splits equally, and recompute is off
    unless some stage then does not fit. The candidate that fits and is fastest wins (ties:
    the more common TP); when none fits, the one closest to fitting. Devices the projection
    cannot use are listed in ``idle_devices``.
    Already-expressible plans come back unchanged (re-costed if they had no prediction).
    """
    # Looked up at call time: ``expressibility_problems`` stays importable without the cost
    # model, so the search can use it cheaply.
    from autosplit.plan import evaluate as _evaluate

    t = _target(target)

    def cost(p: Plan) -> Plan:
        return _evaluate.evaluate_plan(p, model=model, cluster=cluster, costs=costs)

    if not expressibility_problems(plan, t):
        return plan if plan.prediction is not None else cost(plan)

    best: Plan | None = None
    reasons: list[str] = []
    for schedule, keep_chunks in _schedule_options(plan, t):
        start = plan if keep_chunks else _one_chunk_per_rank(plan, model)
        best = _best_reshape(start, t, schedule, cost, reasons)
        if best is not None:
            break
    if best is None:
        raise BadInputError(f"no {t}-expressible projection of this plan exists: "
                            + "; ".join(reasons),
                            fix="search again with --target " + t)
    return _annotate(best, plan, t)


def projection_summary(original: Plan, projected: Plan, target: str) -> list[str]:
    """Sentences saying what the projection changed and what it costs."""
    s0 = projected.stages[0]
    what = [f"uniform TP={s0.tp}", f"DP={s0.dp}",
            f"{s0.replicas[0].batch_share} sample(s) per replica per micro-batch",
            f"{projected.micro_batch_count} micro-batches",
            "recompute on all stages" if s0.recompute else "no recompute"]
    if projected.schedule != original.schedule:
        what.append(f"schedule {projected.schedule}")
    lines = [", ".join(what)]
    a, b = original.prediction, projected.prediction
    if a is not None and b is not None and a.iteration_s > 0:
        change = (b.iteration_s - a.iteration_s) / a.iteration_s
        word = "slower" if change >= 0 else "faster"
        pct = abs(change) * 100
        pct_text = f"{pct:.1f}" if pct < 1 else f"{pct:.0f}"
        lines[0] += (f": iteration {_secs(b.iteration_s)} vs {_secs(a.iteration_s)} planned "
                     f"({pct_text}% {word})")
    freed = len(projected.idle_devices) - len(original.idle_devices)
    if freed > 0:
        lines.append(f"{freed} device(s) left idle by the projection: "
                     + ", ".join(d for d in projected.idle_devices
                                 if d not in original.idle_devices))
    lines += memory_problems(projected)
    return lines


def memory_problems(plan: Plan) -> list[str]:
    """One sentence per stage whose predicted peak memory exceeds its device's capacity."""
    if plan.prediction is None:
        return []
    out = []
    for sp, stage in zip(plan.prediction.stages, plan.stages, strict=False):
        mem = sp.memory
        if not mem.fits:
            out.append(f"the plan does not fit in memory: stage {stage.index} needs "
                       f"{mem.total / 1e9:.1f} GB of {mem.capacity / 1e9:.1f} GB on "
                       f"{stage.chip}")
    return out


# ---- helpers ------------------------------------------------------------------------------


def _target(target: str) -> str:
    t = (target or "").strip().lower()
    if t and t not in TARGETS:
        raise BadInputError(f"unknown target '{target}'", field="target",
                            fix=f"use one of: {', '.join(TARGETS)}")
    return t


def _by_frequency(values: Sequence[int]) -> list[int]:
    """Distinct values, most common first; ties broken by first appearance."""
    counts = Counter(values)
    first = {v: values.index(v) for v in counts}
    return sorted(counts, key=lambda v: (-counts[v], first[v]))


def _size_problems(stages: Sequence[StagePlan], target: str, label: str, values: list[int],
                   says: Callable[[int], str]) -> list[str]:
    if len(set(values)) <= 1:
        return []
    common = _by_frequency(values)[0]
    out = []
    for s, v in zip(stages, values, strict=True):
        if v == common:
            continue
        others = {w for s2, w in zip(stages, values, strict=True) if s2.index != s.index}
        tail = f"others use {common}" if others == {common} else f"most use {common}"
        out.append(f"stage {s.index} {says(v)} but {target} needs one {label} size for all "
                   f"stages ({tail})")
    return out


def _stages(indices: list[int]) -> str:
    if len(indices) == 1:
        return f"stage {indices[0]}"
    return "stages " + ", ".join(map(str, indices))


def _secs(s: float) -> str:
    return f"{s:.3g} s" if s >= 0.01 else f"{s * 1e3:.3g} ms"


@dataclass(frozen=True)
class _Group:
    node: str
    indices: tuple[int, ...]


def _groups(stage: StagePlan, tp: int) -> list[_Group]:
    """Groups of ``tp`` devices, each inside one node, from the devices the stage owns."""
    per_node: dict[str, list[int]] = {}
    for r in stage.replicas:
        per_node.setdefault(r.node, []).extend(r.local_indices)
    out = []
    for node, idx in per_node.items():
        ordered = sorted(set(idx))
        for k in range(len(ordered) // tp):
            out.append(_Group(node, tuple(ordered[k * tp:(k + 1) * tp])))
    return out


def _one_chunk_per_rank(plan: Plan, model: ModelProfile) -> Plan:
    """A plan of several chunks per rank as one stage per rank, for a target schedule that
    runs one: each rank keeps its devices and its number of units, now contiguous, in rank
    order (the plan the search re-costed under the chunked schedule had this shape)."""
    ranks = sorted({s.pipeline_rank for s in plan.stages})
    stages: list[StagePlan] = []
    start = 0
    for r in ranks:
        chunks = [s for s in plan.stages if s.pipeline_rank == r]
        n = sum(s.layer_end - s.layer_start for s in chunks)
        units = model.layers[start:start + n]
        stages.append(replace(chunks[0], index=len(stages), layer_start=start,
                              layer_end=start + n, layer_names=tuple(u.name for u in units),
                              module_names=tuple(m for u in units for m in u.module_names),
                              rank=None))
        start += n
    return replace(plan, stages=tuple(stages), virtual_stages=1, prediction=None)


def _schedule_options(plan: Plan, target: str) -> list[tuple[str, bool]]:
    """Schedules to project onto, nearest first, and whether each keeps the plan's chunks.

    The plan's own schedule when the target runs it; else a schedule of the target that
    places the same chunks on the same ranks (interleaved zero bubble becomes interleaved
    1F1B on Megatron-LM); last the target's first one-chunk schedule (1F1B), every rank's
    chunks merged into one stage.
    """
    options: list[tuple[str, bool]] = []
    ranks = plan.num_ranks
    names = sorted(TARGET_SCHEDULES[target], key=lambda n: n != plan.schedule)
    for name in names:
        try:
            other = get_schedule(name, virtual_stages=plan.virtual_stages)
        except BadInputError:
            continue  # cannot run this many chunks per rank
        if all(other.rank_of(s.index, ranks) == s.pipeline_rank for s in plan.stages):
            options.append((name, True))
    if plan.virtual_stages == 1:
        return options
    one_chunk = next(n for n in TARGET_SCHEDULES[target]
                     if type(get_schedule(n)).min_virtual == 1)
    return [*options, (one_chunk, False)]


def _best_reshape(plan: Plan, target: str, schedule: str, cost: Callable[[Plan], Plan],
                  reasons: list[str]) -> Plan | None:
    """The fastest fitting (else least over-full) reshaping of ``plan`` under ``schedule``
    that ``target`` can express; ``None`` (and the reasons) when there is none."""
    tp_order = _by_frequency([s.tp for s in plan.stages])
    best: tuple[tuple[int, float, float, int], Plan] | None = None
    for rank, tp in enumerate(tp_order):
        shaped = _reshape(plan, tp=tp, schedule=schedule)
        if isinstance(shaped, str):
            reasons.append(shaped)
            continue
        left = schedule_problems(shaped, target)
        if left:
            reasons += left
            continue
        for recompute in (False, True):
            candidate = cost(_with_recompute(shaped, recompute))
            over = _overflow(candidate)
            fits = over <= 0
            pred = candidate.prediction
            iteration = pred.iteration_s if pred is not None else float("inf")
            # fitting plans by speed; if none fits, the one closest to fitting
            key = (0, 0.0, iteration, rank) if fits else (1, over, iteration, rank)
            if best is None or key < best[0]:
                best = (key, candidate)
            if fits:
                break  # recompute off fits: on would only be slower
    return None if best is None else best[1]


def _reshape(plan: Plan, *, tp: int, schedule: str) -> Plan | str:
    """The plan with one TP size and equal DP and batch shares, or why that is impossible."""
    groups = [_groups(s, tp) for s in plan.stages]
    dp = min(len(g) for g in groups)
    if dp == 0:
        short = next(s.index for s, g in zip(plan.stages, groups, strict=True) if not g)
        return f"TP={tp} does not fit in one node of stage {short}"
    while dp > 1 and plan.global_batch % dp:
        dp -= 1
    micro = _nearest_micro_batch_count(plan.global_batch // dp, plan.micro_batch_count)
    share = plan.global_batch // micro // dp
    stages = tuple(
        replace(s, tp=tp, replicas=tuple(Replica(g.node, g.indices, share) for g in gs[:dp]))
        for s, gs in zip(plan.stages, groups, strict=True))
    return replace(plan, stages=stages, micro_batch_count=micro, schedule=schedule,
                   prediction=None)


def _nearest_micro_batch_count(per_replica: int, wanted: int) -> int:
    """The divisor of ``per_replica`` closest to ``wanted`` (ties: the larger, less bubble)."""
    divisors = [d for d in range(1, per_replica + 1) if per_replica % d == 0]
    return min(divisors, key=lambda d: (abs(d - wanted), -d))


def _with_recompute(plan: Plan, on: bool) -> Plan:
    return replace(plan, stages=tuple(replace(s, recompute=on) for s in plan.stages))


def _overflow(plan: Plan) -> float:
    """Bytes by which the most over-full stage exceeds its capacity (<= 0: all fit)."""
    if plan.prediction is None:
        return 0.0
    return max(sp.memory.total - sp.memory.capacity for sp in plan.prediction.stages)


def _devices(plan: Plan) -> set[str]:
    return {f"{r.node}:{i}" for s in plan.stages for r in s.replicas for i in r.local_indices}


def _annotate(projected: Plan, original: Plan, target: str) -> Plan:
    freed = _devices(original) - _devices(projected)
    idle = tuple(sorted(set(original.idle_devices) | freed))
    note = original.idle_note
    if freed:
        note = (f"{len(freed)} device(s) idle after projecting for {target} (one TP and DP "
                "size for all stages)" + (f"; {note}" if note else ""))
    notes = (*original.search.notes, f"projected for {target}")
    return replace(projected, idle_devices=idle, idle_note=note, alternatives=(),
                   search=replace(original.search, notes=notes))
