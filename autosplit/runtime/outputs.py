"""Free the last stage's outputs (the logits) once the loss no longer needs them.

The schedule keeps every micro-batch's stage output until that micro-batch's backward, but on
the last stage the backward starts from the loss and never reads the output again. The default
cross-entropy saves only its fp32 log-softmax, so the bf16 logits (b·s·V·2 bytes: 0.4 GB for
GPT's 50k vocabulary at 2 × 2048 tokens) would sit idle until the backward; the cost model,
whose loss is part of the last unit, does not count them. Megatron-LM frees its pipeline
outputs the same way (``deallocate_output_tensor``).

An output may be freed only when no saved tensor shares its storage: not one saved by the
stage's forward (an operation that saves its result, such as tanh or softmax, or a view's
base saved by an earlier operation) and not one saved by the loss (a loss that multiplies the
outputs by themselves). Both forwards run under ``record_saved_storages``, which notes the
storage of every tensor autograd saves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["record_saved_storages", "release_unsaved_outputs"]


def _storage_ptr(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without a plain storage
        return None


@contextlib.contextmanager
def record_saved_storages(into: set[int | None]) -> Iterator[set[int | None]]:
    """Add to ``into`` the storage of every tensor autograd saves inside the block (``None``
    for a tensor without a plain storage: then nothing is freed). Checkpointed regions
    save through their own hooks and recompute later, so they add nothing."""

    def pack(t: torch.Tensor) -> torch.Tensor:
        into.add(_storage_ptr(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield into


def release_unsaved_outputs(outputs: Any, saved: set[int | None]) -> int:
    """Free the storage of each tensor of ``outputs`` that no saved tensor shares (``saved``
    from ``record_saved_storages``); returns the bytes freed."""
    if None in saved:
        return 0
    freed = 0
    for t in outputs if isinstance(outputs, (tuple, list)) else (outputs,):
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        ptr = _storage_ptr(t)
        storage = t.untyped_storage()
        if ptr is None or ptr in saved or storage.nbytes() == 0:
            continue
        freed += storage.nbytes()
        storage.resize_(0)
    return freed
