"""How long each rank computes per step, apart from waiting and communicating.

A step's wall time says how fast the whole pipeline was; it cannot say which stage the cost
model got wrong. So each rank times the calls that do its stage's work — every micro-batch's
forward, the loss on the last stage, every backward — and sums them per step. On CUDA the
timing uses events recorded on the current stream around each call (no synchronisation
inside the step; read after the step's own synchronisation), so it measures the device's
work, not the host's launching. With the CPU relay the forward includes the stage's
host→device copy of its input and device→host copy of its output, which the cost model counts
as transfer time instead.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["ComputeTimer"]

F = TypeVar("F", bound=Callable[..., Any])


class ComputeTimer:
    """Sums the duration of wrapped calls; ``take_step`` returns the sum and starts over."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._events: list[tuple[Any, Any]] = []
        self._seconds = 0.0

    def wrap(self, fn: F) -> F:
        """``fn``, timed."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                try:
                    return fn(*args, **kwargs)
                finally:
                    end.record()
                    self._events.append((start, end))
            begin = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._seconds += time.perf_counter() - begin

        return timed  # type: ignore[return-value]

    def take_step(self) -> float:
        """Seconds of the wrapped calls since the last call; on CUDA, call it after the
        device has been synchronised."""
        total = self._seconds + sum(s.elapsed_time(e) for s, e in self._events) / 1e3
        self._events.clear()
        self._seconds = 0.0
        return total
