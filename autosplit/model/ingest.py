"""Turn a user's ``model.py`` into a ``ModelProfile`` the planner can cost.

The model is built on the meta device in the training dtype and measured per partition unit
at micro-batch 1 (the cost model scales linearly with the micro-batch). Identical blocks are
measured once, so ingesting Llama-70B at sequence 4096 takes about a second and no memory.

Two figures are rules rather than measurements (see docs/model-files.md):

- ``fwd_bytes`` = input read + output written + saved tensors written (saved tensors that are
  the unit's own input are not written again).
- ``tp_collectives``: 2 for a block that calls attention (Megatron: one all-reduce after the
  attention output projection, one after the MLP), 1 for any other block (one
  column-then-row-parallel pair) and 1 for ``pre``/``post`` (vocab-parallel embedding, head).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autosplit.errors import BadInputError
from autosplit.model.loader import (
    DTYPES,
    ModelSource,
    Partition,
    build_on_meta,
    find_partition,
    load_model_source,
)
from autosplit.model.measure import UnitMeasure, measure_units
from autosplit.model.no_dynamo import without_dynamo_import
from autosplit.model.replay import layer_kind
from autosplit.model.types import LayerProfile, ModelProfile
from autosplit.model.user_code import call_user

__all__ = ["ingest_model", "model_fingerprint", "default_loss"]


def default_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dimension, computed in fp32 as mixed-precision training does."""
    return F.cross_entropy(outputs.flatten(0, -2).float(), targets.flatten())


def model_fingerprint(path: str, *, model_args: dict[str, str], seq_len: int,
                      dtype: str) -> str:
    """Stable hash of what decides the profile: file content, model args, seq_len, dtype."""
    digest = hashlib.sha256()
    digest.update(Path(path).read_bytes())
    digest.update(json.dumps({"model_args": dict(sorted(model_args.items())),
                              "seq_len": seq_len, "dtype": dtype}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _example_batch(source: ModelSource, seq_len: int, dtype: torch.dtype
                   ) -> tuple[tuple[Any, ...], Any]:
    fix = ("example_batch(batch_size, seq_len, device) must return (inputs tuple, targets) "
           "and create its tensors on `device`")
    batch = call_user(source.example_batch, 1, seq_len, torch.device("meta"), path=source.path,
                      what=f"example_batch(1, {seq_len}, meta)", fix=fix)
    if not isinstance(batch, tuple) or len(batch) != 2 or not isinstance(batch[0], tuple):
        raise BadInputError("example_batch must return a pair (inputs tuple, targets)",
                            file=source.path, field="example_batch", fix=fix)
    inputs, targets = batch

    def to_training(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        if x.device.type != "meta":
            raise BadInputError(f"example_batch made a tensor on {x.device}, not on the "
                                "device it was given", file=source.path, field="example_batch",
                                fix=fix)
        # Floating-point inputs (images) arrive in the training dtype, like the weights.
        return x.to(dtype) if x.is_floating_point() else x

    return tuple(to_training(x) for x in inputs), to_training(targets)


def _unit_params(model: nn.Module, names: tuple[str, ...]) -> tuple[int, int]:
    seen: dict[int, torch.Tensor] = {}
    for name in names:
        try:
            params = list(model.get_submodule(name).parameters())
        except AttributeError:
            params = [model.get_parameter(name)]
        for p in params:
            seen.setdefault(id(p), p)
    return (sum(p.numel() for p in seen.values()),
            sum(p.numel() * p.element_size() for p in seen.values()))


def _kind_of_group(model: nn.Module, names: tuple[str, ...], prefix: str) -> str:
    parts = []
    for name in names:
        try:
            parts.append(layer_kind(model.get_submodule(name)))
        except AttributeError:
            p = model.get_parameter(name)
            parts.append(f"{tuple(p.shape)}:{p.dtype}")
    return prefix + ":" + hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _profile(index: int, unit: tuple[str, str, tuple[str, ...]], measure: UnitMeasure, *,
             model: nn.Module, kind_key: str) -> LayerProfile:
    name, kind, modules = unit
    params, param_bytes = _unit_params(model, modules)
    # Rule, not measurement: see the module docstring.
    attention_block = kind == "block" and measure.attention_calls > 0
    collectives = 2 if attention_block else 1
    fwd_bytes = (measure.input_bytes + measure.written_bytes
                 + measure.activation_bytes - measure.saved_input_bytes)
    return LayerProfile(index=index, name=name, kind=kind, module_names=modules, params=params,
                        param_bytes=param_bytes, fwd_flops=measure.fwd_flops,
                        bwd_flops=measure.bwd_flops, fwd_bytes=float(fwd_bytes),
                        activation_bytes=float(measure.activation_bytes),
                        input_bytes=float(measure.input_bytes),
                        output_bytes=float(measure.output_bytes), tp_collectives=collectives,
                        layer_kind=kind_key, kernels=measure.kernels)


def _check_options(path: str, seq_len: int, dtype: str) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise BadInputError(f"sequence length must be a positive integer, got {seq_len!r}",
                            file=path, field="seq_len", fix="pass --seq-len 2048 (for example)")
    if dtype not in DTYPES:
        raise BadInputError(f"unknown training dtype {dtype!r}", file=path, field="dtype",
                            fix="use one of: " + ", ".join(DTYPES))


def ingest_model(path: str, *, model_args: dict[str, str] | None = None, seq_len: int,
                 dtype: str = "bf16", fused_attention: bool = True) -> ModelProfile:
    """Load, build on meta and measure ``path``; one ``LayerProfile`` per partition unit.

    ``fused_attention=False`` accounts attention as PyTorch's unfused path (the a·s² score
    matrix is kept for the backward) instead of a FlashAttention-style kernel.
    """
    path = str(path)
    model_args = {str(k): str(v) for k, v in (model_args or {}).items()}
    _check_options(path, seq_len, dtype)
    source = load_model_source(path, model_args)
    torch_dtype = DTYPES[dtype]
    with without_dynamo_import():
        model = build_on_meta(source, dtype=torch_dtype)
        inputs, targets = _example_batch(source, seq_len, torch_dtype)
        partition = find_partition(model, source.blocks_attr, inputs=inputs, path=path)
        loss_fn: Callable[[Any, Any], torch.Tensor] = source.loss_fn or default_loss
        measures, kinds = measure_units(model, partition, inputs, targets, loss_fn,
                                        fused_attention=fused_attention, path=path)
    layers = tuple(
        _profile(index, unit, measures[unit[0]], model=model,
                 kind_key=_unit_kind(model, partition, unit, kinds))
        for index, unit in enumerate(partition.unit_modules()))
    if sum(layer.params for layer in layers) == 0:
        raise BadInputError("build_model returned a model without parameters: there is nothing "
                            "to train, so no split to search", file=path, field="build_model",
                            fix="return the nn.Module whose weights are trained (parameters "
                                "registered as nn.Parameter or in submodules)")
    tokens = source.tokens_per_sample if source.tokens_per_sample is not None else seq_len
    return ModelProfile(name=source.name, source_file=path, layers=layers, seq_len=seq_len,
                        dtype=dtype, tokens_per_sample=tokens, block_list=partition.block_list,
                        model_args=dict(sorted(model_args.items())),
                        fingerprint=model_fingerprint(path, model_args=model_args,
                                                      seq_len=seq_len, dtype=dtype))


def _unit_kind(model: nn.Module, partition: Partition, unit: tuple[str, str, tuple[str, ...]],
               kinds: dict[str, str]) -> str:
    name, kind, modules = unit
    if kind == "block":
        return kinds[name]
    return _kind_of_group(model, modules, kind)
