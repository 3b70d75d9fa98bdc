"""What crosses each stage boundary, worked out on the meta device before anything runs.

``torch.distributed.pipelining`` needs every stage's input and output shapes up front (or it
infers them with a real forward on the devices). Running every unit, in order, on meta tensors
with the same stage forward the real run uses gives the exact shapes and dtypes in a second,
without memory, and doubles as the launcher's check that the model file's stage-forward hooks
work before any process starts.
"""

from __future__ import annotations

import torch

from autosplit.errors import AutosplitError, BadInputError
from autosplit.model.loader import ModelSource, build_on_meta
from autosplit.model.user_code import describe_exception
from autosplit.plan.schema import Plan
from autosplit.runtime.data import dense, step_batch
from autosplit.runtime.stage_builder import StageModule, model_partition, stage_hooks, unit_span

__all__ = ["boundary_metas"]

_HOOKS_FIX = ("a block that takes more than the hidden state needs forward_block(model, block, "
              "hidden) in the model file; see docs/runtime.md, 'Stage forward'")


def boundary_metas(source: ModelSource, *, plan: Plan, stage_index: int, micro_batch: int,
                   boundary_dtype: torch.dtype | None, seed: int = 0,
                   ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Meta tensors of stage ``stage_index``'s inputs and outputs for one micro-batch.

    Floating-point tensors are marked as requiring gradients: activations carry gradients back
    across the boundary, and the pipeline reads that from these tensors."""
    model = build_on_meta(source)
    partition = model_partition(source, model, seq_len=plan.model.seq_len)
    hooks = stage_hooks(source)
    batch = step_batch(source, step=0, seed=seed, global_batch=micro_batch,
                       seq_len=plan.model.seq_len, replica=0, replicas=1)
    current: tuple[torch.Tensor, ...] = tuple(t.to("meta") for t in batch.inputs)
    stage_inputs = current
    for s in plan.stages[: stage_index + 1]:
        probe = StageModule(model, span=unit_span(partition, s.layer_start, s.layer_end),
                            hooks=hooks, path=source.path, block_list=partition.block_list,
                            post_all=partition.post, recompute=False,
                            is_last=s.layer_end == plan.model.num_layers)
        probe.compute_device = torch.device("meta")
        probe.boundary_dtype = boundary_dtype
        if s.index == stage_index:
            stage_inputs = current
        try:
            with torch.no_grad():
                out = probe(*current)
        except AutosplitError:
            raise
        except Exception as exc:  # noqa: BLE001 - the model file's forward may raise anything
            raise BadInputError(
                f"the forward of stage {s.index} (units {s.layer_start}-{s.layer_end - 1}) "
                f"failed on meta tensors: {describe_exception(exc, source.path)}",
                file=source.path, fix=_HOOKS_FIX) from None
        current = out if isinstance(out, tuple) else (out,)

    def mark(ts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(dense(t.detach()).requires_grad_(t.is_floating_point()) for t in ts)

    return mark(stage_inputs), mark(current)
