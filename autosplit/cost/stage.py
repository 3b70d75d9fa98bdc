"""Cost of one pipeline stage owning a contiguous range of units.

The search and ``evaluate`` share this module so a searched plan and a re-costed plan get the
same numbers. Everything is expressed as prefix sums over the model's units, so the cost of a
range ``[i, j)`` is a difference of two array entries, and whole ``(i, j)`` matrices for the
layer-split solver come from one numpy broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from autosplit.chips.spec import ChipSpec
from autosplit.cluster.schema import Cluster, Link, Node
from autosplit.config import TrainingConfig
from autosplit.cost.comm import allreduce_time, exposed_grad_reduce, group_bandwidth
from autosplit.cost.memory import (
    optimizer_bytes_per_param,
    static_bytes_per_param,
    unusable_bytes,
)
from autosplit.model.types import ModelProfile
from autosplit.plan.schema import Replica
from autosplit.protocols.cost import LayerCostProvider, LayerTiming

__all__ = ["StageShape", "StageTables", "StageContext", "Lane", "build_tables", "range_busy",
           "range_memory", "range_tail", "boundary_p2p", "OPTIMIZER_BYTES_MOVED",
           "compute_time", "backward_time", "drain_time", "memory_terms", "tail_terms"]

#: Bytes an Adam step moves per parameter held on the device (read weight, grad, fp32 master,
#: m, v; write all but the grad) — the step is memory-bound.
OPTIMIZER_BYTES_MOVED = {"bf16": 2 + 2 + 12 + 12 + 2, "fp16": 2 + 2 + 12 + 12 + 2,
                         "fp32": 4 + 4 + 8 + 8 + 4}


@dataclass(frozen=True)
class StageShape:
    """Where a stage runs before layers are assigned: chip, TP degree and its replicas."""

    chip: str
    tp: int
    replicas: tuple[Replica, ...]

    @property
    def dp(self) -> int:
        return len(self.replicas)

    @cached_property
    def max_share(self) -> int:
        return max(r.batch_share for r in self.replicas)

    @cached_property
    def node_names(self) -> list[str]:
        return list(dict.fromkeys(r.node for r in self.replicas))


@dataclass
class StageTables:
    """Prefix sums (length ``L + 1``) of per-unit costs for one chip, TP degree and share.

    Times are per micro-batch on the slowest replica (the one with the largest share).
    """

    fwd: np.ndarray
    bwd: np.ndarray
    rec: np.ndarray
    tpc: np.ndarray
    params: np.ndarray
    act: np.ndarray
    inp: np.ndarray
    out_bytes: np.ndarray  # per unit (length L): bytes of its output per sample
    sources: frozenset[str] = field(default_factory=frozenset)
    unit_sources: tuple[str, ...] = ()
    #: Per unit (length L), per sample and as at TP 1: the memory its backward needs beyond
    #: everything already saved — without recomputation (``unit_work``) and with it
    #: (``unit_work_rc``: its recomputed activations too). Measured where a layer profile
    #: has the backward's peak; else both are the unit's saved activation bytes.
    unit_work: np.ndarray | None = None
    unit_work_rc: np.ndarray | None = None
    _range_max: dict[bool, np.ndarray] = field(default_factory=dict)

    def cost_source(self, start: int, end: int) -> str:
        """Where the times of units ``[start, end)`` came from: measured, analytic or mixed."""
        srcs = set(self.unit_sources[start:end])
        if srcs == {"measured"}:
            return "measured"
        return "mixed" if "measured" in srcs else "analytic"

    def range_working_set(self, i, j, recompute: bool = False):
        """Largest per-sample backward working set of one unit in ``[i, j)`` (scalar or
        broadcast), with or without recomputation."""
        work = self.unit_work_rc if recompute else self.unit_work
        if np.ndim(i) == 0 and np.ndim(j) == 0:
            i, j = int(i), int(j)
            return float(work[i:j].max()) if j > i else 0.0
        table = self._range_max.get(recompute)
        if table is None:
            n = work.size
            table = np.zeros((n + 1, n + 1))
            for a in range(n):
                table[a, a + 1:] = np.maximum.accumulate(work[a:])
            self._range_max[recompute] = table
        return table[i, j]


def build_tables(*, model: ModelProfile, chip: ChipSpec, node: Node, tp: int, share: int,
                 costs: LayerCostProvider, dtype: str) -> StageTables:
    """Per-unit costs of ``model`` on ``chip`` at TP ``tp`` and micro-batch ``share``."""
    n = model.num_layers
    fwd = np.zeros(n)
    bwd = np.zeros(n)
    rec = np.zeros(n)
    tpc = np.zeros(n)
    sources: list[str] = []
    # Without a measurement, a unit's backward is taken to need about what it saved (its
    # activation gradients are of that size).
    work = np.array([layer.activation_bytes for layer in model.layers], dtype=float)
    work_rc = work.copy()
    timings: dict[int, LayerTiming] = {}  # alike units are priced once
    for k, (layer, alike) in enumerate(zip(model.layers, model.first_alike, strict=True)):
        t = timings.get(alike)
        if t is None:
            t = timings[alike] = costs.layer_timing(layer, chip, micro_batch=share, tp=tp,
                                                    dtype=dtype)
        fwd[k], bwd[k], rec[k] = t.fwd_s, t.bwd_s, t.recompute_s
        sources.append(t.source)
        if t.backward_extra_bytes is not None and share > 0:
            work[k] = t.backward_extra_bytes * tp / share
            work_rc[k] = work[k] + layer.activation_bytes
        if tp > 1:
            one = allreduce_time(layer.output_bytes * share, tp, bw_gbs=node.intra_bw_gbs,
                                 latency_s=node.intra_latency_s)
            tpc[k] = 2 * layer.tp_collectives * one  # forward and backward
    params = np.array([layer.params for layer in model.layers], dtype=float)
    act = np.array([layer.activation_bytes for layer in model.layers], dtype=float)
    inp = np.array([layer.input_bytes for layer in model.layers], dtype=float)
    out = np.array([layer.output_bytes for layer in model.layers], dtype=float)

    def prefix(a: np.ndarray) -> np.ndarray:
        return np.concatenate(([0.0], np.cumsum(a)))

    return StageTables(
        fwd=prefix(fwd), bwd=prefix(bwd), rec=prefix(rec), tpc=prefix(tpc),
        params=prefix(params), act=prefix(act), inp=prefix(inp), out_bytes=out,
        sources=frozenset(sources),
        unit_sources=tuple(sources), unit_work=work, unit_work_rc=work_rc,
    )


@dataclass(frozen=True)
class Lane:
    """The replicas of one chip inside a stage.

    A stage normally holds one chip; a stage whose data-parallel replicas mix chips of one
    collective group (e.g. H100 and A100 over NCCL) has a lane per chip, each with its own
    batch share — the uneven data-parallel split — its own per-unit times and memory.
    """

    chip: ChipSpec
    tables: StageTables
    share: int
    capacity: float


@dataclass
class StageContext:
    """A stage at a fixed position of a fixed pipeline, ready to cost any layer range."""

    index: int
    num_stages: int
    shape: StageShape
    tables: StageTables
    capacity: float
    in_flight: int
    dp_link: Link
    #: Link to the previous / next stage and whether its transfers block compute.
    link_in: Link | None
    link_out: Link | None
    share_in: int
    share_out: int
    training: TrainingConfig
    chip: ChipSpec
    #: Per-chip lanes when the stage mixes chips; empty for a one-chip stage.
    lanes: tuple[Lane, ...] = ()

    def all_lanes(self) -> tuple[Lane, ...]:
        if self.lanes:
            return self.lanes
        return (Lane(chip=self.chip, tables=self.tables, share=self.shape.max_share,
                     capacity=self.capacity),)

    @staticmethod
    def blocking(link: Link | None) -> bool:
        """The CPU relay stages through host memory with synchronous copies, so its transfers
        serialise with compute on both sides; device-direct links overlap with compute."""
        return link is not None and link.kind == "cpu_relay"


def boundary_p2p(ctx: StageContext, j: np.ndarray | int) -> np.ndarray | float:
    """One-way time to send the activation at boundary ``j`` (after unit ``j − 1``) out of
    this stage; the gradient comes back the same size."""
    return _transfer(ctx, ctx.link_out, j, ctx.share_out)


def _p2p_in(ctx: StageContext, i: np.ndarray | int) -> np.ndarray | float:
    """One-way time of the activation arriving at boundary ``i`` (before unit ``i``)."""
    return _transfer(ctx, ctx.link_in, i, ctx.share_in)


def _transfer(ctx: StageContext, link: Link | None, boundary, share: int):
    if link is None:
        return np.zeros_like(np.asarray(boundary, dtype=float)) if np.ndim(boundary) else 0.0
    nbytes = ctx.tables.out_bytes[np.maximum(np.asarray(boundary) - 1, 0)] * share
    return np.where(nbytes > 0, link.latency_s + nbytes / (link.bw_gbs * 1e9), 0.0)


def compute_time(t: StageTables, i, j, recompute):
    """Per-micro-batch compute of units ``[i, j)`` on one lane: forward + backward + TP
    all-reduces (+ the recomputed forward); no transfers. Scalars or broadcast arrays."""
    busy = (t.fwd[j] - t.fwd[i]) + (t.bwd[j] - t.bwd[i]) + (t.tpc[j] - t.tpc[i])
    return busy + np.where(recompute, t.rec[j] - t.rec[i], 0.0)



def range_busy(ctx: StageContext, i, j, recompute):
    """Busy time per micro-batch of units ``[i, j)``: forward + backward (+ recompute) +
    TP all-reduces on the slowest lane + transfers over blocking links (activation in, its
    gradient out, and the same towards the next stage)."""
    busy = compute_time(ctx.tables, i, j, recompute)
    for lane in ctx.lanes[1:]:
        busy = np.maximum(busy, compute_time(lane.tables, i, j, recompute))
    if StageContext.blocking(ctx.link_in):
        busy = busy + 2.0 * _p2p_in(ctx, i)
    if StageContext.blocking(ctx.link_out):
        busy = busy + 2.0 * boundary_p2p(ctx, j)
    return busy


def backward_time(t: StageTables, i, j, recompute):
    """Per-micro-batch backward of units ``[i, j)`` on one lane (half the TP all-reduces, and
    the recomputed forward): the part of a stage's time a later stage's tail can hide behind.
    Scalars or broadcast arrays."""
    b = (t.bwd[j] - t.bwd[i]) + (t.tpc[j] - t.tpc[i]) / 2
    return b + np.where(recompute, t.rec[j] - t.rec[i], 0.0)


def drain_time(ctx: StageContext, i, j, recompute):
    """Per-micro-batch time the last gradient spends on this stage and on its way here: the
    backward on the slowest lane, the gradient's transfer in from the next stage (over either
    kind of link: the receiver waits for it) and, over a blocking link to the stage in front,
    the send onward (the stage itself performs it). A later stage's post-pipeline tail hides
    behind the sum of these over the stages in front of it (``cost.pipeline.tail_time``), as
    the schedule's simulation has it. Scalars or broadcast arrays."""
    lanes = ctx.all_lanes()
    out = backward_time(lanes[0].tables, i, j, recompute)
    for lane in lanes[1:]:
        out = np.maximum(out, backward_time(lane.tables, i, j, recompute))
    out = out + boundary_p2p(ctx, j)
    if StageContext.blocking(ctx.link_in):
        out = out + _p2p_in(ctx, i)
    return out


