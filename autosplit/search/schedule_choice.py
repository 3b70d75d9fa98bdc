"""Choose the pipeline schedule of the searched plan: the fastest variant that fits.

The search places stages and splits units under 1F1B's memory (``min(p − r, m)`` micro-batches
in flight on rank ``r``): the schedule with the least activation memory that every runtime
runs, so each of its plans can be run somewhere. Which schedule then finishes the iteration
soonest depends on the plan: interleaving shrinks the bubble by the chunks per rank but adds
transfers (Narayanan et al. 2021), the zero-bubble schedules fill it with weight-gradient
passes (Qi et al. 2023), and all of them keep more activations than 1F1B on later ranks. So
each finalist of the search is re-costed here under every schedule and chunk count that can
run its micro-batches, each by the event simulation and the memory check of that schedule
(activations of every chunk a rank holds, summed), and the fastest variant that fits wins.

Chunks: a rank keeps its devices and its number of units, dealt out in ``v`` chunks in model
order — rank ``r``'s chunk ``c`` is stage ``c·p + r`` (looped) or, for ZBV, stages ``r`` and
``2p − 1 − r`` (a V); chunk sizes differ by at most one unit (the schedules run uneven chunks).
``v`` is 2 and every larger count up to ``MAX_VIRTUAL`` that divides every rank's units.

1F1B is always a candidate, so the chosen plan is never slower (by the simulation) than the
plan the same search gives with ``--schedule 1f1b``. Ties go to the simpler schedule
(``SCHEDULE_NAMES`` order), then to fewer chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from autosplit.cluster.schema import Cluster
from autosplit.config import TrainingConfig
from autosplit.cost.predict import StageAssignment, peak_flops_of, predict
from autosplit.cost.schedule import SCHEDULE_NAMES, get_schedule
from autosplit.cost.stage import lane_memory, make_context
from autosplit.errors import BadInputError, NoFeasiblePlanError
from autosplit.model.types import ModelProfile
from autosplit.plan.schema import Plan, Prediction, StagePlan
from autosplit.search.assemble import Solution

__all__ = ["AUTO", "SCHEDULE_CHOICES", "MAX_VIRTUAL", "ScheduleVariant", "base_schedule",
           "candidate_schedules", "choose_schedules", "target_schedules", "variant_stages",
           "with_variant"]

#: ``--schedule auto``: the search picks the schedule.
AUTO = "auto"
#: What ``--schedule`` accepts.
SCHEDULE_CHOICES: tuple[str, ...] = (AUTO, *SCHEDULE_NAMES)
#: Most chunks per rank tried: beyond this each chunk's transfers outweigh the bubble saved
#: for any plan the search makes (a rank owns a few units), and every count is a simulation.
MAX_VIRTUAL = 8


@dataclass(frozen=True)
class ScheduleVariant:
    """One finalist under one schedule: its (virtual) stages, prediction and schedule."""

    solution: Solution
    schedule: str
    virtual_stages: int
    stages: tuple[StageAssignment, ...]
    prediction: Prediction

    @property
    def fits(self) -> bool:
        return all(sp.memory.fits for sp in self.prediction.stages)

    def sort_key(self) -> tuple:
        return (self.prediction.iteration_s, SCHEDULE_NAMES.index(self.schedule),
                self.virtual_stages, self.solution.key)


def base_schedule(requested: str) -> str:
    """The schedule the search itself prices memory under: GPipe when asked for (it keeps
    every micro-batch), else 1F1B, whose plans every other schedule is derived from."""
    return "gpipe" if requested == "gpipe" else "1f1b"


def target_schedules(target: str) -> tuple[str, ...] | None:
    """Schedules a ``--target`` runtime can express (``None``: no target, every schedule)."""
    if not target:
        return None
    from autosplit.export.expressible import TARGET_SCHEDULES

    return TARGET_SCHEDULES.get(target.lower())


def _virtual_counts(name: str, units: Sequence[int]) -> list[int]:
    """Chunks per rank to try for ``name`` on ranks owning ``units`` units each."""
    cls = type(get_schedule(name))
    low, high = cls.min_virtual, cls.max_virtual or MAX_VIRTUAL
    if high == low:
        return [low] if min(units) >= low else []
    top = min(high, min(units))
    return [v for v in range(low, top + 1)
            if v == low or all(n % v == 0 for n in units)]


def candidate_schedules(requested: str, allowed: Sequence[str] | None,
                        units: Sequence[int]) -> list[tuple[str, int]]:
    """(schedule, chunks per rank) pairs to cost: every schedule for ``auto`` (those of
    ``allowed`` when a target restricts them), else the requested one at each chunk count."""
    names = list(SCHEDULE_NAMES) if requested == AUTO else [requested]
    if allowed is not None:
        names = [n for n in names if n in allowed]
    return [(n, v) for n in names for v in _virtual_counts(n, units)]


def _chunk_spans(sol: Solution, name: str, v: int) -> list[tuple[int, int, int]]:
    """(rank, first unit, end unit) of every virtual stage, in stage order."""
    p = len(sol.stages)
    sched = get_schedule(name, virtual_stages=v)
    counts = [st.end - st.start for st in sol.stages]
    taken = [0] * p
    out, start = [], 0
    for s in range(p * v):
        r = sched.rank_of(s, p)
        c = taken[r]
        taken[r] += 1
        n = counts[r] // v + (1 if c < counts[r] % v else 0)
        out.append((r, start, start + n))
        start += n
    return out


def variant_stages(sol: Solution, name: str, v: int, *, cluster: Cluster,
                   training: TrainingConfig) -> tuple[StageAssignment, ...]:
    """The finalist's stages under ``name`` with ``v`` chunks per rank, bound to the cost
    model as ``evaluate`` binds the same plan: each chunk on its rank's devices and tables,
    its neighbours the chunks before and after it in model order."""
    if v == 1:
        if name == training.schedule:
            return sol.stages
        spans = [(r, st.start, st.end) for r, st in enumerate(sol.stages)]
    else:
        spans = _chunk_spans(sol, name, v)
    ranks = sol.stages
    shapes = [ranks[r].ctx.shape for r, _, _ in spans]
    train = replace(training, schedule=name, virtual_stages=v)
    out = []
    for s, (r, a, b) in enumerate(spans):
        base = ranks[r].ctx
        lanes = {ln.chip.name: ln.tables for ln in base.lanes}

        def lane_tables(chip: str, _node, _share: int, _lanes=lanes):
            return _lanes[chip]

        ctx = make_context(cluster=cluster, shape=shapes[s], tables=base.tables, index=s,
                           num_stages=len(spans), micro_batches=sol.micro_batches,
                           training=train, prev=shapes[s - 1] if s else None,
                           nxt=shapes[s + 1] if s + 1 < len(spans) else None,
                           lane_tables=lane_tables)
        out.append(StageAssignment(ctx=ctx, start=a, end=b, recompute=ranks[r].recompute))
    return tuple(out)


def _variant(sol: Solution, name: str, v: int, *, model: ModelProfile, cluster: Cluster,
             training: TrainingConfig) -> ScheduleVariant | None:
    """The finalist re-costed under one schedule; ``None`` when that schedule cannot run its
    micro-batch count on its ranks or its activations clearly do not fit."""
    try:
        get_schedule(name, virtual_stages=v).check(len(sol.stages), sol.micro_batches)
    except BadInputError:
        return None
    stages = variant_stages(sol, name, v, cluster=cluster, training=training)
    if _clearly_over_memory(stages, get_schedule(name, virtual_stages=v), len(sol.stages)):
        return None
    pred = predict(stages, micro_batches=sol.micro_batches, model=model,
                   training=replace(training, schedule=name, virtual_stages=v),
                   peak_flops=peak_flops_of(sol.stages, cluster, training.dtype))
    return ScheduleVariant(solution=sol, schedule=name, virtual_stages=v, stages=stages,
                           prediction=pred)


def _clearly_over_memory(stages: Sequence[StageAssignment], schedule, ranks: int) -> bool:
    """Whether some rank cannot fit whatever its order of passes: its chunks' weights,
    gradients and optimizer states together plus the largest chunk's own activation peak
    (a lower bound on the rank's peak, which ``predict`` walks along the order) exceed its
    devices' memory (each chunk's fullest lane, the rank's capacity that of its first
    chunk). Checked before the simulation, which costs far more, for the variants that
    cannot fit anyway (most of them where the search's plan fills memory under 1F1B). A
    relative margin keeps the borderline cases for ``predict``'s own check."""
    static_of: dict[int, float] = {}
    act_of: dict[int, float] = {}
    capacity: dict[int, float] = {}
    for s, st in enumerate(stages):
        lane, static, act = lane_memory(st.ctx, st.start, st.end, st.recompute)
        r = schedule.rank_of(s, ranks)
        static_of[r] = static_of.get(r, 0.0) + static
        act_of[r] = max(act_of.get(r, 0.0), act)
        capacity.setdefault(r, lane.capacity)
    return any(static_of[r] + act_of[r] > capacity[r] * (1 + 1e-6) for r in static_of)


#: Relative difference in iteration time below which two variants count as equally fast,
#: so that rounding never trades 1F1B (which every runtime runs) for another schedule.
_SAME_TIME = 1e-9


def _simplest_fastest(variants: Sequence[ScheduleVariant]) -> ScheduleVariant:
    """The fastest variant, the simplest schedule among those as fast (``SCHEDULE_NAMES``
    order, then fewer chunks): with one rank, for instance, every schedule takes 1F1B's
    time and 1F1B is kept."""
    fastest = min(var.prediction.iteration_s for var in variants)
    tied = [var for var in variants
            if var.prediction.iteration_s <= fastest * (1 + _SAME_TIME)]
    return min(tied, key=lambda var: (SCHEDULE_NAMES.index(var.schedule), var.virtual_stages,
                                      var.prediction.iteration_s, var.solution.key))


def choose_schedules(finalists: Sequence[Solution], *, requested: str,
                     allowed: Sequence[str] | None, model: ModelProfile, cluster: Cluster,
                     training: TrainingConfig, target: str = "",
                     out_of_time: Callable[[], bool] = lambda: False) -> list[ScheduleVariant]:
    """Each finalist's fastest variant that fits, fastest first (one per finalist).

    With a ``target``, only variants that runtime runs as planned are costed (its schedule,
    and the micro-batch and rank counts it accepts for it: ``schedule_problems_for``).

    ``out_of_time`` is the search's clock: once it has run out, no further variant is
    simulated (the first fitting variant of the first finalist always is), so a time limit
    also bounds this last step; the caller records that the limit stopped the search.
    Raises ``NoFeasiblePlanError`` naming the schedule when a pinned schedule fits no
    finalist (its activations exceed what the search's plans leave free, or it cannot run
    their micro-batch counts)."""
    best: list[ScheduleVariant] = []
    for sol in finalists:
        if best and out_of_time():
            break
        units = [st.end - st.start for st in sol.stages]
        fitting: list[ScheduleVariant] = []
        for name, v in candidate_schedules(requested, allowed, units):
            if (fitting or best) and out_of_time():
                break
            if target and _target_refuses(target, name, v, sol):
                continue
            var = _variant(sol, name, v, model=model, cluster=cluster, training=training)
            if var is not None and var.fits:
                fitting.append(var)
        if fitting:
            best.append(_simplest_fastest(fitting))
    if not best:
        raise NoFeasiblePlanError(
            f"no plan the search found fits in memory, or runs its micro-batches, under the "
            f"{requested} schedule (it keeps more micro-batches in flight than 1F1B)",
            field="--schedule",
            fix="use --schedule auto to let the search choose, or --schedule 1f1b")
    return sorted(best, key=ScheduleVariant.sort_key)


def _target_refuses(target: str, name: str, v: int, sol: Solution) -> bool:
    from autosplit.export.schedules import schedule_problems_for

    return bool(schedule_problems_for(target.lower(), name, virtual_stages=v,
                                      ranks=len(sol.stages), micro_batches=sol.micro_batches))


def with_variant(plan: Plan, variant: ScheduleVariant, model: ModelProfile, *,
                 alternatives: Sequence[ScheduleVariant] = ()) -> Plan:
    """``plan`` (one stage per rank, as the search built it) under the variant's schedule:
    each chunk a stage on its rank's devices, the prediction the variant's. The summaries of
    ``plan.alternatives`` (``alternatives``' finalists, in order) name their schedule where
    it is not the plan's."""
    alts = tuple(alt if var.schedule == variant.schedule and
                 var.virtual_stages == variant.virtual_stages else
                 replace(alt, summary=f"{alt.summary}, {_label(var)}")
                 for alt, var in zip(plan.alternatives, alternatives, strict=True))
    plan = replace(plan, alternatives=alts or plan.alternatives)
    if variant.virtual_stages == 1:
        return replace(plan, schedule=variant.schedule, virtual_stages=1,
                       prediction=variant.prediction)
    stages: list[StagePlan] = []
    for s, st in enumerate(variant.stages):
        rank = plan.stages[_rank_of(variant, s)]
        units = model.layers[st.start:st.end]
        stages.append(replace(
            rank, index=s, layer_start=st.start, layer_end=st.end,
            layer_names=tuple(u.name for u in units),
            module_names=tuple(m for u in units for m in u.module_names),
            cost_source=st.ctx.tables.cost_source(st.start, st.end),
            rank=_rank_of(variant, s)))
    return replace(plan, schedule=variant.schedule, virtual_stages=variant.virtual_stages,
                   stages=tuple(stages), prediction=variant.prediction)


def _label(variant: ScheduleVariant) -> str:
    v = variant.virtual_stages
    return variant.schedule + (f" v={v}" if v > 1 else "")


def _rank_of(variant: ScheduleVariant, stage: int) -> int:
    sched = get_schedule(variant.schedule, virtual_stages=variant.virtual_stages)
    return sched.rank_of(stage, len(variant.solution.stages))
