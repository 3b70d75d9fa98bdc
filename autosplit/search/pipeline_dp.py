"""Level 2 of the search tree: the stages of a pipeline, found by one dynamic programme.

For a fixed micro-batch count the objective ``Σ_s u_s + (m − 1)·max_s u_s`` couples the
stages through the ``max``; fixing a threshold ``τ`` on the slowest stage removes it (Alpa's
inter-operator pass, Zheng et al. OSDI 2022). What is left is a question this programme
answers exactly: which pipelines of stages, each no slower than ``τ``, cover the units
within the pools' capacity?

- **Position.** Under 1F1B the stage ``k``-th from the end keeps ``min(k, m)`` micro-batches of
  activations. The pipeline is built from its end, so ``k`` is part of the state and every
  stage's memory is checked where it sits (Alpa and Piper do the same).
- **Capacity.** Each device group holds one contiguous run of stages (its stages talk over
  its own links; vendors meet at as few boundaries as there are runs). Then a pool's
  capacity concerns one run only: the state records the pools whose runs are closed (behind)
  and the group of the run being built, and the value is the fewest devices that run has
  taken — all the stages still to be placed need to know. So feasibility is exact: a
  pipeline within ``τ`` exists, in some order of the groups, if and only if the programme
  reaches unit 0. Among suffixes that leave as many devices, the least busy is kept.

State: (stages behind ``k``, first unit ``i`` of the suffix, closed pools and current group).
Every option of every group is priced on every range class (``menu``); per threshold,
position and group the *envelope* — the fewest devices, then least busy, of an option that
holds a range — is all the programme looks at. Thresholds are batched along one axis.

Positions up to ``K0`` are exact; deeper stages are priced at ``K0`` (fewer micro-batches in
flight than they really hold, so "no pipeline" stays a proof) in one pass over unit
boundaries; a found pipeline's memory is then checked exactly where it is priced
(``assemble``). Transfers between stages and the CPU relay's blocking are not in the
threshold test; the exact pricing has them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from autosplit.search.groups import DeviceGroup
from autosplit.search.menu import Menu

__all__ = ["Stage", "PipelineProblem", "solve_pipelines", "pipeline_cells",
           "priced_lower_bounds"]

_INF = np.inf


@dataclass(frozen=True)
class Stage:
    """One stage of a found pipeline: its units, group, option (index into the menu) and
    position from the end of the pipeline (1 = last)."""

    start: int
    end: int
    group: int
    option: int
    position: int


@dataclass(frozen=True)
class _Run:
    """A state's run structure: pools of the closed runs behind, and the current group."""

    closed: frozenset[int]
    group: int


