"""Tensor parallelism inside a stage, with PyTorch's own API (``parallelize_module``,
DTensor, ``DeviceMesh``).

Which layers are split comes from the model itself, or from an optional plan in the model
file:

- **Found automatically** (the default): a meta forward records the order in which each
  block calls its ``nn.Linear`` layers. Inside every module that holds two or more of them
  (an attention, an MLP), the last one called is **row-parallel** and the ones before it are
  **column-parallel** — Megatron-LM's pairing (Shoeybi et al. 2019, arXiv 1909.08053): q, k,
  v (or a fused qkv) then the output projection; the MLP's up (and gate) then down
  projection. Each pair needs one all-reduce forward and one backward, as the cost model
  counts.
- **Declared**: ``TP_PLAN = {"attn.qkv": "colwise", "attn.proj": "rowwise", ...}`` in the
  model file names the layers of every block (paths inside a block) and their style; it
  replaces the automatic pairing.

Outside the blocks, an ``nn.Embedding`` of ``pre`` whose rows divide by the degree is
vocabulary-parallel and the last ``nn.Linear`` of ``post`` (the head) column-parallel with its
output gathered, where its outputs divide; everything else (norms, a head that does not
divide) is replicated on every tensor-parallel rank, where its gradients come out identical.

A split attention only works if the model derives its head count from tensor shapes
(``view(b, s, -1, head_dim)``) and lays a fused projection out per head. Before any process
starts every split block runs once on the meta device with weights of the local shape
(``check_tp_stage``): a block that hard-codes its head count or does not divide fails there,
with its name, instead of on a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autosplit.errors import BadInputError
from autosplit.model.loader import ModelSource, Partition
from autosplit.model.user_code import call_user, describe_exception

if TYPE_CHECKING:  # imported where used: DTensor's import costs seconds, TP is the exception
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor.parallel import ParallelStyle

__all__ = ["TP_STYLES", "ModelCalls", "record_calls", "tp_styles", "check_tp_stage",
           "apply_tp", "local", "is_sharded"]

#: colwise/rowwise: a block's Linear layers; vocab: an embedding split by rows (vocabulary);
#: head: the output Linear split by columns, its output gathered.
TP_STYLES: tuple[str, ...] = ("colwise", "rowwise", "vocab", "head")

_DECLARED = ("colwise", "rowwise")


@dataclass(frozen=True)
class ModelCalls:
    """What one meta forward saw: the Linear layers in call order, and every block's
    arguments and output shape (meta tensors)."""

    linears: tuple[str, ...]
    block_inputs: dict[str, tuple[tuple[Any, ...], dict[str, Any]]]
    block_outputs: dict[str, Any]


def record_calls(model: nn.Module, partition: Partition, inputs: tuple[Any, ...], *,
                 path: str) -> ModelCalls:
    """Run ``model`` (on meta) once and record its Linear calls and block inputs."""
    order: list[str] = []
    block_inputs: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    block_outputs: dict[str, Any] = {}
    handles = []
    blocks = set(partition.blocks)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(
                lambda _m, _a, name=name: order.append(name) if name not in order else None))
        if name in blocks:
            handles.append(module.register_forward_pre_hook(
                lambda _m, a, k, name=name: block_inputs.setdefault(name, (a, k)),
                with_kwargs=True))
            handles.append(module.register_forward_hook(
                lambda _m, _a, out, name=name: block_outputs.setdefault(name, out)))
    try:
        with torch.no_grad():
            call_user(model, *inputs, path=path, what="the model's forward on meta tensors",
                      fix="the forward must run on the meta device")
    finally:
        for h in handles:
            h.remove()
    return ModelCalls(tuple(order), block_inputs, block_outputs)


def _declared_plan(source: ModelSource) -> dict[str, str] | None:
    namespace: dict[str, Any] = getattr(source.build_model, "__globals__", {})
    plan = namespace.get("TP_PLAN")
    if plan is None:
        return None
    if not isinstance(plan, Mapping) or not all(
            isinstance(k, str) and v in _DECLARED for k, v in plan.items()):
        raise BadInputError("TP_PLAN must map module paths inside a block to 'colwise' or "
                            "'rowwise'", file=source.path, field="TP_PLAN",
                            fix='e.g. TP_PLAN = {"attn.qkv": "colwise", "attn.proj": "rowwise"}')
    return dict(plan)


def _block_styles(block: str, calls: ModelCalls) -> dict[str, str]:
    """Megatron's pairing inside one block: per parent module, the Linear layers in call
    order, the last row-parallel, the others column-parallel."""
    by_parent: dict[str, list[str]] = {}
    for name in calls.linears:
        if name.startswith(block + "."):
            by_parent.setdefault(name.rpartition(".")[0], []).append(name)
    styles: dict[str, str] = {}
    for names in by_parent.values():
        if len(names) >= 2:
            styles.update({n: "colwise" for n in names[:-1]})
            styles[names[-1]] = "rowwise"
    return styles


def tp_styles(source: ModelSource, model: nn.Module, partition: Partition, calls: ModelCalls,
              *, start: int, end: int, tp: int) -> dict[str, str]:
    """The style of every split module of units ``[start, end)`` at degree ``tp``; refuses
    a block with nothing to split."""
    declared = _declared_plan(source)
    styles: dict[str, str] = {}
    for _, kind, names in partition.unit_modules()[start:end]:
        for name in names:
            if kind == "block":
                styles.update(_styles_of_block(source, model, name, calls, declared))
            elif kind == "pre":
                styles.update(_vocab_styles(model, name, tp))
        if kind == "post":
            head = [n for n in calls.linears if any(n == m or n.startswith(m + ".")
                                                    for m in names)]
            if head and model.get_submodule(head[-1]).out_features % tp == 0:
                styles[head[-1]] = "head"
    return styles


def _styles_of_block(source: ModelSource, model: nn.Module, block: str, calls: ModelCalls,
                     declared: dict[str, str] | None) -> dict[str, str]:
    if declared is not None:
        styles = {f"{block}.{path}": style for path, style in declared.items()}
        for name in styles:
            try:
                layer = model.get_submodule(name)
            except AttributeError:
                layer = None
            if not isinstance(layer, nn.Linear):
                raise BadInputError(f"TP_PLAN names '{name.removeprefix(block + '.')}', which "
                                    f"is not an nn.Linear of block '{block}'", file=source.path,
                                    field="TP_PLAN", fix="name Linear layers inside a block")
        return styles
    styles = _block_styles(block, calls)
    if not styles:
        kind = type(model.get_submodule(block)).__name__
        raise BadInputError(
            f"block '{block}' ({kind}) has no module with two or more nn.Linear layers to "
            "split column- then row-parallel, so it cannot be tensor-parallel",
            file=source.path, field="TP_PLAN",
            fix="search with --tp 1, or declare TP_PLAN in the model file (see "
                "docs/runtime.md, 'Tensor parallelism')")
    return styles


def _vocab_styles(model: nn.Module, name: str, tp: int) -> dict[str, str]:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return {}  # a parameter held directly: replicated
    return {f"{name}.{n}" if n else name: "vocab" for n, m in module.named_modules()
            if isinstance(m, nn.Embedding) and m.num_embeddings % tp == 0}


def _local_shapes(layer: nn.Linear, style: str, tp: int) -> dict[str, tuple[int, ...]]:
    out, inp = layer.weight.shape
    if style == "colwise":
        shapes = {"weight": (out // tp, inp), "bias": (out // tp,)}
    else:
        shapes = {"weight": (out, inp // tp), "bias": (out,)}
    return {k: v for k, v in shapes.items() if getattr(layer, k, None) is not None}


def check_tp_stage(source: ModelSource, model: nn.Module, calls: ModelCalls,
                   styles: Mapping[str, str], *, blocks: list[str], tp: int, stage: int) -> None:
    """Each block of the stage runs on meta with its split layers at their local shapes and
    gives the unsplit output shape; otherwise the block is refused, named."""
    for name, style in styles.items():
        if style not in ("colwise", "rowwise"):
            continue
        layer = model.get_submodule(name)
        size = layer.out_features if style == "colwise" else layer.in_features
        if size % tp:
            raise BadInputError(
                f"stage {stage}: '{name}' has {size} {'output' if style == 'colwise' else 'input'}"
                f" features, which do not split over {tp} tensor-parallel ranks",
                file=source.path, fix="use a tensor-parallel degree that divides the layer")
    for block in blocks:
        args, kwargs = calls.block_inputs[block]
        swapped: list[tuple[nn.Module, str, Any]] = []
        try:
            for name, style in styles.items():
                if not name.startswith(block + ".") or style not in ("colwise", "rowwise"):
                    continue
                layer = model.get_submodule(name)
                for attr, shape in _local_shapes(layer, style, tp).items():
                    swapped.append((layer, attr, layer._parameters[attr]))
                    layer._parameters[attr] = nn.Parameter(
                        torch.empty(shape, dtype=layer.weight.dtype, device="meta"))
            try:
                with torch.no_grad():
                    out = model.get_submodule(block)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the model's own forward
                raise BadInputError(
                    f"stage {stage}: block '{block}' fails with its layers split over {tp} "
                    f"tensor-parallel ranks: {describe_exception(exc, source.path)}",
                    file=source.path,
                    fix="derive head counts from tensor shapes (e.g. view(b, s, -1, head_dim)) "
                        "and lay fused projections out per head, or search with --tp 1 "
                        "(docs/model-files.md)") from None
            want = calls.block_outputs[block]
            if _shapes(out) != _shapes(want):
                raise BadInputError(
                    f"stage {stage}: block '{block}' returns {_shapes(out)} with its layers "
                    f"split over {tp} ranks instead of {_shapes(want)}", file=source.path,
                    fix="derive head counts from tensor shapes (e.g. view(b, s, -1, "
                        "head_dim)); see docs/model-files.md")
        finally:
            for layer, attr, param in reversed(swapped):
                layer._parameters[attr] = param


def _shapes(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(v) for v in value)
    return None


def _style(name: str) -> ParallelStyle:
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    if name == "colwise":
        return ColwiseParallel()
    if name == "rowwise":
        return RowwiseParallel()
    if name == "vocab":
        return RowwiseParallel(input_layouts=Replicate())
    return ColwiseParallel(output_layouts=Replicate())


def apply_tp(model: nn.Module, styles: Mapping[str, str], mesh: DeviceMesh) -> None:
    """Split ``model``'s named modules over ``mesh`` (every rank holds the same full values
    before, its shard after)."""
    from torch.distributed.tensor.parallel import parallelize_module

    present = {n for n, _ in model.named_modules()}
    plan = {name: _style(style) for name, style in styles.items() if name in present}
    if plan:
        parallelize_module(model, mesh, plan)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t`` (the tensor itself unless it is a DTensor)."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a DTensor split over its tensor-parallel ranks (not a replicated
    copy)."""
    return any(not p.is_replicate() for p in getattr(t, "placements", ()))
