"""The load a training neighbour puts on a shared device, for profiling under it.

Chips carved out of one GPU (CUDA MPS clients with SM limits) share its memory bandwidth and
L2 cache. A client profiled while its neighbours are idle is measured too fast, and one
profiled next to a synthetic load (one large matrix product in a loop) is measured against the
wrong mix: training neighbours run attention, layer norms and GEMMs of the model's own shapes
and stream activations in and out. So a neighbour here runs what it will run in training —
the model's forward, loss and backward at a training micro-batch, over and over — until a
stop file appears (the profiled client's script creates it) or a time limit passes.

The optimizer step is left out: it is a few percent of a step and would need the optimizer's
state (twelve more bytes per parameter) in every neighbour.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autosplit.errors import BadInputError
from autosplit.model.loader import DTYPES, load_model_source
from autosplit.model.user_code import call_user
from autosplit.profiler.device import DeviceHandle
from autosplit.profiler.layer_bench import build_on_device, example_inputs, training_loss

__all__ = ["LoadSettings", "LoadReport", "run_training_load"]


@dataclass(frozen=True)
class LoadSettings:
    """What the neighbour trains and for how long."""

    micro_batch: int = 1
    seq_len: int = 2048
    dtype: str = "bf16"
    #: Stop when this file exists (checked after every step).
    stop_file: Path | None = None
    #: Stop after this many seconds at the latest.
    limit_s: float = 600.0
    #: Created once the first step has run: the load is on from then on.
    ready_file: Path | None = None


@dataclass(frozen=True)
class LoadReport:
    """How much training work the neighbour did."""

    steps: int
    seconds: float
    #: ``stop file`` or ``time limit``.
    stopped_by: str

    @property
    def step_s(self) -> float:
        """Mean seconds per training step (forward, loss, backward)."""
        return self.seconds / self.steps if self.steps else float("nan")


def run_training_load(path: str, *, model_args: dict[str, str], settings: LoadSettings,
                      handle: DeviceHandle,
                      progress: Callable[[int, float], None] | None = None) -> LoadReport:
    """Run forward, loss and backward of the model on ``handle`` until told to stop."""
    if settings.dtype not in DTYPES:
        raise BadInputError(f"unknown dtype '{settings.dtype}'", field="--dtype",
                            fix="use one of " + ", ".join(DTYPES))
    source = load_model_source(path, model_args)
    model = build_on_device(source, handle, DTYPES[settings.dtype])
    loss_fn = training_loss(source)
    inputs, targets = example_inputs(source, settings.micro_batch, settings.seq_len,
                                     handle.device)

    def step() -> None:
        for p in model.parameters():
            p.grad = None
        loss = loss_fn(model(*inputs), targets)
        loss.backward()

    call_user(step, path=path, what="a training step on the device",
              fix="make forward and loss run on the given device")
    handle.synchronize()
    if settings.ready_file is not None:
        settings.ready_file.touch()
    start = time.perf_counter()
    steps = 0
    stopped_by = "time limit"
    while time.perf_counter() - start < settings.limit_s:
        if settings.stop_file is not None and settings.stop_file.exists():
            stopped_by = "stop file"
            break
        step()
        handle.synchronize()
        steps += 1
        if progress is not None:
            progress(steps, time.perf_counter() - start)
    return LoadReport(steps=steps, seconds=time.perf_counter() - start, stopped_by=stopped_by)