@dataclass(frozen=True)
class PipelineProblem:
    """What stays fixed while thresholds vary: the menu, the device groups, the
    micro-batches in flight at each position from the end (``in_flight[k]``, ``k ≥ 1``) and
    each pool's capacity."""

    menu: Menu
    groups: tuple[DeviceGroup, ...]
    in_flight: np.ndarray
    capacity: np.ndarray
    exact_positions: int = 12

    @property
    def max_stages(self) -> int:
        return int(self.in_flight.size - 1)

    @property
    def k0(self) -> int:
        return min(self.exact_positions, self.max_stages, self.menu.ranges.num_units)

    @cached_property
    def runs(self) -> tuple[_Run, ...]:
        """Every state's run structure: any set of closed pools and a group using none."""
        pools = sorted({p for g in self.groups for p in g.pools})
        out = []
        for mask in range(1 << len(pools)):
            closed = frozenset(p for b, p in enumerate(pools) if mask >> b & 1)
            for g in self.groups:
                if not closed & set(g.pools):
                    out.append(_Run(closed=closed, group=g.index))
        return tuple(out)

    @cached_property
    def predecessors(self) -> np.ndarray:
        """``[c, j]``: states whose run closes when a stage of ``c``'s group starts a new run
        in front of them (padded with ``len(runs)``, an always-empty state)."""
        runs = self.runs
        index = {r: c for c, r in enumerate(runs)}
        rows = []
        for r in runs:
            rows.append([index[q] for q in runs
                         if not set(self.groups[q.group].pools) & q.closed
                         and q.closed | set(self.groups[q.group].pools) == r.closed])
        width = max((len(x) for x in rows), default=0) or 1
        pad = len(runs)
        return np.array([x + [pad] * (width - len(x)) for x in rows], dtype=np.int64)

    @cached_property
    def limit(self) -> np.ndarray:
        """Devices the current run of each state may take (its group's pools)."""
        return np.array([sum(int(self.capacity[p]) for p in self.groups[r.group].pools)
                         for r in self.runs], dtype=float)

    @property
    def levels(self) -> np.ndarray:
        """The in-flight counts of the positions the programme prices (``1 … K0``)."""
        return np.unique(self.in_flight[1:self.k0 + 1])

    def level_of(self, k: int) -> int:
        """Index into ``levels`` of position ``k`` (deeper than ``K0``: ``K0``'s)."""
        return int(np.searchsorted(self.levels, self.in_flight[min(k, self.k0)]))

    @cached_property
    def fit_ranks(self) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
        """Per group: its options, their order per range class by in-flight micro-batches
        that fit (most first), and per priced in-flight count how many fit it."""
        menu = self.menu
        top = int(self.in_flight.max())
        out = []
        for g in self.groups:
            members = np.flatnonzero(menu.group == g.index)
            level = np.clip(menu.kmax[members], -1, top)
            order = np.argsort(-level, axis=0, kind="stable")
            counts = (level[None, :, :] >= self.levels[:, None, None]).sum(axis=1)
            out.append((members, order, counts))
        return tuple(out)

    @cached_property
    def scale(self) -> float:
        """Busy times (and the first stage's tail) divided by this sum to less than one over
        any pipeline."""
        menu = self.menu
        finite = menu.busy[np.isfinite(menu.busy)]
        tail = menu.tail[np.isfinite(menu.tail)]
        return (float(finite.max(initial=1.0)) * (menu.ranges.num_units + 2)
                + float(tail.max(initial=0.0))) * 4.0


def pipeline_cells(problem: PipelineProblem, batch: int) -> int:
    """Work units of one ``solve_pipelines`` call (its largest arrays' elements)."""
    n = problem.menu.ranges.num_units + 1
    return batch * (problem.menu.size * problem.menu.ranges.size
                    + (problem.k0 + 1) * len(problem.runs) * n * n)


def _envelope(problem: PipelineProblem, tau: np.ndarray, price: np.ndarray,
              offset: np.ndarray) -> np.ndarray:
    """``E[f, t, c, r]``: per priced in-flight count ``f``, threshold ``t``, state ``c`` (its
    current group's options) and range class ``r``, the least ``offset[o, t] +
    price[o, r]`` over the options that hold ``r`` within ``tau[t]`` with ``f`` in flight;
    the extra class ``r = R`` (an empty range) is ``inf``. The reduction axis of the
    programme (ranges) is last, where numpy reduces fastest."""
    menu = problem.menu
    n_r, n_t, n_g = menu.ranges.size, tau.size, len(problem.groups)
    out = np.full((problem.levels.size, n_t, n_g, n_r + 1), _INF)
    cols = np.arange(n_r)[None, :]
    for g, (members, order, counts) in enumerate(problem.fit_ranks):
        if members.size == 0:
            continue
        busy = np.take_along_axis(menu.busy[members], order, axis=0)  # ranked (O, R)
        base = np.take_along_axis(price[members], order, axis=0)
        off = offset[members][order]  # (O, R, T)
        key = np.where(busy[:, :, None] <= tau[None, None, :], base[:, :, None] + off, _INF)
        running = np.minimum.accumulate(key, axis=0)
        running = np.concatenate([np.full((1, n_r, n_t), _INF), running], axis=0)
        out[:, :, g, :n_r] = np.moveaxis(running[counts, cols], 2, 1)  # (F, T, R)
    idx = np.array([r.group for r in problem.runs], dtype=np.int64)
    return out[:, :, idx, :]


