"""Enumerate, bound, cost, re-check: the exhaustive optimum of a small problem.

1. Every device layout at every micro-batch count is a *row*; its pipelines are the
   combinations of its stages' share choices (``layouts.lane_maxima``). Building the rows
   builds every stage's own terms in the bank.
2. Each row gets a lower bound valid for all its pipelines and splits (``splits.lower_bound``
   on the least unit costs over the share choices, plus each boundary's least transfer twice
   and the first stage's least tail). Rows are expanded and costed over every split in
   increasing order of bound, in batches, until the next bound cannot beat the
   ``RECHECKED``-th best plan found (``prune=False`` costs every pipeline).
3. The best plans are rebuilt as ``Plan`` objects and re-costed by ``evaluate_plan``; they
   must agree with the matrices.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from autosplit.cluster.schema import Cluster
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.analytic import AnalyticCosts
from autosplit.cost.memory import in_flight_micro_batches
from autosplit.model.types import ModelProfile
from autosplit.plan.evaluate import closed_form_time, evaluate_plan
from autosplit.plan.schema import ClusterRef, ModelRef, Plan, SearchStats, StagePlan
from autosplit.protocols.cost import LayerCostProvider

from .layouts import DeviceLayouts, StageLayout, TableCache, lane_maxima, stage_shape
from .matrices import Bank
from .splits import SplitGrid, cost_splits, lower_bound, split_grid

__all__ = ["MAX_DEVICES", "MAX_UNITS", "RECHECKED", "ExhaustiveResult", "small_enough",
           "exhaustive_optimum", "plan_summary"]

#: Largest problem the enumeration accepts (it grows exponentially beyond).
MAX_DEVICES = 8
MAX_UNITS = 12
#: Best plans re-costed through ``evaluate_plan`` at the end.
RECHECKED = 12
#: Splits costed per numpy batch (bounds memory: a few arrays of this many floats).
_BATCH_CELLS = 1 << 20
_FIRST_BATCH_CELLS = 1 << 12
_REL_TOL = 1e-9


@dataclass(frozen=True)
class ExhaustiveResult:
    """The optimum (re-costed by ``evaluate_plan``) and how much was enumerated to find it.

    ``iteration_s`` is the least closed-form time of any plan (the objective the enumeration,
    like the search, minimises exactly) and ``plan`` a plan with it. ``simulated_s`` is the
    least simulated time (the prediction ``evaluate`` gives) among the ``RECHECKED`` best
    closed-form plans, ``simulated_plan`` that plan: the yardstick for the search's chosen
    plan, whose prediction is simulated too. ``plan`` is ``None`` and the times infinite when
    no plan fits in memory.
    """

    plan: Plan | None
    iteration_s: float
    simulated_plan: Plan | None
    simulated_s: float
    layouts: int  # pipelines of stage device layouts
    pipelines: int  # (layout, micro-batch count, lane shares): every one bounded or costed
    costed: int  # pipelines costed over every layer split (the others were bounded out)
    plans: int  # (pipeline, split) combinations costed that fit in memory
    rechecked: int  # plans re-costed through evaluate_plan

    @property
    def summary(self) -> str:
        return plan_summary(self.plan) if self.plan is not None else "no plan fits"


def small_enough(model: ModelProfile, cluster: Cluster) -> bool:
    """Whether ``exhaustive_optimum`` accepts the problem."""
    return cluster.num_devices <= MAX_DEVICES and model.num_layers <= MAX_UNITS


def plan_summary(plan: Plan) -> str:
    """One line, e.g. ``m=4: A100[TP2·DP1]×3 → H100[TP1·DP2]×7, 1 idle``: per stage its
    chips, degrees, uneven shares, recomputation and number of units."""
    parts = []
    for st in plan.stages:
        shares = sorted((r.batch_share for r in st.replicas), reverse=True)
        uneven = f", shares {'/'.join(map(str, shares))}" if len(set(shares)) > 1 else ""
        rc = ", recompute" if st.recompute else ""
        parts.append(f"{st.chip_label}[TP{st.tp}·DP{st.dp}{uneven}{rc}]×{st.num_layers}")
    idle = f", {len(plan.idle_devices)} idle" if plan.idle_devices else ""
    return f"m={plan.micro_batch_count}: " + " → ".join(parts) + idle


@dataclass(frozen=True)
class _Options:
    """A stage's share choices at one position: own-term ids and largest shares."""

    own: tuple[int, ...]
    largest: tuple[int, ...]
    relaxed: int  # bank id of the least unit bounds over the choices


@dataclass(frozen=True)
class _Row:
    """A device layout at one micro-batch count: the pipelines of all its share choices."""

    layout: int
    micro_batches: int
    stages: tuple[_Options, ...]

    @property
    def pipelines(self) -> int:
        return math.prod(len(o.own) for o in self.stages)