def memory_terms(t: StageTables, *, tp: int, dp: int, share: int, training: TrainingConfig,
                 i, j, recompute: bool):
    """Per-device bytes of units ``[i, j)`` on one lane as ``(static, per_in_flight, work)``:
    the peak is ``static + in_flight · per_in_flight + work``.

    Split this way because the pipeline position only scales the middle term, so the search
    can price a range once and check it at every position. While a unit runs its backward, its
    gradient buffers and temporaries exist beside everything in flight (measured by the layer
    profiles as the peak of the backward above what the unit saved; else taken as the size of
    what it saved); with recomputation the unit's recomputed activations do too. One unit's
    worth — the largest of the range — is the working set."""
    params = (t.params[j] - t.params[i]) / tp
    static = params * (static_bytes_per_param(training)
                       + optimizer_bytes_per_param(training, dp=dp))
    kept = t.inp if recompute else t.act
    per_in_flight = share * (kept[j] - kept[i]) / tp
    work = share * t.range_working_set(i, j, recompute) / tp
    return static, per_in_flight, work


def lane_activation_terms(ctx: StageContext, lane: Lane, i: int, j: int,
                          recompute: bool) -> tuple[float, float]:
    """Bytes per micro-batch in flight and the backward working set of units ``[i, j)`` on
    ``lane``: what a rank holding several chunks adds up along its order of passes
    (``Schedule.rank_activation_peaks``)."""
    per, work = _activation_terms(ctx, lane, i, j, recompute)
    return float(per), float(work)