def _keys(problem: PipelineProblem, tau: np.ndarray) -> np.ndarray:
    """The envelope of ``devices + time / scale`` (devices decide first; ``time / scale``
    sums to less than one over any pipeline). ``time`` is the busy time, plus — for a
    stage that holds the first unit — its all-reduce and optimizer step after the pipeline
    drains: the first stage has no later backward to hide them behind."""
    menu = problem.menu
    total = menu.devices.sum(axis=1).astype(float)
    first = (menu.ranges.start == 0)[None, :]
    time = menu.busy + np.where(first, menu.tail, 0.0)
    return _envelope(problem, tau, time / problem.scale,
                     np.repeat(total[:, None], tau.size, axis=1))


def _busy_part(key: np.ndarray) -> np.ndarray:
    """The busy-time part of a key (``inf`` stays ``inf``)."""
    finite = np.isfinite(key)
    return np.where(finite, key - np.floor(np.where(finite, key, 0.0)), _INF)


def _closing(problem: PipelineProblem, values: np.ndarray) -> np.ndarray:
    """For each state (axis 1), the least of ``values`` over the states whose run closes
    when its group's run starts in front of them."""
    padded = np.concatenate([values, np.full(values.shape[:1] + (1,) + values.shape[2:],
                                             _INF)], axis=1)
    return padded[:, problem.predecessors].min(axis=2)


