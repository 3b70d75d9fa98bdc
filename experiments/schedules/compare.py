"""The searched plan re-costed under each pipeline schedule: bubble, iteration and memory.

The search picks stages, devices and micro-batches under 1F1B's memory (``--schedule 1f1b``);
this script keeps all of that and only changes the schedule, re-costing each variant with
``autosplit evaluate``'s cost model (the event simulation of the schedule, docs/cost-model.md
§4), then prints what ``--schedule auto`` chose (the fastest variant that fits of each of the
search's finalists, ``autosplit.search.schedule_choice``):

- ``1f1b``, ``gpipe``, ``zb-h1``: the plan's stages as they are;
- ``interleaved-1f1b`` (v = 2, 4), ``interleaved-zb`` (v = 2) and ``zbv`` (v = 2): every
  rank keeps its devices and its number of units, dealt out in ``v`` chunks — rank ``r``'s
  chunk ``c`` is stage ``c·p + r`` (looped) or, for ZBV, stages ``r`` and ``2p − 1 − r`` (a
  V) — chunk sizes differing by at most one unit.

PyTorch's looped and zero-bubble schedules run the micro-batches in rounds of
``m // max(1, m // p)``, which must divide ``m``; where the plan's ``m`` does not, the variant
uses the largest divisor of ``m`` that works (every replica's share of a micro-batch grows by
the same factor) and the table adds 1F1B at that ``m`` too, so the schedule's effect reads
apart from the micro-batch size's. "fits" says whether every device holds its memory.

    .venv/bin/python experiments/schedules/compare.py            # Llama-70B, 128 devices
    .venv/bin/python experiments/schedules/compare.py --plan plan.json   # any plan
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from autosplit.cluster.load import load_cluster
from autosplit.config import SearchConfig, TrainingConfig
from autosplit.cost.schedule import get_schedule
from autosplit.errors import BadInputError
from autosplit.model.cache import ingest_model_cached
from autosplit.model.types import ModelProfile
from autosplit.plan.context import cost_provider, load_plan_context
from autosplit.plan.evaluate import evaluate_plan
from autosplit.plan.io import load_plan
from autosplit.plan.schema import Plan, StagePlan
from autosplit.report.timeline import bubble_share, plan_timeline
from autosplit.search.engine import search_plan

REPO = Path(__file__).resolve().parents[2]
VARIANTS: tuple[tuple[str, int], ...] = (("1f1b", 1), ("gpipe", 1), ("zb-h1", 1),
                                          ("interleaved-1f1b", 2), ("interleaved-1f1b", 4),
                                          ("interleaved-zb", 2), ("zbv", 2))


def rechunk(plan: Plan, model: ModelProfile, schedule: str, v: int) -> Plan:
    """``plan``'s ranks (its stages) with their unit counts dealt out in ``v`` chunks each,
    placed as ``schedule`` places stages on ranks."""
    if v == 1:
        return replace(plan, schedule=schedule, virtual_stages=1)
    sched = get_schedule(schedule, virtual_stages=v)
    p = plan.num_stages
    counts = [st.num_layers for st in plan.stages]
    if min(counts) < v:
        raise BadInputError(f"a rank owns {min(counts)} unit(s), fewer than {v} chunks",
                            field="stages", fix="use fewer virtual stages")
    taken = [0] * p
    stages: list[StagePlan] = []
    start = 0
    for s in range(p * v):
        r = sched.rank_of(s, p)
        c = taken[r]
        taken[r] += 1
        n = counts[r] // v + (1 if c < counts[r] % v else 0)
        base = plan.stages[r]
        units = model.layers[start:start + n]
        stages.append(replace(base, index=s, layer_start=start, layer_end=start + n,
                              layer_names=tuple(u.name for u in units),
                              module_names=tuple(m for u in units for m in u.module_names),
                              rank=r))
        start += n
    return replace(plan, schedule=schedule, virtual_stages=v, stages=tuple(stages),
                   prediction=None)


def runnable_micro_batches(plan: Plan, schedule: str, v: int) -> int:
    """The largest divisor of the plan's micro-batch count that ``schedule`` runs."""
    sched = get_schedule(schedule, virtual_stages=v)
    m = plan.micro_batch_count
    for fewer in sorted((d for d in range(1, m + 1) if m % d == 0), reverse=True):
        try:
            sched.check(plan.num_stages, fewer)
        except BadInputError:
            continue
        return fewer
    raise BadInputError(f"{schedule} runs no divisor of {m} micro-batches",
                        field="micro_batch_count", fix="search with another batch")