def _activation_terms(ctx: StageContext, lane: Lane, i, j, recompute: bool):
    _, per, work = memory_terms(lane.tables, tp=ctx.shape.tp, dp=ctx.shape.dp,
                                share=lane.share, training=ctx.training, i=i, j=j,
                                recompute=recompute)
    return per, work


def _lane_memory(ctx: StageContext, lane: Lane, i, j, recompute):
    def act(rc: bool):
        per, work = _activation_terms(ctx, lane, i, j, rc)
        return ctx.in_flight * per + work

    static, _, _ = memory_terms(lane.tables, tp=ctx.shape.tp, dp=ctx.shape.dp,
                                share=lane.share, training=ctx.training, i=i, j=j,
                                recompute=False)
    return static, np.where(recompute, act(True), act(False))


def range_memory(ctx: StageContext, i, j, recompute):
    """Peak bytes on the busiest device of the stage, as (static, activations), to compare
    with ``ctx.capacity``. With several lanes, the lane closest to its own capacity decides,
    scaled to ``ctx.capacity`` so that the comparison means "every lane fits"."""
    if not ctx.lanes:
        return _lane_memory(ctx, ctx.all_lanes()[0], i, j, recompute)
    best_s = best_a = best_r = None
    for lane in ctx.lanes:
        st, act = _lane_memory(ctx, lane, i, j, recompute)
        scale = ctx.capacity / lane.capacity if lane.capacity > 0 else np.inf
        ratio = (st + act) * scale
        if best_r is None:
            best_s, best_a, best_r = st * scale, act * scale, ratio
        else:
            pick = ratio > best_r
            best_s = np.where(pick, st * scale, best_s)
            best_a = np.where(pick, act * scale, best_a)
            best_r = np.maximum(ratio, best_r)
    return best_s, best_a


