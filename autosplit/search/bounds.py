"""Lower bounds that let the search skip candidates without solving them.

Two bounds, cheap and strong:

- ``order_free_bound``: a continuous relaxation that ignores the pipeline order, memory and
  communication — computed for every level-1 candidate.
- ``memory_aware_bound``: for one ordered candidate, the slowest stage can be no faster than
  the smallest ``U`` at which the stages, each taking only whole blocks, can hold every block
  within memory — without recomputation while it fits, with recomputation (one more forward
  per block) beyond that. Computed lazily, only for candidates that reach the top of the queue.

Both are valid: every plan of the candidate costs at least the bound, so pruning on them
never discards the optimum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autosplit.cost.memory import optimizer_bytes_per_param, static_bytes_per_param
from autosplit.cost.stage import StageContext
from autosplit.model.types import ModelProfile

__all__ = ["order_free_bound", "memory_aware_bound"]


def order_free_bound(unit_costs: Sequence[np.ndarray], counts: Sequence[int], m: int,
                     block_mask: np.ndarray) -> float:
    """``Σu ≥ W`` and ``max u ≥ W_B / Σ_s n_s / r_s``.

    ``w_k`` is the cheapest cost of unit ``k`` on any stage shape, ``W`` their sum, ``W_B``
    the sum over blocks only, and ``r_s = min_k c_sk / w_k`` over blocks: a stage holding
    blocks of reference cost ``W_s`` is busy at least ``r_s · W_s``.
    """
    stacked = np.vstack(unit_costs)
    w = stacked.min(axis=0)
    w_total = float(w.sum())
    wb = w[block_mask]
    if wb.size == 0 or float(wb.sum()) <= 0:
        return w_total
    safe = np.where(wb > 0, wb, 1.0)
    ratios = np.where(wb > 0, stacked[:, block_mask] / safe, np.inf).min(axis=1)
    ratios = np.where(np.isfinite(ratios), ratios, 1.0)
    capacity = sum(n / r for n, r in zip(counts, ratios, strict=True))
    return w_total + (m - 1) * float(wb.sum()) / capacity


def _stage_terms(ctx: StageContext, s: int, num_stages: int, model: ModelProfile,
                 blocks: list[int], pre: list[int], post: list[int], *,
                 allow_recompute: bool) -> tuple[float, float, float, float, float]:
    """(fixed work, block cost, recompute cost, blocks that fit plain, blocks that fit with
    recomputation) for one stage.

    A stage that mixes chips is at least as busy, and holds at most as many blocks, as any
    one of its lanes: the terms of the lane with the most work are a valid relaxation (mixing
    lanes' terms would not be)."""
    lane = max(ctx.all_lanes(), key=lambda ln: float(ln.tables.fwd[-1] + ln.tables.bwd[-1]))
    t = lane.tables
    unit = np.diff(t.fwd) + np.diff(t.bwd) + np.diff(t.tpc)
    fixed = 0.0
    # The first stage runs the units before the blocks, the last those after, and transfers
    # over blocking links (CPU relay) stall a stage for each activation and gradient.
    if s == 0 and pre:
        fixed += float(unit[pre].sum())
    if s == num_stages - 1 and post:
        fixed += float(unit[post].sum())
    out = float(t.out_bytes[blocks].min())
    for link, share in ((ctx.link_in, ctx.share_in), (ctx.link_out, ctx.share_out)):
        if StageContext.blocking(link) and out > 0:
            fixed += 2.0 * (link.latency_s + out * share / (link.bw_gbs * 1e9))
    return (fixed, *shape_terms(tables=t, tp=ctx.shape.tp, dp=ctx.shape.dp, share=lane.share,
                                capacity=lane.capacity, training=ctx.training, model=model,
                                allow_recompute=allow_recompute, in_flight=ctx.in_flight))


def memory_aware_bound(ctxs: Sequence[StageContext], model: ModelProfile, m: int,
                       *, allow_recompute: bool, base: float,
                       terms_cache: dict | None = None) -> tuple[float, float]:
    """Bound on the pipeline objective of one ordered candidate, and the bound on the slowest
    stage's busy time it rests on (``inf`` if the blocks cannot fit in memory at all).
    ``base`` is a valid bound on ``Σu`` (``W``)."""
    blocks = [k for k, layer in enumerate(model.layers) if layer.kind == "block"]
    n_blocks = len(blocks)
    if n_blocks == 0:
        return base, 0.0
    pre = [k for k in range(len(model.layers)) if k < blocks[0]]
    post = [k for k in range(len(model.layers)) if k > blocks[-1]]
    rows = []
    for s, ctx in enumerate(ctxs):
        key = (id(ctx.tables), tuple(id(ln.tables) for ln in ctx.lanes), ctx.in_flight,
               ctx.capacity, ctx.link_in, ctx.link_out,
               ctx.share_in, ctx.share_out, ctx.shape.dp, ctx.shape.tp, ctx.shape.max_share,
               s == 0, s == len(ctxs) - 1, allow_recompute)
        if terms_cache is not None and key in terms_cache:
            rows.append(terms_cache[key])
            continue
        row = _stage_terms(ctx, s, len(ctxs), model, blocks, pre, post,
                           allow_recompute=allow_recompute)
        if terms_cache is not None:
            terms_cache[key] = row
        rows.append(row)
    arr = np.array(rows)
    fixed, c, r, k0, k1 = arr.T
    return bound_from_terms(fixed=fixed, c=c, r=r, k0=k0, k1=k1, n_blocks=n_blocks, m=m,
                            base=base)


def bound_from_terms(*, fixed: np.ndarray, c: np.ndarray, r: np.ndarray, k0: np.ndarray,
                     k1: np.ndarray, n_blocks: int, m: int, base: float) -> tuple[float, float]:
    """The water-filling bound from per-stage terms (see ``memory_aware_bound``)."""
    if float(k1.sum()) < n_blocks:
        return float("inf"), float("inf")
    # Stages with identical terms (the stages of one pool) are counted once, with a weight.
    rows, weight = np.unique(np.stack([fixed, c, r, k0, k1], axis=1), axis=0,
                             return_counts=True)
    fixed, c, r, k0, k1 = rows.T
    weight = weight.astype(float)
    c_safe = np.where(c > 0, c, 1e-30)
    cr_safe = np.where(c + r > 0, c + r, 1e-30)

    def slots(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blocks each stage can take at busy ≤ u (rows: u values): plain, with recompute."""
        # A relative slack of 1e-9 keeps floating-point rounding (j·c vs a prefix-sum
        # difference) from undercounting and so from overstating the bound.
        room = np.maximum(u[:, None] - fixed[None, :], 0.0) * (1 + 1e-9) + 1e-15
        plain = np.minimum(np.floor(room / c_safe), k0)
        extra = np.where(room > k0 * c, np.floor((room - k0 * c) / cr_safe), 0.0)
        extra = np.minimum(np.maximum(extra, 0.0), np.maximum(k1 - plain, 0.0))
        return plain, extra

    # Exact smallest U at which the stages hold every block: it is one of the step points
    # fixed_s + j·c_s or fixed_s + k0_s·c_s + j·(c_s + r_s).
    j = np.arange(1, n_blocks + 1)[None, :]
    steps = np.concatenate([(fixed[:, None] + j * c[:, None]).ravel(),
                            (fixed[:, None] + k0[:, None] * c[:, None]
                             + j * (c + r)[:, None]).ravel()])
    steps = np.unique(steps)

    def holds(u: float) -> bool:
        plain, extra = slots(np.array([u]))
        return float(((plain + extra) * weight).sum()) >= n_blocks

    if not holds(float(steps[-1])):
        return float("inf"), float("inf")
    a, b = 0, steps.size - 1  # binary search: capacity is monotone in U
    while a < b:
        mid = (a + b) // 2
        if holds(float(steps[mid])):
            b = mid
        else:
            a = mid + 1
    lo = float(steps[a]) * (1 - 1e-9)

    # Least Σu when no stage may exceed U: every stage's fixed work plus the B cheapest block
    # slots (plain first, then with recomputation). It is non-increasing in U, so on
    # [U_k, U_{k+1}] the objective is at least (m−1)·U_k + least_sum(U_{k+1}).
    grid = np.array([lo * (1 + 0.01 * k) for k in range(1, 40)] + [np.inf])
    plain, extra = slots(np.where(np.isfinite(grid), grid, 1e300))
    costs = np.concatenate([c, c + r])
    order = np.argsort(costs, kind="stable")
    w2 = np.concatenate([weight, weight])
    counts = (np.concatenate([plain, extra], axis=1) * w2[None, :])[:, order]
    before = np.cumsum(counts, axis=1) - counts
    take = np.clip(n_blocks - before, 0.0, counts)
    least = float((fixed * weight).sum()) + (take * costs[order][None, :]).sum(axis=1)
    least = np.where(take.sum(axis=1) >= n_blocks, least, np.inf)
    lows = np.concatenate([[lo], grid[:-1]])
    best = float(np.min((m - 1) * lows + np.maximum(base, least)))
    return best, lo


def shape_terms(*, tables, tp: int, dp: int, share: int, capacity: float, training,
                model: ModelProfile, allow_recompute: bool,
                in_flight: int = 1) -> tuple[float, float, float, float]:
    """Per-stage terms (block cost, recompute cost, blocks that fit plain / with
    recomputation) for ``in_flight`` micro-batches held; the default, one, is the most
    optimistic memory position and so serves the order-free bound."""
    blocks = [k for k, layer in enumerate(model.layers) if layer.kind == "block"]
    unit = np.diff(tables.fwd) + np.diff(tables.bwd) + np.diff(tables.tpc)
    c = float(unit[blocks].min())
    r = float(np.diff(tables.rec)[blocks].min())
    per_param = static_bytes_per_param(training) + optimizer_bytes_per_param(training, dp=dp)
    static = min(model.layers[k].params for k in blocks) * per_param / tp
    act = min(model.layers[k].activation_bytes for k in blocks)
    full = static + in_flight * share * act / tp
    kept = static + in_flight * share * min(model.layers[k].input_bytes for k in blocks) / tp
    working = share * act / tp  # a range holding a block works with at least one block's
    n = len(blocks)
    k0 = float(np.floor(max(capacity - working, 0.0) / full)) if full > 0 else float(n)
    k1 = (float(np.floor(max(capacity - working, 0.0) / kept)) if kept > 0 else float(n)
          ) if allow_recompute else k0
    return c, r, min(k0, n), min(max(k1, k0), n)


__all__ += ["bound_from_terms", "shape_terms"]