def with_micro_batches(plan: Plan, fewer: int) -> Plan:
    """``plan`` in ``fewer`` (a divisor of its count) larger micro-batches: every replica's
    share grows by the same factor."""
    grow = plan.micro_batch_count // fewer
    stages = tuple(replace(st, replicas=tuple(replace(r, batch_share=r.batch_share * grow)
                                              for r in st.replicas))
                   for st in plan.stages)
    return replace(plan, micro_batch_count=fewer, stages=stages, prediction=None)


def searched_plan(args: argparse.Namespace, schedule: str = "1f1b"
                  ) -> tuple[Plan, ModelProfile, object, object]:
    cluster = load_cluster(str(args.cluster))
    model = ingest_model_cached(str(args.model), model_args={"size": args.size},
                                seq_len=args.seq_len, dtype="bf16")
    costs = cost_provider(model=model, chips=cluster.chip_types(), extra_dirs=())
    training = TrainingConfig(global_batch=args.global_batch, seq_len=args.seq_len)
    plan = search_plan(model=model, cluster=cluster, training=training,
                       search=SearchConfig(schedule=schedule), costs=costs)
    return plan, model, cluster, costs


def print_auto(args: argparse.Namespace, reference: float | None) -> None:
    """What ``autosplit search --schedule auto`` returns for the same inputs."""
    plan = searched_plan(args, "auto")[0]
    pred = plan.prediction
    assert pred is not None
    ratio = f", {pred.iteration_s / reference:.3f}× the 1F1B plan" if reference else ""
    print(f"\n--schedule auto: {plan.schedule}, v = {plan.virtual_stages}, "
          f"{plan.num_ranks} ranks, m = {plan.micro_batch_count}: iteration "
          f"{pred.iteration_s:.3f} s{ratio}, bubble {bubble_share(pred):.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, help="re-cost this plan instead of searching")
    parser.add_argument("--model", type=Path, default=REPO / "experiments/models/llama.py")
    parser.add_argument("--size", default="70b")
    parser.add_argument("--cluster", type=Path,
                        default=REPO / "experiments/clusters/three_vendor_128.yaml")
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=4096)
    args = parser.parse_args()
    if args.plan:
        plan = load_plan(args.plan)
        ctx = load_plan_context(plan, plan_file=str(args.plan))
        model, cluster, costs = ctx.model, ctx.cluster, ctx.costs
    else:
        plan, model, cluster, costs = searched_plan(args)
    print(f"{plan.model.name} on {plan.cluster.name}: {plan.num_stages} ranks, "
          f"{plan.micro_batch_count} micro-batches of {plan.micro_batch_samples} sample(s), "
          f"searched under {plan.schedule}")
    print("| schedule | v | m | iteration s | vs 1F1B | pipeline s | bubble | bubble s/rank "
          "| busiest rank: busy s | fullest device | fits |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    rows: list[tuple[str, int, int]] = []
    for name, v in VARIANTS:
        m = runnable_micro_batches(plan, name, v)
        if m != plan.micro_batch_count and ("1f1b", 1, m) not in rows:
            rows.append(("1f1b", 1, m))
        rows.append((name, v, m))
    reference = None
    for name, v, m in rows:
        try:
            variant = evaluate_plan(rechunk(with_micro_batches(plan, m), model, name, v),
                                    model=model,
                                    cluster=cluster, costs=costs)
        except BadInputError as exc:
            print(f"| {name} | {v} | {m} | — | — | — | — | — | — | — | cannot run: "
                  f"{exc.message} |")
            continue
        pred = variant.prediction
        assert pred is not None
        reference = reference or pred.iteration_s
        timeline = plan_timeline(variant)
        assert timeline is not None
        busiest = max(range(timeline.num_ranks), key=timeline.busy_s)
        chip = variant.stages[timeline.stages_of(busiest)[0]].chip
        fullest = max(sp.memory.total / sp.memory.capacity for sp in pred.stages)
        fits = all(sp.memory.fits for sp in pred.stages)
        print(f"| {name} | {v} | {m} | {pred.iteration_s:.3f} | "
              f"{pred.iteration_s / reference:.3f}× | {pred.pipeline_s:.3f} | "
              f"{bubble_share(pred):.1%} | {pred.bubble_s:.3f} | R{busiest} {chip}: "
              f"{timeline.busy_s(busiest):.2f} | {fullest:.0%} | "
              f"{'yes' if fits else 'no'} |")
    if not args.plan:
        print_auto(args, reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
