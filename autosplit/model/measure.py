"""Measure partition units on the meta device: FLOPs, saved activations and boundary tensors.

Everything runs on meta tensors, so a 70B model at sequence 4096 costs shape arithmetic only:
no memory and no kernels. These are counted while a region of the forward runs:

- FLOPs, with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions and
  attention; element-wise work is not counted). The backward is counted separately by running
  ``autograd.backward`` from the region's outputs under a second counter.
- Saved activations, with ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd
  keeps for the backward, once per storage (a tensor saved by two ops, or two views of one
  buffer, count once), leaving out parameters and buffers (weights, not activations) and, for
  a block, inputs that do not require grad (masks, rotary tables: built once and shared by
  every block).
- The kernels: GEMM shapes, fused attention calls and memory-bound traffic
  (``autosplit.model.kernels``), which the cost model prices one by one.
- Attention ops (softmax or a fused attention kernel, watched at the ATen level whatever API
  called them): they decide the tensor-parallel collective count. On the meta device PyTorch runs
  SDPA's unfused "math" path, which upcasts to fp32 and keeps the full a·s² score matrix;
  the GPUs we plan for run a fused kernel, so by default the call is routed to the fused
  (FlashAttention-style) ATen op by a ``TorchFunctionMode``; its saved tensors and FLOP formula
  match the fused kernel.

Regions: the part of the forward before the first block (``pre``) and after the last block,
including the loss (``post``), are metered inside one full forward pass by starting and
stopping the meters from module hooks; the tensors crossing the boundaries are replaced by
fresh leaves so that each backward stops at its unit. Each distinct block kind is measured
once, standalone, with the inputs (and keyword inputs) captured from that pass — those of the
second block of the kind, whose input is another block's output like that of every block but
the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import FlopCounterMode

from autosplit.errors import BadInputError
from autosplit.model.kernel_records import KernelCounts
from autosplit.model.kernels import KernelMeter
from autosplit.model.loader import Partition
from autosplit.model.replay import layer_kind, replay_identical_blocks
from autosplit.model.user_code import call_user

__all__ = ["UnitMeasure", "measure_units", "tensor_bytes"]


@dataclass(frozen=True)
class UnitMeasure:
    """What one partition unit costs per sample, as measured."""

    fwd_flops: float
    bwd_flops: float
    #: Bytes autograd keeps for the backward (deduplicated storages).
    activation_bytes: int
    #: Part of ``activation_bytes`` that is the unit's own input (kept, not newly written).
    saved_input_bytes: int
    input_bytes: int
    #: Bytes crossing a stage boundary right after the unit (0 after the last unit).
    output_bytes: int
    #: Bytes of the tensors the unit returns (written by the forward).
    written_bytes: int
    #: Calls to scaled_dot_product_attention or softmax in the forward.
    attention_calls: int
    #: The forward's GEMM shapes, fused attention calls and memory-bound traffic.
    kernels: KernelCounts = KernelCounts()


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Total bytes of distinct tensors (by identity)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


# --------------------------------------------------------------------------------------------
# Meters


def _storage_key(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage()._cdata)
    except (RuntimeError, NotImplementedError, AttributeError):
        return id(t)


def _storage_bytes(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError, AttributeError):
        return t.numel() * t.element_size()


#: ATen ops that mean "this region computes attention", whatever the Python-level API was
#: (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``, a hand-written softmax).
_ATTENTION_OPS = {
    torch.ops.aten._softmax.default,
    torch.ops.aten._safe_softmax.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _fused_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                is_causal: bool = False, scale: float | None = None,
                enable_gqa: bool = False) -> torch.Tensor | None:
    """The fused-kernel equivalent of SDPA, or ``None`` where it does not apply."""
    if attn_mask is not None or query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        return None
    if key.shape[1] != query.shape[1]:
        if not enable_gqa or query.shape[1] % key.shape[1]:
            return None
        repeat = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(repeat, dim=1)
        value = value.repeat_interleave(repeat, dim=1)
    if query.dtype in (torch.float16, torch.bfloat16):
        return torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, dropout_p, is_causal, False, scale=scale)[0]
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, None, True, dropout_p, is_causal, scale=scale)[0]


class _FusedAttentionMode(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` to the fused kernel where it applies."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            out = _fused_sdpa(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


class _AttentionWatch(TorchDispatchMode):
    """Counts attention ops (softmax or a fused attention kernel) at the ATen level."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        if func in _ATTENTION_OPS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