@dataclass(frozen=True)
class _Found:
    """A plan found by the matrices, before ``evaluate_plan`` re-costs it."""

    iteration_s: float
    order: tuple[int, tuple[int, ...]]  # (row, choice): the tie-break, for determinism
    layout: int
    choice: tuple[int, ...]  # index of each stage's share choice
    micro_batches: int
    bounds: tuple[int, ...]
    recompute: tuple[bool, ...]


class _Enumeration:
    """One problem's layouts, bank and rows (step 1 of the module docstring)."""

    def __init__(self, model: ModelProfile, cluster: Cluster, training: TrainingConfig,
                 search: SearchConfig, costs: LayerCostProvider) -> None:
        self.model, self.cluster, self.training = model, cluster, training
        n = model.num_layers
        max_stages = min(search.max_stages or n, n)
        self.max_share = max(search.micro_batch_sizes)
        self.tables = TableCache(model, cluster, costs, training.dtype)
        self.bank = Bank(model, cluster, training, self.tables,
                         allow_recompute=search.allow_recompute, max_share=self.max_share)
        self.layouts = list(DeviceLayouts(cluster, search, max_stages=max_stages,
                                          dtype=training.dtype).pipelines())
        self._maxima: dict[tuple[StageLayout, int], list[tuple[int, ...]]] = {}
        self._options: dict[tuple[StageLayout, int, int], _Options] = {}
        self._by_count: dict[tuple[StageLayout, int, int], tuple[_Options, ...]] = {}

    def maxima(self, stage: StageLayout, samples: int) -> list[tuple[int, ...]]:
        """The stage's lane-maxima choices at ``samples`` per micro-batch (reduction 4)."""
        key = (stage, samples)
        if key not in self._maxima:
            self._maxima[key] = lane_maxima(self.tables, self.cluster, stage, samples,
                                            self.max_share)
        return self._maxima[key]

    def rows(self) -> list[_Row]:
        """Every (layout, micro-batch count) with at least one share choice per stage."""
        g = self.training.global_batch
        counts = [d for d in range(1, g + 1) if g % d == 0]
        out = []
        for li, layout in enumerate(self.layouts):
            p = len(layout)
            per_stage = [self._options_by_count(st, s, p, counts) for s, st in enumerate(layout)]
            for k, m in enumerate(counts):
                stages = tuple(o[k] for o in per_stage)
                if all(o.own for o in stages):
                    out.append(_Row(li, m, stages))
        return out

    def _options_by_count(self, stage: StageLayout, s: int, p: int,
                          counts: list[int]) -> tuple[_Options, ...]:
        """The stage's share choices at position ``s`` of ``p``, per micro-batch count."""
        key = (stage, s, p)
        if key not in self._by_count:
            self._by_count[key] = tuple(self._stage_options(stage, s, p, m) for m in counts)
        return self._by_count[key]

    def _stage_options(self, stage: StageLayout, s: int, p: int, m: int) -> _Options:
        samples = self.training.global_batch // m
        in_flight = in_flight_micro_batches(schedule=self.training.schedule, stage=s,
                                            num_stages=p, micro_batches=m)
        key = (stage, samples, in_flight)
        if key not in self._options:
            choices = self.maxima(stage, samples)
            own = tuple(self.bank.own(stage, x, samples, index=s, num_stages=p,
                                      micro_batches=m) for x in choices)
            self._options[key] = _Options(own=own, largest=tuple(max(x) for x in choices),
                                          relaxed=self.bank.relaxed(own) if own else -1)
        return self._options[key]


def exhaustive_optimum(*, model: ModelProfile, cluster: Cluster, training: TrainingConfig,
                       search: SearchConfig | None = None,
                       costs: LayerCostProvider | None = None,
                       prune: bool = True) -> ExhaustiveResult:
    """The fastest plan the schema expresses (package docstring).

    ``search`` supplies the user's limits on the space — ``tp_degrees``,
    ``micro_batch_sizes`` (the largest share one replica may get), ``max_stages``,
    ``allow_idle``, ``allow_recompute`` — and nothing else. ``target`` is refused: the
    runtimes a target names express only part of the schema. ``prune=False`` costs every
    pipeline instead of bounding (for tests of the bound).
    """
    search = search or SearchConfig()
    if not small_enough(model, cluster):
        raise ValueError(f"the exhaustive enumeration is limited to {MAX_DEVICES} devices and "
                         f"{MAX_UNITS} units; got {cluster.num_devices} and {model.num_layers}")
    if search.target:
        raise ValueError("the exhaustive enumeration covers the whole plan schema; "
                         f"it does not restrict to --target {search.target}")
    costs = costs or AnalyticCosts()
    work = _Enumeration(model, cluster, training, search, costs)
    rows = work.rows()
    counter = _Counter(layouts=len(work.layouts), pipelines=sum(r.pipelines for r in rows))
    found = _Costing(work, counter).run(rows, prune=prune) if rows else []
    return _recheck(found, work, costs=costs, counter=counter)


