"""Synthetic batches from the model file's ``example_batch``, identical on every rank.

Every rank of a pipeline needs a different piece of the same batch (the first stage the
inputs, the last the targets, each data-parallel replica its own rows), so each rank draws the
whole step's batch from a generator seeded with (seed, step) and slices what it needs. No
batch ever crosses the network, and a single-process reference draws exactly the same data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from autosplit.errors import BadInputError
from autosplit.model.loader import ModelSource
from autosplit.model.user_code import call_user

__all__ = ["Batch", "step_batch"]


@dataclass(frozen=True)
class Batch:
    """One replica's share of one step: model inputs and loss targets, whole (un-chunked)."""

    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor


def dense(t: torch.Tensor) -> torch.Tensor:
    """A copy with row-major strides. Not ``.contiguous()``: a slice with a size-1 dimension
    counts as contiguous yet keeps its odd stride, and the pipeline compares strides."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)


def _rows(t: Any, start: int, stop: int) -> Any:
    # Dense: the pipeline checks strides against the boundary shapes it was given.
    return dense(t[start:stop]) if isinstance(t, torch.Tensor) else t


def step_batch(source: ModelSource, *, step: int, seed: int, global_batch: int, seq_len: int,
               replica: int, replicas: int, shares: Sequence[int] | None = None) -> Batch:
    """The rows of step ``step``'s global batch that data-parallel replica ``replica`` owns,
    on the CPU; the caller moves them. ``shares``: the samples of the step each replica
    takes (a faster chip's replica more), consecutive blocks of rows; ``None``: equal."""
    torch.manual_seed(seed * 1_000_003 + step)
    out = call_user(source.example_batch, global_batch, seq_len, torch.device("cpu"),
                    path=source.path, what=f"example_batch({global_batch}, {seq_len}, cpu)",
                    fix="example_batch(batch_size, seq_len, device) must return "
                        "(inputs, targets)")
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise BadInputError("example_batch must return (inputs, targets)", file=source.path,
                            fix="return a pair: a tuple of forward arguments and the targets")
    inputs, targets = out
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if shares is None:
        shares = [global_batch // replicas] * replicas
    lo = sum(shares[:replica])
    hi = lo + shares[replica]
    return Batch(tuple(_rows(t, lo, hi) for t in inputs), _rows(targets, lo, hi))
