"""A lower bound on the iteration time for each micro-batch count, from a fluid relaxation.

Used to order the micro-batch counts (most promising first), to skip those that cannot beat
the best plan, and as the bound of every count the search did not get to. It relaxes
everything discrete: units may be split over pools in any proportion, and a pool's devices
are a single pot of device-seconds.

Per micro-batch, a stage's devices are busy at most ``τ`` (the slowest stage's time), so pool
``p`` offers at most ``N_p · τ`` device-seconds. Unit ``u`` costs at least ``c_up`` device-seconds
per sample on pool ``p`` (its best TP degree and share: ``t · busy / q``), ``B`` samples per
micro-batch. For any prices ``y_p ≥ 0`` with ``Σ y_p N_p = 1`` (LP duality),
``τ ≥ B · Σ_u min_p y_p c_up``; prices proportional to each pool's speed on the model's
blocks make the bound exact for a model of identical blocks. A pipeline also takes at least
``Σ_u min busy(u)`` per micro-batch to pass one micro-batch through, and its slowest stage
works through all ``m`` micro-batches, so

    T ≥ max((m − 1) · τ + Σ_u min busy(u),  m · τ).

The prices ``y`` are also the search's first guess at what a device of each pool is worth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autosplit.config import SearchConfig
from autosplit.cost.stage import compute_time
from autosplit.search.groups import Pool
from autosplit.search.menu import TableCache

__all__ = ["FluidBound", "fluid_bound"]


@dataclass(frozen=True)
class FluidBound:
    """The relaxation's figures for one micro-batch count."""

    micro_batches: int
    slowest_stage_s: float
    pass_through_s: float
    #: Relative worth of one device of each pool (the dual prices ``y``, ``Σ y_p N_p = 1``).
    device_worth: tuple[float, ...] = ()

    @property
    def iteration_s(self) -> float:
        m = self.micro_batches
        return max((m - 1) * self.slowest_stage_s + self.pass_through_s,
                   m * self.slowest_stage_s)


def _unit_busy(cache: TableCache, pool: int, tp: int, share: int) -> np.ndarray:
    t = cache.tables(pool, tp, share)
    n = cache.model.num_layers
    idx = np.arange(n)
    return np.asarray(compute_time(t, idx, idx + 1, False), dtype=float)


def fluid_bound(cache: TableCache, pools: Sequence[Pool], *, micro_batches: int,
                search: SearchConfig) -> FluidBound:
    """The fluid lower bound for ``micro_batches`` micro-batches (see module docstring)."""
    b = cache.training.global_batch // micro_batches
    qmax = max(search.micro_batch_sizes)
    total = sum(p.num_devices for p in pools)
    qmin = max(1, -(-b // total))
    per_sample = []  # (P, L): device-seconds per sample, best TP and share
    fastest = None  # (L,): least busy time of a unit on any replica
    for p in pools:
        g = p.devices_per_node
        best = None
        for t in sorted(set(search.tp_degrees)):
            if t > g:
                continue
            for q in range(qmin, min(qmax, b) + 1):
                busy = _unit_busy(cache, p.index, t, q)
                cost = t * busy / q
                best = cost if best is None else np.minimum(best, cost)
                fastest = busy if fastest is None else np.minimum(fastest, busy)
        per_sample.append(best if best is not None else np.full(cache.model.num_layers,
                                                                 np.inf))
    c = np.vstack(per_sample)
    blocks = [k for k, layer in enumerate(cache.model.layers) if layer.kind == "block"]
    ref = blocks[0] if blocks else 0
    n_dev = np.array([p.num_devices for p in pools], dtype=float)
    with np.errstate(divide="ignore"):
        rate = np.where(np.isfinite(c[:, ref]) & (c[:, ref] > 0), 1.0 / c[:, ref], 0.0)
    y = rate / float((n_dev * rate).sum()) if (n_dev * rate).sum() > 0 else rate
    priced = np.where(np.isfinite(c) & (y[:, None] > 0), y[:, None] * np.where(np.isfinite(c),
                                                                              c, 0.0), 0.0)
    slowest = b * float(np.min(np.where(np.isfinite(c), priced, np.inf), axis=0).sum())
    pass_through = float(fastest.sum()) if fastest is not None else 0.0
    return FluidBound(micro_batches=micro_batches, slowest_stage_s=slowest,
                      pass_through_s=pass_through, device_worth=tuple(float(v) for v in y))