@dataclass
class _Counter:
    layouts: int
    pipelines: int
    costed: int = 0
    plans: int = 0


class _Costing:
    """Step 2: rows in order of bound, expanded into pipelines and costed in batches."""

    def __init__(self, work: _Enumeration, counter: _Counter) -> None:
        self.work, self.counter = work, counter
        self.bank = work.bank.arrays()
        self.grids: dict[int, SplitGrid] = {}
        self.best: list[_Found] = []

    def run(self, rows: list[_Row], *, prune: bool) -> list[_Found]:
        bound = self._bounds(rows)
        pending: list[int] = []
        cells = 0
        # Batches start small, so that the first plans found start pruning early, and grow.
        batch = _FIRST_BATCH_CELLS
        for k in np.argsort(bound, kind="stable"):
            if prune and len(self.best) >= RECHECKED and bound[k] >= self.best[-1].iteration_s:
                break
            pending.append(int(k))
            cells += rows[k].pipelines * self._grid(len(rows[k].stages)).size
            if cells >= batch:
                self._flush(rows, pending)
                pending, cells = [], 0
                batch = min(2 * batch, _BATCH_CELLS)
        self._flush(rows, pending)
        return self.best

    def _grid(self, p: int) -> SplitGrid:
        if p not in self.grids:
            self.grids[p] = split_grid(self.work.model.num_layers, p)
        return self.grids[p]

    def _bounds(self, rows: list[_Row]) -> np.ndarray:
        """Per row, a time none of its pipelines can beat (``splits.lower_bound``, plus each
        boundary's least transfer twice and the first stage's least tail); shaved by a
        relative 1e-12 so that rounding cannot lift a bound above the value it bounds."""
        out = np.empty(len(rows))
        by_depth: dict[int, list[int]] = {}
        for k, row in enumerate(rows):
            by_depth.setdefault(len(row.stages), []).append(k)
        bank = self.bank
        for p, ks in by_depth.items():
            ids = np.array([[o.relaxed for o in rows[k].stages] for k in ks]).reshape(-1, p)
            micro = np.array([rows[k].micro_batches for k in ks])
            ends = np.array([self._boundaries(rows[k]) for k in ks],
                            dtype=int).reshape(len(ks), p - 1, 3)
            floors = bank.transfer_floor[(ends[..., 0] * bank.nodes + ends[..., 1])
                                         * bank.shares + ends[..., 2]].sum(axis=1)
            out[ks] = (lower_bound(bank.relaxed_bound, ids, micro) + 2.0 * floors
                       + np.maximum(bank.relaxed_first_tail[ids[:, 0]], 0.0))
        return out * (1 - 1e-12)

    def _boundaries(self, row: _Row) -> list[tuple[int, int, int]]:
        """(last node, next first node, least share) per boundary of the row's pipelines."""
        layout = self.work.layouts[row.layout]
        return [(layout[s].last_node, layout[s + 1].first_node,
                 max(min(row.stages[s].largest), min(row.stages[s + 1].largest)))
                for s in range(len(layout) - 1)]

    def _flush(self, rows: list[_Row], pending: list[int]) -> None:
        """Cost every pipeline of the pending rows, one batch per depth."""
        by_depth: dict[int, list[int]] = {}
        for k in pending:
            by_depth.setdefault(len(rows[k].stages), []).append(k)
        for p, ks in sorted(by_depth.items()):
            self._cost(rows, p, ks)

    def _cost(self, rows: list[_Row], p: int, ks: list[int]) -> None:
        own, largest, first, micro, origin = [], [], [], [], []
        for k in ks:
            row = rows[k]
            starts = [st.first_node for st in self.work.layouts[row.layout]]
            for choice in itertools.product(*(range(len(o.own)) for o in row.stages)):
                own.append([o.own[c] for o, c in zip(row.stages, choice, strict=True)])
                largest.append([o.largest[c] for o, c in zip(row.stages, choice, strict=True)])
                first.append(starts)
                micro.append(row.micro_batches)
                origin.append((k, choice))
        own_a, big, first_a = (np.array(a, dtype=int).reshape(len(a), p)
                               for a in (own, largest, first))
        micro_a = np.array(micro, dtype=int)
        share = np.maximum(big[:, :-1], big[:, 1:])
        boundary = self.bank.boundary_ids(own_a[:, :-1], first_a[:, 1:], share)
        grid = self._grid(p)
        res = cost_splits(self.bank, grid, own_a, boundary, micro_a)
        self.counter.costed += len(own_a)
        self.counter.plans += int(res.feasible.sum())
        for q in np.flatnonzero(np.isfinite(res.best)):
            value = float(res.best[q])
            if len(self.best) >= RECHECKED and value >= self.best[-1].iteration_s:
                continue
            cells = grid.flat[res.row[q]]
            k, choice = origin[q]
            self.best.append(_Found(
                iteration_s=value, order=(int(k), choice), layout=rows[k].layout,
                choice=choice, micro_batches=int(micro_a[q]),
                bounds=(0, *(int(e) for e in grid.ends[res.row[q]])),
                recompute=tuple(bool(self.bank.recompute[own_a[q, s], cells[s]])
                                for s in range(p))))
            self.best.sort(key=lambda f: (f.iteration_s, f.order))
            del self.best[RECHECKED:]