def lane_memory(ctx: StageContext, i: int, j: int, recompute: bool) -> tuple[Lane, float, float]:
    """The lane closest to its capacity for units ``[i, j)``, with its unscaled bytes."""
    worst = None
    for lane in ctx.all_lanes():
        st, act = _lane_memory(ctx, lane, i, j, recompute)
        ratio = float(st + act) / lane.capacity if lane.capacity > 0 else float("inf")
        if worst is None or ratio > worst[0]:
            worst = (ratio, lane, float(st), float(act))
    assert worst is not None
    return worst[1], worst[2], worst[3]


def tail_terms(t: StageTables, *, tp: int, dp: int, dp_link: Link, training: TrainingConfig,
               slowest_bytes_per_s: float, i, j, window_s=0.0):
    """Data-parallel gradient all-reduce and optimizer step of units ``[i, j)`` after the last
    backward, as ``(all_reduce_s, optimizer_s)``; ``slowest_bytes_per_s`` is the memory
    bandwidth of the stage's slowest chip (its step paces the stage). The all-reduce runs in
    buckets overlapped with the last micro-batch's backward (``window_s``), as
    ``training.grad_bucket_mb`` and ``training.grad_overlap`` say (``comm.exposed_grad_reduce``);
    only what is left after that backward is returned."""
    params = (t.params[j] - t.params[i]) / tp
    grad_bytes = params * training.dtype_bytes
    dp_time = np.asarray(exposed_grad_reduce(grad_bytes, dp, link=dp_link,
                                             bucket_bytes=training.grad_bucket_mb * 1e6,
                                             overlap=training.grad_overlap,
                                             window_s=window_s), dtype=float)
    moved = OPTIMIZER_BYTES_MOVED[training.dtype]
    if training.zero1 and dp > 1:
        moved = 2 * training.dtype_bytes + (moved - 2 * training.dtype_bytes) / dp
    opt_time = params * moved / slowest_bytes_per_s
    return dp_time, opt_time