def _enter(problem: PipelineProblem, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value before a new stage in front of each state (``cur[t, c, i]``): continue the
    current run, or close a run behind and start this state's group afresh (its devices
    count from zero; only the busy time carries over). Also whether it continues."""
    fresh = _closing(problem, _busy_part(cur))
    cont = cur <= fresh
    return np.where(cont, cur, fresh), cont


def _band(problem: PipelineProblem, env: np.ndarray) -> np.ndarray:
    """``band[h, w]``: the range class of ``[h, h + w + 1)`` (``R``, empty, past the end),
    for ``w`` up to the longest range any option holds within any threshold of the batch."""
    rng = problem.menu.ranges
    n = rng.num_units
    finite = np.isfinite(env[..., :rng.size]).any(axis=(0, 1, 2))
    longest = int((rng.end - rng.start)[finite].max(initial=1))
    h = np.arange(n + 1)[:, None]
    j = h + np.arange(1, longest + 1)[None, :]
    return np.where(j <= n, rng.of[np.minimum(h, n), np.minimum(j, n)], rng.size).clip(min=0)


def _behind(start: np.ndarray, width: int) -> np.ndarray:
    """``B[t, c, h, w] = start[t, c, h + w + 1]`` (``inf`` past the end): the suffix behind a
    stage ``[h, h + w + 1)``."""
    n1 = start.shape[2]
    padded = np.concatenate([start[:, :, 1:], np.full(start.shape[:2] + (width,), _INF)],
                            axis=2)
    return np.lib.stride_tricks.sliding_window_view(padded, width, axis=2)[:, :, :n1]


def solve_pipelines(problem: PipelineProblem, tau: np.ndarray, *, alternatives: int = 1,
                    check: Callable[[], None] = lambda: None
                    ) -> tuple[tuple[tuple[Stage, ...], ...], ...]:
    """For each threshold of ``tau``: pipelines within it that fit the pools (front to
    back), empty when none exists. The first is the least busy; up to ``alternatives`` in
    all, each ending in a different state (another group in front, other runs closed — in
    effect another order of the groups), least busy first. ``check`` runs between positions
    (it may raise to stop on time)."""
    menu = problem.menu
    n = menu.ranges.num_units
    keys = _keys(problem, tau)  # (levels, T, C, R + 1)
    limit = problem.limit[None, :, None] + 1.0  # devices ≤ limit  ⇔  key < limit + 1
    band = _band(problem, keys)  # (h, W)
    width = band.shape[1]
    initial = np.array([not r.closed for r in problem.runs])[None, :, None]
    of = np.where(menu.ranges.of >= 0, menu.ranges.of, menu.ranges.size)
    first = keys[problem.level_of(1)][:, :, of[:, n]]  # (T, C, h): the last stage, [h, n)
    frames = [np.where((first < limit) & initial, first, _INF)]
    picks: list[np.ndarray] = [np.zeros(0, dtype=np.int32)]
    deepest = min(problem.max_stages, n)
    hs = np.arange(n + 1)[None, None, :]
    for k in range(2, problem.k0 + 1):
        check()
        start, _ = _enter(problem, frames[-1])
        if not np.isfinite(start[:, :, 1:]).any():
            break
        cost = keys[problem.level_of(k)][:, :, band]  # (T, C, h, W)
        tot = cost + _behind(start, width)
        w = np.argmin(tot, axis=-1)
        new = np.take_along_axis(tot, w[..., None], axis=-1)[..., 0]  # one reduction, not two
        new = np.where(new < limit, new, _INF)
        ai = w + hs + 1
        if k == problem.k0 and problem.k0 < deepest:
            new, ai = _deep(problem, cost, limit, new, ai)
        frames.append(new)
        picks.append(ai.astype(np.int32))
    return tuple(tuple(_trace(problem, frames, picks, t, float(tau[t]), k, c)
                       for k, c in _ends(frames, t, alternatives))
                 for t in range(tau.size))


def _ends(frames: Sequence[np.ndarray], t: int, count: int) -> list[tuple[int, int]]:
    """The ``count`` least busy finished states (stage count, state) for threshold ``t``, at
    most one per state; the stage count of each is its least busy one."""
    best: dict[int, tuple[float, int]] = {}
    for k in range(1, len(frames) + 1):
        busy = _busy_part(frames[k - 1][t, :, 0])
        for c in np.flatnonzero(np.isfinite(busy)):
            v = float(busy[c])
            if int(c) not in best or v < best[int(c)][0] - 1e-15:
                best[int(c)] = (v, k)
    ranked = sorted((v, k, c) for c, (v, k) in best.items())
    return [(k, c) for _, k, c in ranked[:count]]


def _deep(problem: PipelineProblem, cost: np.ndarray, limit: np.ndarray, new: np.ndarray,
          ai: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold every deeper stage count into the last frame: a stage at position ``≥ K0`` may
    also sit in front of a suffix that is itself this deep (filled from the back; a state's
    entry value is computed once, when it is final). Negative picks mark those."""
    n1 = new.shape[2]
    width = cost.shape[3]
    value = new.copy()
    arg = ai.copy()
    entry = np.full(value.shape[:2] + (n1 + width,), _INF)
    lim = limit[:, :, 0]
    for h in range(n1 - 2, -1, -1):
        entry[:, :, h + 1] = _enter(problem, value[:, :, h + 1:h + 2])[0][:, :, 0]
        tot = cost[:, :, h, :] + entry[:, :, h + 1:h + 1 + width]  # (T, C, W)
        a = np.argmin(tot, axis=-1)
        v = np.take_along_axis(tot, a[..., None], axis=-1)[..., 0]
        better = (v < value[:, :, h]) & (v < lim)
        value[:, :, h] = np.where(better, v, value[:, :, h])
        arg[:, :, h] = np.where(better, -(a + h + 1) - 1, arg[:, :, h])
    return value, arg


def _trace(problem: PipelineProblem, frames: Sequence[np.ndarray], picks: Sequence[np.ndarray],
           t: int, tau: float, k: int, c: int) -> tuple[Stage, ...]:
    """The pipeline of ``k`` stages that reaches unit 0 in state ``c``, walked back to its
    last stage."""
    n = problem.menu.ranges.num_units
    spans: list[tuple[int, int, int]] = []
    h = 0
    while True:
        group = problem.runs[c].group
        if k == 1:
            spans.append((h, n, group))
            break
        a = int(picks[k - 1][t, c, h])
        i, k_next = (-a - 1, k) if a < 0 else (a, k - 1)
        spans.append((h, i, group))
        behind = frames[k_next - 1][t, :, i]
        preds = [int(p) for p in problem.predecessors[c] if p < len(problem.runs)]
        busy = _busy_part(behind)
        fresh = min((busy[p] for p in preds), default=_INF)
        if not behind[c] <= fresh:
            # This stage opened its run: the run behind closed; the least busy such state.
            c = min(preds, key=lambda p: (busy[p], p))
        h, k = i, k_next
    total = len(spans)
    memo: dict[tuple[int, int, int], int] = {}
    out = []
    for idx, (a, b, g) in enumerate(spans):
        pos = total - idx
        key = (g, int(problem.in_flight[min(pos, problem.k0)]),
               int(problem.menu.ranges.of[a, b]))
        if key not in memo:
            memo[key] = _pick(problem, g, pos, a, b, tau)
        out.append(Stage(start=a, end=b, group=g, position=pos, option=memo[key]))
    return tuple(out)