def _recheck(found: list[_Found], work: _Enumeration, *, costs: LayerCostProvider,
             counter: _Counter) -> ExhaustiveResult:
    """Step 3: re-cost the best plans through ``evaluate_plan``; they must agree."""
    checked: list[tuple[float, tuple[int, tuple[int, ...]], Plan]] = []
    for f in found:
        plan = evaluate_plan(_plan(f, work), model=work.model, cluster=work.cluster,
                             costs=costs)
        pred = plan.prediction
        assert pred is not None
        fits = all(st.memory.fits for st in pred.stages)
        # The enumeration minimises the search's objective, the closed form (the prediction
        # is the schedule's simulation of the same plan).
        closed = closed_form_time(plan, model=work.model, cluster=work.cluster, costs=costs)
        if abs(closed - f.iteration_s) > _REL_TOL * f.iteration_s or not fits:
            raise RuntimeError(
                f"the exhaustive enumeration costed {plan_summary(plan)} at {f.iteration_s!r} s "
                f"(fits in memory); evaluate's cost model says {closed!r} s (fits: {fits}): "
                "the two have drifted apart")
        checked.append((closed, f.order, plan))
    counts = asdict(counter)
    if not checked:
        return ExhaustiveResult(plan=None, iteration_s=math.inf, simulated_plan=None,
                                simulated_s=math.inf, rechecked=0, **counts)
    t, _, plan = min(checked, key=lambda c: (c[0], c[1]))
    sim = min(checked, key=lambda c: (c[2].prediction.iteration_s, c[1]))[2]
    stats = SearchStats(explored=counter.plans, level1_candidates=counter.pipelines,
                        notes=("exhaustive enumeration of the plan schema",))
    return ExhaustiveResult(plan=replace(plan, search=stats), iteration_s=t,
                            simulated_plan=replace(sim, search=stats),
                            simulated_s=sim.prediction.iteration_s,
                            rechecked=len(checked), **counts)


def _plan(f: _Found, work: _Enumeration) -> Plan:
    model, cluster, training = work.model, work.cluster, work.training
    samples = training.global_batch // f.micro_batches
    first_free: dict[int, int] = {}
    stages = []
    for s, (stage, c) in enumerate(zip(work.layouts[f.layout], f.choice, strict=True)):
        shape = stage_shape(cluster, stage, work.maxima(stage, samples)[c], samples, first_free)
        i, j = f.bounds[s], f.bounds[s + 1]
        units = model.layers[i:j]
        stages.append(StagePlan(
            index=s, chip=shape.chip, layer_start=i, layer_end=j,
            layer_names=tuple(u.name for u in units),
            module_names=tuple(name for u in units for name in u.module_names),
            tp=shape.tp, replicas=shape.replicas, recompute=f.recompute[s]))
    used = {(r.node, i) for st in stages for r in st.replicas for i in r.local_indices}
    idle = tuple(f"{n.name}:{i}" for n in cluster.nodes for i in range(n.devices)
                 if (n.name, i) not in used)
    return Plan(model=_model_ref(model), cluster=_cluster_ref(cluster),
                global_batch=training.global_batch, micro_batch_count=f.micro_batches,
                schedule=training.schedule, zero1=training.zero1, stages=tuple(stages),
                memory_reserve_gb=training.memory_reserve_gb, idle_devices=idle)


def _model_ref(model: ModelProfile) -> ModelRef:
    return ModelRef(name=model.name, source_file=model.source_file,
                    fingerprint=model.fingerprint, num_layers=model.num_layers,
                    params=model.total_params, seq_len=model.seq_len, dtype=model.dtype,
                    tokens_per_sample=model.tokens_per_sample, block_list=model.block_list,
                    model_args=dict(model.model_args))


def _cluster_ref(cluster: Cluster) -> ClusterRef:
    return ClusterRef(name=cluster.name, source_file=cluster.source_file,
                      num_devices=cluster.num_devices, chips=tuple(cluster.chip_types()))