def overlap_window(t: StageTables, i, j):
    """The backward the gradient all-reduce of units ``[i, j)`` can hide behind: the stage's
    last micro-batch's backward without recomputation (the window is no shorter with it), on
    the lane that sets the stage's tables."""
    return (t.bwd[j] - t.bwd[i]) if (np.ndim(i) or np.ndim(j)) else float(t.bwd[j] - t.bwd[i])


def range_tail(ctx: StageContext, i, j):
    """Data-parallel gradient all-reduce and optimizer step after the last backward."""
    slowest_bw = min(lane.chip.achievable_bytes_per_s() for lane in ctx.all_lanes())
    return tail_terms(ctx.tables, tp=ctx.shape.tp, dp=ctx.shape.dp, dp_link=ctx.dp_link,
                      training=ctx.training, slowest_bytes_per_s=slowest_bw, i=i, j=j,
                      window_s=overlap_window(ctx.tables, i, j))


def lane_groups(cluster: Cluster, shape: StageShape) -> list[tuple[str, Node, int, float]]:
    """(chip, a node, largest share, capacity) per chip of the stage, the stage's chip first."""
    out: dict[str, list] = {}
    largest: dict[str, int] = {}  # per node: its replicas' largest share
    for r in shape.replicas:
        largest[r.node] = max(largest.get(r.node, 0), r.batch_share)
    for name, share in largest.items():
        node = cluster.node(name)
        entry = out.setdefault(node.chip, [node, 0, float("inf")])
        entry[1] = max(entry[1], share)
        entry[2] = min(entry[2], cluster.device_memory_bytes(node))
    order = sorted(out, key=lambda c: (c != shape.chip, list(out).index(c)))
    return [(c, out[c][0], out[c][1], out[c][2]) for c in order]


def make_context(*, cluster: Cluster, shape: StageShape, tables: StageTables, index: int,
                 num_stages: int, micro_batches: int, training: TrainingConfig,
                 prev: StageShape | None, nxt: StageShape | None,
                 lane_tables=None) -> StageContext:
    """Bind a stage shape to its position and neighbours.

    ``lane_tables(chip, node, share)`` builds the tables of the other chips of a stage that
    mixes chips (only needed then)."""
    from autosplit.cost.memory import in_flight_micro_batches

    nodes = [cluster.node(n) for n in shape.node_names]
    first, last = nodes[0], nodes[-1]
    link_in = link_out = None
    share_in = share_out = shape.max_share
    if prev is not None:
        link_in = cluster.link_between(cluster.node(prev.node_names[-1]), first)
        share_in = max(prev.max_share, shape.max_share)
    if nxt is not None:
        link_out = cluster.link_between(last, cluster.node(nxt.node_names[0]))
        share_out = max(nxt.max_share, shape.max_share)
    dp_nodes = [cluster.node(r.node) for r in shape.replicas]
    groups = lane_groups(cluster, shape)
    lanes: tuple[Lane, ...] = ()
    if len(groups) > 1:
        if lane_tables is None:
            raise ValueError("a stage mixing chips needs lane_tables")
        lanes = tuple(Lane(chip=cluster.chips[c],
                           capacity=cap - unusable_bytes(cluster.chips[c], training), share=share,
                           tables=lane_tables(c, node, share))
                      for c, node, share, cap in groups)
        tables = lanes[0].tables
    capacity = groups[0][3] - unusable_bytes(cluster.chips[groups[0][0]], training)
    return StageContext(
        index=index, num_stages=num_stages, shape=shape, tables=tables,
        capacity=capacity,
        in_flight=in_flight_micro_batches(schedule=training.schedule, stage=index,
                                          num_stages=num_stages, micro_batches=micro_batches,
                                          virtual_stages=training.virtual_stages),
        dp_link=group_bandwidth(cluster, dp_nodes), link_in=link_in, link_out=link_out,
        share_in=share_in, share_out=share_out, training=training,
        chip=cluster.chips[shape.chip], lanes=lanes,
    )


__all__ += ["make_context", "lane_groups", "lane_memory", "lane_activation_terms",
            "overlap_window"]