class _ForwardMeter:
    """FLOPs, saved tensors and attention calls between ``start()`` and ``stop()``."""

    def __init__(self, *, excluded: set[int], fused_attention: bool) -> None:
        self._kernels = KernelMeter(set(excluded))
        self._excluded = set(excluded)
        self._inputs: set[int] = set()
        self._saved: dict[int, int] = {}
        self._flops = FlopCounterMode(display=False)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._fused = _FusedAttentionMode() if fused_attention else None
        self._watch = _AttentionWatch()
        self.active = False

    def exclude(self, tensors: Iterable[torch.Tensor]) -> None:
        self._excluded.update(_storage_key(t) for t in tensors)

    def mark_inputs(self, tensors: Iterable[torch.Tensor]) -> None:
        self._inputs.update(_storage_key(t) for t in tensors)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self._excluded and key not in self._saved:
            self._saved[key] = _storage_bytes(t)
        return t

    def start(self) -> None:
        self._flops.__enter__()
        self._watch.__enter__()
        self._kernels.__enter__()
        self._hooks.__enter__()
        if self._fused is not None:
            self._fused.__enter__()
        self.active = True

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        if self._fused is not None:
            self._fused.__exit__(None, None, None)
        self._hooks.__exit__(None, None, None)
        self._kernels.__exit__(None, None, None)
        self._watch.__exit__(None, None, None)
        self._flops.__exit__(None, None, None)

    @property
    def flops(self) -> float:
        return float(self._flops.get_total_flops())

    @property
    def saved_bytes(self) -> int:
        return sum(self._saved.values())

    @property
    def saved_input_bytes(self) -> int:
        return sum(b for k, b in self._saved.items() if k in self._inputs)

    @property
    def attention_calls(self) -> int:
        return self._watch.calls

    @property
    def kernels(self) -> KernelCounts:
        return self._kernels.counts()


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


# --------------------------------------------------------------------------------------------
# Boundaries


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _boundary(tree: Any) -> list[torch.Tensor]:
    """Tensors that carry gradient across a unit boundary (floating point, requiring grad)."""
    return [t for t in _tensors(tree) if t.is_floating_point() and t.requires_grad]


def _cut(tree: Any) -> Any:
    """Replace boundary tensors with fresh leaves, so a backward stops here."""
    return tree_map(lambda x: x.detach().requires_grad_() if isinstance(x, torch.Tensor)
                    and x.is_floating_point() and x.requires_grad else x, tree)


