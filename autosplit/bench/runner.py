"""Run a benchmark suite: search every case in-process and tabulate what came out.

Each case is ingested and searched exactly as ``autosplit search`` would (same loaders, same
``search_plan``), with the analytic cost model so results do not depend on which measured
profiles happen to be on the machine. The table records plan quality (predicted iteration
time, throughput, MFU, the search's own optimality gap, ratios to baselines) and search cost
(time, peak memory), one row per case, so ``autosplit.bench.check`` can compare two runs.

The timed searches run ``repeat`` times, fastest kept; peak memory is the tracemalloc peak
of one further, untimed search (tracing slows a search down, so it never decides the plan
or the time). Search time
is recorded twice: wall-clock (``search_s``, what a user waits) and the process's CPU time
(``search_cpu_s``). The regression check uses the CPU time, which does not grow when other
jobs share the machine's cores — wall-clock ratios on a busy 2-core CI runner were seen to
move by 2.5× between identical runs.

``AUTOSPLIT_BENCH_SABOTAGE`` is a self-test of the regression check, read only here:
``plan`` (or ``1``) replaces every found plan by the uniform split of its stages; ``time``
makes every case but the reference report three times its search time. Either must make
``autosplit bench --check`` fail.
"""

from __future__ import annotations

import math
import os
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pandas as pd

from autosplit.bench.baselines import BaselineTimes, baseline_times
from autosplit.bench.suite import BenchCase, Suite
from autosplit.cluster.load import load_cluster
from autosplit.cost.analytic import AnalyticCosts
from autosplit.errors import NoFeasiblePlanError
from autosplit.model.ingest import ingest_model
from autosplit.plan.evaluate import closed_form_time
from autosplit.plan.schema import Plan
from autosplit.search.baselines import uniform_split
from autosplit.search.engine import search_plan

__all__ = ["SABOTAGE_ENV", "CaseResult", "run_case", "run_suite", "results_frame"]

SABOTAGE_ENV = "AUTOSPLIT_BENCH_SABOTAGE"


@dataclass(frozen=True)
class CaseResult:
    """One row of the benchmark table. Times in seconds, memory in MiB."""

    name: str
    devices: int
    chip_types: int
    units: int
    params_b: float
    stages: int
    micro_batches: int
    idle_devices: int
    iteration_s: float
    tokens_per_s: float
    mfu: float
    ingest_s: float
    search_s: float
    search_cpu_s: float
    total_s: float
    time_ratio: float  # search_cpu_s / the reference case's (filled by run_suite)
    peak_mem_mib: float
    optimality_gap: float
    timed_out: bool
    level1_candidates: int
    explored: int
    vs_uniform: float  # baseline time / plan time: > 1 means the plan is faster
    vs_uniform_all: float
    vs_tflops: float
    vs_single_type: float
    single_type_chip: str
    vs_brute_force: float
    error: str = ""


def _sabotage() -> str:
    value = os.environ.get(SABOTAGE_ENV, "").strip().lower()
    return {"1": "plan", "true": "plan"}.get(value, value)


def _ratio(baseline: float, plan: float) -> float:
    if math.isnan(baseline) or not math.isfinite(plan) or plan <= 0:
        return math.nan
    return baseline / plan


def run_case(case: BenchCase, *, is_reference: bool = False) -> CaseResult:
    """Ingest, search and cost one case (raises ``BadInputError`` for broken inputs)."""
    costs = AnalyticCosts()
    t0 = time.perf_counter()
    model = ingest_model(str(case.model), model_args=case.model_args,
                         seq_len=case.training.seq_len, dtype=case.training.dtype)
    ingest_s = time.perf_counter() - t0
    cluster = load_cluster(case.cluster)
    head = dict(name=case.name, devices=cluster.num_devices,
                chip_types=len(cluster.chip_types()), units=model.num_layers,
                params_b=model.total_params / 1e9)

    def search() -> Plan:
        return search_plan(model=model, cluster=cluster, training=case.training,
                           search=case.search, costs=costs)

    search_s = cpu_s = math.inf
    plan: Plan | None = None
    try:
        for _ in range(case.repeat):
            t1, c1 = time.perf_counter(), time.process_time()
            plan = search()
            search_s = min(search_s, time.perf_counter() - t1)
            cpu_s = min(cpu_s, time.process_time() - c1)
    except NoFeasiblePlanError as exc:
        return _failed(head, ingest_s, str(exc.message).splitlines()[0])
    peak = _traced_peak_mib(search)
    assert plan is not None
    mode = _sabotage()
    if mode == "plan":
        plan = uniform_split(plan, model=model, cluster=cluster, costs=costs)
    elif mode == "time" and not is_reference:
        search_s, cpu_s = 3.0 * search_s, 3.0 * cpu_s
    base = baseline_times(plan, kinds=case.baselines, model=model, cluster=cluster,
                          training=case.training, search=case.search, costs=costs)
    # The brute force minimises the search's objective (the closed form), so the plan is
    # compared with it under that objective, not under the simulated prediction.
    objective = closed_form_time(plan, model=model, cluster=cluster, costs=costs)
    return _row(head, plan, base, ingest_s=ingest_s, search_s=search_s, cpu_s=cpu_s,
                peak=peak, objective=objective)


