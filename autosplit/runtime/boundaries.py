"""What crosses each stage boundary, worked out on the meta device before anything runs.

Each rank needs its stage's input and output shapes up front (its receive buffers for
activations and for their gradients). Running every stage's slice of the forward, in order,
on meta tensors — the same code the real run uses — gives the exact shapes and dtypes in a
second, without memory, and doubles as the launcher's check that every stage can be cut out of
the model's forward before any process starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autosplit.errors import AutosplitError, BadInputError
from autosplit.model.loader import ModelSource, build_on_meta
from autosplit.model.user_code import describe_exception
from autosplit.plan.schema import Plan
from autosplit.runtime.slicing import StageSlice
from autosplit.runtime.stage_builder import (
    StageModule,
    foreign_modules,
    meta_inputs,
    model_partition,
)

__all__ = ["StageIO", "trace_stages"]


@dataclass(frozen=True)
class StageIO:
    """Meta tensors of one stage's inputs and outputs for one micro-batch of ``rows``
    samples; floating-point ones require gradients (their gradients cross back). The first
    stage's inputs are the model's; the last stage has no outputs here (its loss ends the
    pipeline)."""

    rows: int
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


def _as_tuple(value: object, *, stage: int, path: str) -> tuple[torch.Tensor, ...]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    if not all(isinstance(t, torch.Tensor) for t in items):
        kinds = ", ".join(type(t).__name__ for t in items)
        raise BadInputError(
            f"stage {stage} hands the next stage ({kinds}); only a tensor or a tuple of "
            "tensors can cross a stage boundary", file=path,
            fix="make each block take and return the hidden state as a tensor (or a tuple of "
                "tensors)")
    return tuple(items)  # type: ignore[arg-type]


def _mark(ts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.empty(t.shape, dtype=t.dtype, device="meta")
                 .requires_grad_(t.is_floating_point()) for t in ts)


def trace_stages(source: ModelSource, *, plan: Plan, rows: int,
                 boundary_dtype: torch.dtype | None, last: int | None = None
                 ) -> list[StageIO]:
    """Every stage's inputs and outputs up to stage ``last`` (default: all), for
    micro-batches of ``rows`` samples on every stage."""
    model = build_on_meta(source)
    partition = model_partition(source, model, seq_len=plan.model.seq_len)
    inputs = meta_inputs(source, rows=rows, seq_len=plan.model.seq_len)
    current: tuple[torch.Tensor, ...] = tuple(t for t in inputs if isinstance(t, torch.Tensor))
    stop = plan.num_stages - 1 if last is None else last
    traced: list[StageIO] = []
    for s in plan.stages[: stop + 1]:
        stage_slice = StageSlice(
            model, partition=partition, stage=s.index, start=s.layer_start, end=s.layer_end,
            foreign=foreign_modules(model, partition, s.layer_start, s.layer_end),
            inputs=inputs,
            recompute=False, device=torch.device("meta"))
        probe = StageModule(model, stage_slice=stage_slice, is_first=s.index == 0,
                            is_last=s.layer_end == plan.model.num_layers)
        probe.compute_device = torch.device("meta")
        probe.boundary_dtype = boundary_dtype
        stage_inputs = inputs if s.index == 0 else current
        try:
            with torch.no_grad():
                out = probe(*stage_inputs)
        except AutosplitError as exc:
            if exc.file is None:
                exc.file = source.path
            raise type(exc)(exc.message, file=exc.file, field=exc.field, fix=exc.fix) from None
        except Exception as exc:  # noqa: BLE001 - the model file's forward may raise anything
            raise BadInputError(
                f"the forward of stage {s.index} (units {s.layer_start}-{s.layer_end - 1}) "
                f"failed on meta tensors: {describe_exception(exc, source.path)}",
                file=source.path,
                fix="the forward must run on the meta device; see docs/runtime.md, "
                    "'Stage forward'") from None
        last_stage = s.layer_end == plan.model.num_layers
        outputs = () if last_stage else _as_tuple(out, stage=s.index, path=source.path)
        traced.append(StageIO(rows, _mark(tuple(
            t for t in stage_inputs if isinstance(t, torch.Tensor))), _mark(outputs)))
        current = outputs
    return traced