def _fresh(tree: Any) -> Any:
    """Detached copies keeping ``requires_grad`` (inputs for a standalone run)."""
    def one(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        y = x.detach()
        return y.requires_grad_() if x.requires_grad and x.is_floating_point() else y
    return tree_map(one, tree)


def _backward_flops(outputs: list[torch.Tensor], *, path: str, what: str) -> float:
    if not outputs:
        return 0.0
    with FlopCounterMode(display=False) as counter:
        call_user(torch.autograd.backward, outputs, [torch.ones_like(t) for t in outputs],
                  path=path, what=f"the backward of {what} on meta tensors",
                  fix="use operations that PyTorch can differentiate on the meta device")
    return float(counter.get_total_flops())


# --------------------------------------------------------------------------------------------
# The pass


@dataclass
class _PassState:
    started_blocks: bool = False
    finished_blocks: int = 0
    pre: UnitMeasure | None = None
    post_input_bytes: int = 0


def _measure_block(block: nn.Module, args: tuple, kwargs: dict, *, excluded: set[int],
                   fused_attention: bool, path: str) -> UnitMeasure:
    args, kwargs = _fresh((args, kwargs))
    inputs = _boundary((args, kwargs))
    meter = _ForwardMeter(excluded=excluded, fused_attention=fused_attention)
    meter.exclude(t for t in _tensors((args, kwargs)) if not t.requires_grad)
    meter.mark_inputs(inputs)
    meter.start()
    try:
        out = call_user(block, *args, path=path, what=f"{type(block).__name__}.forward",
                        fix="blocks must run on meta tensors", **kwargs)
    finally:
        meter.stop()
    outputs = _boundary(out)
    bwd_flops = _backward_flops(outputs, path=path, what=type(block).__name__)
    return UnitMeasure(fwd_flops=meter.flops, bwd_flops=bwd_flops,
                       activation_bytes=meter.saved_bytes,
                       saved_input_bytes=meter.saved_input_bytes,
                       input_bytes=tensor_bytes(inputs), output_bytes=tensor_bytes(outputs),
                       written_bytes=tensor_bytes(_tensors(out)),
                       attention_calls=meter.attention_calls, kernels=meter.kernels)


def measure_units(model: nn.Module, partition: Partition, inputs: tuple[Any, ...],
                  targets: Any, loss_fn: Callable[[Any, Any], torch.Tensor], *,
                  fused_attention: bool = True, path: str = "<model>"
                  ) -> tuple[dict[str, UnitMeasure], dict[str, str]]:
    """Measure every unit of ``partition``; returns ``(unit name -> measure, block -> kind)``.

    Blocks of one kind share one measurement. ``pre`` and ``post`` appear only if the
    partition has them; the loss is part of ``post``.
    """
    excluded = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    blocks = [model.get_submodule(name) for name in partition.blocks]
    kinds = {name: layer_kind(block) for name, block in zip(partition.blocks, blocks, strict=True)}
    first_of_kind: dict[str, str] = {}
    for name in partition.blocks:
        first_of_kind.setdefault(kinds[name], name)
    # Inputs of the second block of each kind (the first if it is alone): the second one's
    # input is another block's output, as for every block but the first, so it requires grad
    # even when nothing runs before the blocks.
    captured: dict[str, tuple[tuple, dict]] = {}
    seen: dict[str, int] = {}
    state = _PassState()
    pre_meter = _ForwardMeter(excluded=excluded, fused_attention=fused_attention)
    post_meter = _ForwardMeter(excluded=excluded, fused_attention=fused_attention)
    pre_meter.mark_inputs(_tensors(inputs))

    def on_start(name: str) -> Callable[..., Any]:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if not state.started_blocks:
                state.started_blocks = True
                pre_meter.stop()
                crossing = _boundary((args, kwargs))
                state.pre = UnitMeasure(
                    fwd_flops=pre_meter.flops,
                    bwd_flops=_backward_flops(crossing, path=path, what="pre"),
                    activation_bytes=pre_meter.saved_bytes,
                    saved_input_bytes=pre_meter.saved_input_bytes,
                    input_bytes=tensor_bytes(_tensors(inputs)),
                    output_bytes=tensor_bytes(crossing), written_bytes=tensor_bytes(crossing),
                    attention_calls=pre_meter.attention_calls, kernels=pre_meter.kernels)
                args, kwargs = _cut((args, kwargs))
            kind = kinds[name]
            seen[kind] = seen.get(kind, 0) + 1
            if seen[kind] <= 2:
                captured[kind] = (args, kwargs)
            return args, kwargs
        return hook

    def on_end(_m: nn.Module, _args: tuple, output: Any) -> Any:
        state.finished_blocks += 1
        if state.finished_blocks != len(blocks):
            return None
        output = _cut(output)
        crossing = _boundary(output)
        state.post_input_bytes = tensor_bytes(crossing)
        post_meter.mark_inputs(crossing)
        post_meter.start()
        return output

    handles = []
    for name, block in zip(partition.blocks, blocks, strict=True):
        handles.append(block.register_forward_pre_hook(on_start(name), with_kwargs=True))
        handles.append(block.register_forward_hook(on_end))
    pre_meter.start()
    try:
        with replay_identical_blocks(blocks, [kinds[n] for n in partition.blocks]):
            outputs = call_user(model, *inputs, path=path, what="the model's forward on meta "
                                "tensors", fix="the forward must run on any device: create "
                                "tensors with device=x.device and avoid .item() on activations")
        loss = call_user(loss_fn, outputs, targets, path=path, what="the loss",
                         fix="loss_fn(outputs, targets) must return a scalar tensor")
    finally:
        pre_meter.stop()
        post_meter.stop()
        for handle in handles:
            handle.remove()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise BadInputError("the loss is not a scalar tensor", file=path, field="loss_fn",
                            fix="loss_fn(outputs, targets) must return a scalar tensor")
    if state.pre is None or state.finished_blocks != len(blocks):
        raise BadInputError(f"the blocks of '{partition.block_list}' did not all run in the "
                            "forward", file=path, field="BLOCKS",
                            fix="every block of the block list must run once per forward")
    post_bwd = (_backward_flops([loss], path=path, what="post") if loss.requires_grad
                else 0.0)
    post = UnitMeasure(fwd_flops=post_meter.flops, bwd_flops=post_bwd,
                       activation_bytes=post_meter.saved_bytes,
                       saved_input_bytes=post_meter.saved_input_bytes,
                       input_bytes=state.post_input_bytes, output_bytes=0,
                       written_bytes=tensor_bytes(_tensors(outputs)) + tensor_bytes([loss]),
                       attention_calls=post_meter.attention_calls, kernels=post_meter.kernels)
    del outputs, loss
    by_kind: dict[str, UnitMeasure] = {}
    for kind, name in first_of_kind.items():
        args, kwargs = captured.pop(kind)
        by_kind[kind] = _measure_block(model.get_submodule(name), args, kwargs,
                                       excluded=excluded, fused_attention=fused_attention,
                                       path=path)
    for param in model.parameters():
        param.grad = None
    result = {name: by_kind[kinds[name]] for name in partition.blocks}
    if partition.pre:
        result["pre"] = state.pre
    if partition.post:
        result["post"] = post
    return result, kinds