def _pick(problem: PipelineProblem, group: int, k: int, h: int, i: int, tau: float) -> int:
    """The option behind the envelope: fewest devices, then least busy, lowest index."""
    menu = problem.menu
    r = int(menu.ranges.of[h, i])
    f = int(problem.in_flight[min(k, problem.k0)])
    cand = np.flatnonzero((menu.group == group) & (menu.kmax[:, r] >= f)
                          & (menu.busy[:, r] <= tau))
    total = menu.devices[cand].sum(axis=1)
    time = menu.busy[cand, r] + (menu.tail[cand, r] if h == 0 else 0.0)
    return int(cand[np.lexsort((cand, time, total))[0]])


def _priced(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` where a zero count of an infinitely priced pool costs nothing (0 · ∞ = 0,
    not NaN, which would silently void the bound)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(invalid="ignore"):
        out = a @ b
    if np.isnan(out).any():
        infinite = (a > 0).astype(float) @ np.isinf(b).astype(float) > 0
        out = np.where(infinite, np.inf, a @ np.where(np.isinf(b), 0.0, b))
    return out


def priced_lower_bounds(problem: PipelineProblem, tau: np.ndarray, mu: np.ndarray, *,
                        check: Callable[[], None] = lambda: None) -> np.ndarray:
    """For each column ``t``: a lower bound on ``Σ_s u_s`` over every pipeline of the space
    whose slowest stage is within ``tau[t]`` and that fits the pools.

    Lagrangian relaxation of the capacity: a device of pool ``p`` costs ``mu[t, p]``; the
    cheapest pipeline of ``Σ u + μ · devices`` (no capacity, the same states and runs) minus
    ``μ · capacity`` bounds every pipeline that fits from below (weak duality), for any
    ``μ ≥ 0``. Positions deeper than ``K0`` are priced at ``K0``. Value only: nothing is
    traced."""
    menu = problem.menu
    n = menu.ranges.num_units
    env = _envelope(problem, tau, menu.busy, _priced(menu.devices, mu.T))
    band = _band(problem, env)
    width = band.shape[1]
    of = np.where(menu.ranges.of >= 0, menu.ranges.of, menu.ranges.size)
    initial = np.array([not r.closed for r in problem.runs])[None, :, None]
    f = np.where(initial, env[problem.level_of(1)][:, :, of[:, n]], _INF)
    best = f[:, :, 0].min(axis=1)

    def enter(cur: np.ndarray) -> np.ndarray:  # continue the run, or close one behind
        return np.minimum(cur, _closing(problem, cur))

    deepest = min(problem.max_stages, n)
    for k in range(2, problem.k0 + 1):
        check()
        start = enter(f)
        if not np.isfinite(start[:, :, 1:]).any():
            break
        cost = env[problem.level_of(k)][:, :, band]
        f = (cost + _behind(start, width)).min(axis=-1)
        if k == problem.k0 and problem.k0 < deepest:
            # Deeper stages, priced at K0: a stage may sit before an as-deep suffix.
            entry = np.full(f.shape[:2] + (n + 1 + width,), _INF)
            for h in range(n - 1, -1, -1):
                entry[:, :, h + 1] = enter(f[:, :, h + 1:h + 2])[:, :, 0]
                f[:, :, h] = np.minimum(f[:, :, h], (cost[:, :, h, :]
                                                     + entry[:, :, h + 1:h + 1 + width]
                                                     ).min(axis=-1))
        best = np.minimum(best, f[:, :, 0].min(axis=1))
    with np.errstate(invalid="ignore"):  # inf - inf where best is inf: discarded below
        return np.where(np.isfinite(best), best - _priced(mu, problem.capacity), _INF)