def _traced_peak_mib(search: Callable[[], Plan]) -> float:
    """Peak traced allocation of one more search, in MiB (``nan`` if that search fails: under
    tracing it runs slower and may reach a time limit the timed runs did not)."""
    tracemalloc.start()
    try:
        search()
        return tracemalloc.get_traced_memory()[1] / 2**20
    except NoFeasiblePlanError:
        return math.nan
    finally:
        tracemalloc.stop()


def _row(head: dict, plan: Plan, base: BaselineTimes, *, ingest_s: float, search_s: float,
         cpu_s: float, peak: float, objective: float) -> CaseResult:
    pred = plan.prediction
    assert pred is not None
    t = pred.iteration_s
    return CaseResult(
        **head, stages=plan.num_stages, micro_batches=plan.micro_batch_count,
        idle_devices=len(plan.idle_devices), iteration_s=t, tokens_per_s=pred.tokens_per_s,
        mfu=pred.mfu, ingest_s=ingest_s, search_s=search_s, search_cpu_s=cpu_s,
        total_s=ingest_s + search_s,
        time_ratio=math.nan, peak_mem_mib=peak, optimality_gap=plan.search.optimality_gap,
        timed_out=plan.search.timed_out, level1_candidates=plan.search.level1_candidates,
        explored=plan.search.explored, vs_uniform=_ratio(base.uniform, t),
        vs_uniform_all=_ratio(base.uniform_all, t), vs_tflops=_ratio(base.tflops, t),
        vs_single_type=_ratio(base.single_type, t), single_type_chip=base.single_type_chip,
        vs_brute_force=_ratio(base.brute_force, objective))


def _failed(head: dict, ingest_s: float, message: str) -> CaseResult:
    nan = math.nan
    return CaseResult(
        **head, stages=0, micro_batches=0, idle_devices=0, iteration_s=nan, tokens_per_s=nan,
        mfu=nan, ingest_s=ingest_s, search_s=nan, search_cpu_s=nan, total_s=nan, time_ratio=nan,
        peak_mem_mib=nan, optimality_gap=nan, timed_out=False, level1_candidates=0,
        explored=0, vs_uniform=nan, vs_uniform_all=nan, vs_tflops=nan, vs_single_type=nan,
        single_type_chip="", vs_brute_force=nan, error=message)


def run_suite(suite: Suite, *, only: tuple[str, ...] = (),
              progress: Callable[[str], None] | None = None) -> list[CaseResult]:
    """Run the suite's cases (those named in ``only``, if given; the reference always runs,
    as every time ratio needs it) and fill in each case's ``time_ratio``."""
    say = progress or (lambda _msg: None)
    wanted = set(only)
    results: list[CaseResult] = []
    for case in suite.cases:
        if wanted and case.name not in wanted and case.name != suite.reference:
            continue
        say(case.name)
        results.append(run_case(case, is_reference=case.name == suite.reference))
    ref = next(r for r in results if r.name == suite.reference)
    out = []
    for r in results:
        ratio = r.search_cpu_s / ref.search_cpu_s if ref.search_cpu_s > 0 else math.nan
        out.append(CaseResult(**{**asdict(r), "time_ratio": ratio}))
    return out


def results_frame(results: list[CaseResult]) -> pd.DataFrame:
    """The table as a DataFrame, one row per case, in suite order."""
    return pd.DataFrame([asdict(r) for r in results], columns=list(CaseResult.__annotations__))
