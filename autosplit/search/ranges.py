"""The unit ranges a stage may own, counted once per distinct cost.

A stage owns a contiguous range ``[i, j)`` of the model's units. In a transformer every block
costs the same, so a range's cost depends only on how many blocks it holds and which of the
units before and after the blocks (embedding, head) it includes: the ``(L+1)²`` ranges of an
``L``-unit model fall into about ``4·L`` classes. The search prices one representative of each
class, which is exact when the blocks are identical — checked on the cost tables, not
assumed — and falls back to every range otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RangeIndex", "range_index", "blocks_identical"]


@dataclass(frozen=True)
class RangeIndex:
    """Representatives of the range classes and the class of every range ``[i, j)``.

    ``start[r], end[r]`` is the representative of class ``r``; ``of[i, j]`` the class of range
    ``[i, j)`` (``-1`` when ``j ≤ i``).
    """

    num_units: int
    start: np.ndarray
    end: np.ndarray
    of: np.ndarray

    @property
    def size(self) -> int:
        return int(self.start.size)


def blocks_identical(tables: Sequence, first_block: int, end_block: int) -> bool:
    """Whether every block unit has the same per-unit figures in every cost table (each table
    a ``StageTables``: prefix sums, so per-unit values are first differences)."""
    if end_block - first_block <= 1:
        return True
    return all(_identical(t, first_block, end_block) for t in tables)


def _identical(t, first_block: int, end_block: int) -> bool:
    rows = [np.diff(prefix)[first_block:end_block]
            for prefix in (t.fwd, t.bwd, t.rec, t.tpc, t.params, t.act, t.inp)]
    rows += [np.asarray(per_unit, dtype=float)[first_block:end_block]
             for per_unit in (t.out_bytes, t.unit_work, t.unit_work_rc) if per_unit is not None]
    block = np.vstack(rows)
    ref = block[:, :1]
    return bool(np.all(np.abs(block - ref) <= 1e-12 * np.abs(ref)))


def range_index(num_units: int, *, first_block: int, end_block: int,
                identical: bool) -> RangeIndex:
    """Classes of ranges: with identical blocks ``[first_block, end_block)``, a range of blocks
    alone is represented by the same number of blocks starting at ``first_block``; otherwise
    every range is its own class."""
    n = num_units
    i = np.arange(n + 1)[:, None] * np.ones((1, n + 1), dtype=int)
    j = np.ones((n + 1, 1), dtype=int) * np.arange(n + 1)[None, :]
    valid = j > i
    ci, cj = i.copy(), j.copy()
    if identical and end_block > first_block:
        lo, hi = first_block, end_block
        # Only ranges of blocks alone move: one that reaches into the units before or after
        # the blocks is already fixed by where it starts and ends.
        in_blocks = (i >= lo) & (j <= hi)
        ci = np.where(in_blocks, lo, ci)
        cj = np.where(in_blocks, lo + (j - i), cj)
    key = ci * (n + 1) + cj
    keys = np.unique(key[valid])
    of = np.full((n + 1, n + 1), -1, dtype=np.int64)
    of[valid] = np.searchsorted(keys, key[valid])
    return RangeIndex(num_units=n, start=(keys // (n + 1)).astype(np.int64),
                      end=(keys % (n + 1)).astype(np.int64), of=of)
