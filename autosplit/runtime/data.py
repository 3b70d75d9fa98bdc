"""Synthetic batches from the model file's ``example_batch``, identical on every rank.

Every rank of a pipeline needs a different piece of the same batch (the first stage the
inputs, the last the targets, each data-parallel replica its own rows of every micro-batch),
so each rank draws the whole step's batch from a generator seeded with (seed, step) and slices
what it needs. No batch ever crosses the network, and a single-process reference draws exactly
the same data. Micro-batch *i* is rows ``[i·B, (i+1)·B)`` of the step (``layout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from autosplit.errors import BadInputError
from autosplit.model.loader import ModelSource
from autosplit.model.user_code import call_user

__all__ = ["Batch", "dense", "example_pair", "step_batch", "micro_batch_rows"]


@dataclass(frozen=True)
class Batch:
    """Model inputs (forward arguments) and loss targets of some rows of a step."""

    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor


def dense(t: torch.Tensor) -> torch.Tensor:
    """A copy with row-major strides. Not ``.contiguous()``: a slice with a size-1 dimension
    counts as contiguous yet keeps its odd stride, which some kernels do not expect."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)


def _rows(t: Any, start: int, stop: int) -> Any:
    return dense(t[start:stop]) if isinstance(t, torch.Tensor) else t


def step_batch(source: ModelSource, *, step: int, seed: int, global_batch: int,
               seq_len: int) -> Batch:
    """Step ``step``'s whole batch, on the CPU; the caller takes its rows and moves them."""
    torch.manual_seed(seed * 1_000_003 + step)
    inputs, targets = example_pair(source, rows=global_batch, seq_len=seq_len,
                                   device=torch.device("cpu"))
    return Batch(inputs, targets)


def example_pair(source: ModelSource, *, rows: int, seq_len: int,
                 device: torch.device) -> tuple[tuple[Any, ...], Any]:
    """The model file's ``example_batch(rows, seq_len, device)``, checked to be a pair, its
    forward arguments always a tuple: every caller of the user's function goes through here."""
    out = call_user(source.example_batch, rows, seq_len, device, path=source.path,
                    what=f"example_batch({rows}, {seq_len}, {device.type})",
                    fix="example_batch(batch_size, seq_len, device) must return "
                        "(inputs tuple, targets) on `device`")
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise BadInputError("example_batch must return (inputs, targets)", file=source.path,
                            fix="return a pair: a tuple of forward arguments and the targets")
    inputs, targets = out
    return ((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)), targets


def micro_batch_rows(batch: Batch, *, index: int, micro_batch: int, lo: int, hi: int
                     ) -> Batch:
    """Rows ``[lo, hi)`` of micro-batch ``index`` (of ``micro_batch`` samples each)."""
    start = index * micro_batch
    return Batch(tuple(_rows(t, start + lo, start + hi) for t in batch.inputs),
                 _rows(batch.targets, start + lo, start + hi))
