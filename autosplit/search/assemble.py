"""From a found pipeline to an exactly priced one.

The dynamic programme (``stage_dp``) prices stages with bounds on what it cannot see: the
exact size of each transfer, whether a CPU relay blocks both neighbours, the post-pipeline
tail of every stage but the first, and which devices a stage gets. Here a pipeline's stages —
their options, in order — get concrete devices (``placement``), the cost model's own stage
contexts, and the exact layer split of ``layer_split`` for those stages (recompute chosen per
stage, transfers and tail included), so the result's iteration time is what ``evaluate``
reports for the same plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autosplit.cluster.schema import Cluster
from autosplit.config import TrainingConfig
from autosplit.cost.predict import StageAssignment, iteration_time
from autosplit.cost.stage import StageContext, StageShape, make_context, range_memory
from autosplit.plan.schema import Replica
from autosplit.search.groups import Pool
from autosplit.search.layer_split import solve_split, stage_matrices
from autosplit.search.menu import TableCache
from autosplit.search.options import StageOption
from autosplit.search.placement import STRATEGIES, PlacementError, place

__all__ = ["Solution", "assemble", "contexts_for"]


@dataclass(frozen=True)
class Solution:
    """A complete pipeline priced by the cost model: stages bound to their positions, the
    options they came from, and the iteration time ``evaluate`` gives the same plan."""

    iteration_s: float
    micro_batches: int
    stages: tuple[StageAssignment, ...]
    options: tuple[StageOption, ...]

    @property
    def key(self) -> tuple:
        """What makes two solutions the same plan (for de-duplication and tie-breaks)."""
        return (self.micro_batches, self.options,
                tuple((s.start, s.end, s.recompute) for s in self.stages))


def contexts_for(cache: TableCache, pools: Sequence[Pool], options: Sequence[StageOption], *,
                 micro_batches: int, micro_batch_samples: int,
                 strategy: str = "tape", replicas: Sequence[tuple[Replica, ...]] | None = None
                 ) -> list[StageContext]:
    """Stage contexts (devices placed, neighbours bound) for options in pipeline order
    (``replicas``: a placement already made, else ``strategy``'s)."""
    if replicas is None:
        replicas = place(options, pools, micro_batch_samples, strategy)
    pool_of = {node.name: p.index for p in pools for node in p.nodes}
    shapes = [StageShape(chip=pools[opt.lanes[0].pool].chip, tp=opt.tp, replicas=reps)
              for opt, reps in zip(options, replicas, strict=True)]
    cluster: Cluster = cache.cluster
    training: TrainingConfig = cache.training
    out = []
    for s, (opt, shape) in enumerate(zip(options, shapes, strict=True)):
        lane0 = opt.lanes[0]

        def lane_tables(chip: str, node, share: int, _tp: int = opt.tp):
            return cache.tables(pool_of[node.name], _tp, share)

        out.append(make_context(
            cluster=cluster, shape=shape, tables=cache.tables(lane0.pool, opt.tp, lane0.share),
            index=s, num_stages=len(shapes), micro_batches=micro_batches, training=training,
            prev=shapes[s - 1] if s else None,
            nxt=shapes[s + 1] if s + 1 < len(shapes) else None, lane_tables=lane_tables))
    return out


def _all_recompute(stages: Sequence[StageAssignment]) -> tuple[StageAssignment, ...] | None:
    """Every stage recomputing (a runtime with one recompute switch), if that fits."""
    out = []
    for st in stages:
        s, a = range_memory(st.ctx, st.start, st.end, True)
        if float(s + a) > st.ctx.capacity:
            return None
        out.append(StageAssignment(ctx=st.ctx, start=st.start, end=st.end, recompute=True))
    return tuple(out)


def _placed(cache: TableCache, pools: Sequence[Pool], options: Sequence[StageOption], *,
            micro_batches: int, micro_batch_samples: int,
            spans: Sequence[tuple[int, int]] | None) -> list[StageContext] | None:
    """The contexts of the placement strategy whose pipeline is fastest on ``spans`` (the
    stages' units as found; an even split if none): placements differ only in which
    transfers and all-reduces stay inside a node."""
    n = cache.model.num_layers
    if spans is None:
        cuts = [round(k * n / len(options)) for k in range(len(options) + 1)]
        spans = list(zip(cuts[:-1], cuts[1:], strict=True))
    best: tuple[float, list[StageContext]] | None = None
    seen: list[list[tuple[Replica, ...]]] = []
    for strategy in STRATEGIES:
        try:
            replicas = place(options, pools, micro_batch_samples, strategy)
        except PlacementError:
            continue
        if replicas in seen:  # the same devices: the same pipeline, priced already
            continue
        seen.append(replicas)
        ctxs = contexts_for(cache, pools, options, micro_batches=micro_batches,
                            micro_batch_samples=micro_batch_samples, replicas=replicas)
        stages = [StageAssignment(ctx=c, start=a, end=b, recompute=o.recompute)
                  for c, (a, b), o in zip(ctxs, spans, options, strict=True)]
        t = iteration_time(stages, micro_batches=micro_batches)
        if best is None or t < best[0] - 1e-15:
            best = (t, ctxs)
    return None if best is None else best[1]


def _matrices(cache: TableCache, option: StageOption, ctx: StageContext,
              allow_recompute: bool):
    """A placed stage's range-cost matrices, shared across pipelines: they depend only on
    its option, its position's in-flight count and the links and shares at its ends."""
    key = (option.tp, option.lanes, ctx.in_flight, ctx.link_in, ctx.link_out, ctx.share_in,
           ctx.share_out, ctx.dp_link, allow_recompute)
    hit = cache.matrices.get(key)
    if hit is None:
        hit = stage_matrices(ctx, cache.model.num_layers, allow_recompute=allow_recompute)
        cache.matrices[key] = hit
    return hit


def assemble(cache: TableCache, pools: Sequence[Pool], options: Sequence[StageOption], *,
             micro_batches: int, micro_batch_samples: int, allow_recompute: bool,
             upper_bound: float = float("inf"), uniform_recompute: bool = False,
             spans: Sequence[tuple[int, int]] | None = None) -> Solution | None:
    """The exactly priced pipeline of ``options`` with its best layer split, or ``None`` when
    the stages cannot hold the model or cannot beat ``upper_bound``. ``uniform_recompute``:
    all stages recompute or none (runtimes with one switch). ``spans``: the stages' units as
    the search found them, to choose the placement by."""
    n = cache.model.num_layers
    if len(options) > n:
        return None
    ctxs = _placed(cache, pools, options, micro_batches=micro_batches,
                   micro_batch_samples=micro_batch_samples, spans=spans)
    if ctxs is None:
        return None
    mats = [_matrices(cache, opt, c, allow_recompute) for opt, c in zip(options, ctxs,
                                                                        strict=True)]
    res = solve_split(mats, micro_batches=micro_batches, upper_bound=upper_bound)
    if res is None:
        return None
    stages = tuple(StageAssignment(ctx=c, start=res.bounds[s], end=res.bounds[s + 1],
                                   recompute=res.recompute[s]) for s, c in enumerate(ctxs))
    if uniform_recompute and len({st.recompute for st in stages}) > 1:
        stages = _all_recompute(stages)
        if stages is None:
            return None
    total = iteration_time(stages, micro_batches=micro_batches)
    return Solution(iteration_s=total, micro_batches=micro_batches, stages=stages,
                    options=tuple(options))
