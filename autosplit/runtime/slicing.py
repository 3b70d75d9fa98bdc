"""A pipeline stage runs the slice of the model's own ``forward`` between its split points.

Users bring ordinary PyTorch models: the forward that loops over the blocks also computes what
the blocks need besides the hidden state — rotary tables, masks, position ids — and passes it
as extra (often keyword) arguments. Rather than asking for glue that re-creates those values
per stage, every stage calls the model's own forward on a *view* of the model in which each
partition unit's top-level modules are replaced according to who owns them:

- a unit of an **earlier** stage does not run: its modules return stand-ins, fake tensors
  (``torch._subclasses.fake_tensor``) with the right shape, dtype and device and no data,
  computed from a meta copy of the module. The model's inputs are stand-ins too on every
  stage but the first. Code between units runs as written, so everything computed from
  buffers, parameter-free modules and shapes (``self.rotary(tokens.shape[1], x.dtype)``,
  ``torch.arange(s, device=x.device)``, a causal-mask buffer) is recomputed for real on every
  stage, while anything computed from stand-ins stays a stand-in;
- the stage's **own** units run; the first of them gets the previous stage's output in place
  of its first argument (the hidden state, a tensor or a tuple of tensors). An owned unit
  called with any other stand-in argument is refused: that value depends on data only an
  earlier stage has;
- the first call into a unit of a **later** stage ends the forward; its first argument is
  the stage's output.

On the last stage the forward returns normally. Glue between two units therefore runs on
exactly one stage, the one that owns the unit it feeds, and the split is the model's own
computation: the same result as the unsplit model, for GPT, Llama (rotary tables, GQA), blocks
with extra keyword tensors and non-transformer models alike, with no hooks in the model file.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils.checkpoint import checkpoint

from autosplit.errors import BadInputError
from autosplit.model.loader import Partition

__all__ = ["StageSliceError", "StageSlice", "map_tensors"]

_FIX = ("compute values the blocks need (rotary tables, masks, position ids) inside the "
        "forward from buffers, parameter-free modules and tensor shapes, or pass them with the "
        "hidden state as a tuple; see docs/runtime.md, 'Stage forward'")


class StageSliceError(BadInputError):
    """A stage cannot be cut out of the model's forward (raised on the meta device by the
    launcher's checks, before any process starts)."""


class _StageEnd(BaseException):  # noqa: N818 - control flow, not an error
    """Ends the forward at the first unit of a later stage (a BaseException so that a model
    that catches ``Exception`` does not swallow it)."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


def map_tensors(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """``value`` with ``fn`` applied to every tensor in nested tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(map_tensors(fn, v) for v in value)
    if isinstance(value, list):
        return [map_tensors(fn, v) for v in value]
    if isinstance(value, dict):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    return value


def _has_fake(value: Any) -> bool:
    found: list[bool] = []
    map_tensors(lambda t: found.append(isinstance(t, FakeTensor)), value)
    return any(found)


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(tuple(t.shape), dtype=t.dtype, device="meta")


def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, str]:
    """A unit's hidden state: its first positional argument, else its first keyword one."""
    if args:
        return args[0], "argument 0"
    if kwargs:
        key = next(iter(kwargs))
        return kwargs[key], f"keyword argument '{key}'"
    return None, ""


@dataclass
class _Call:
    """State of one stage forward: the received boundary and whether it was used yet."""

    stage: int
    received: tuple[torch.Tensor, ...] | None = None
    used: bool = False
    mode: FakeTensorMode = field(default_factory=lambda: FakeTensorMode(
        allow_non_fake_inputs=True))
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def fake(self, t: torch.Tensor) -> torch.Tensor:
        with self.mode:
            return torch.empty(tuple(t.shape), dtype=t.dtype, device=self.device)

    def substitute(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                   ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The first owned unit's hidden state, replaced by the received boundary."""
        if self.received is None or self.used:
            return args, kwargs
        self.used = True
        hidden, where = _hidden(args, kwargs)
        if not _has_fake(hidden):
            raise StageSliceError(
                f"unit '{name}' starts stage {self.stage} but its {where or 'input'} does not "
                "come from the units before it, so the stage would not use the previous "
                "stage's output", fix="pass the previous block's output to the next block as "
                "its first argument")
        if isinstance(hidden, (tuple, list)):
            if len(hidden) != len(self.received):
                raise StageSliceError(
                    f"unit '{name}' of stage {self.stage} takes {len(hidden)} hidden tensors "
                    f"but the previous stage sends {len(self.received)}", fix=_FIX)
            value: Any = type(hidden)(self.received)
        else:
            value = self.received[0] if len(self.received) == 1 else self.received
        if args:
            return (value, *args[1:]), kwargs
        key = next(iter(kwargs))
        return args, {**kwargs, key: value}


def _intercepted(module: nn.Module, forward: Callable[..., Any]) -> nn.Module:
    """A shallow copy of ``module`` whose ``forward`` is ``forward``: its attributes,
    parameters, buffers and hooks are the original's (shared), so the model's code can read
    ``self.wpe.num_embeddings`` and hooks registered on the original still fire."""
    view = copy.copy(module)
    object.__setattr__(view, "forward", forward)
    return view


def _signature(value: Any) -> Any:
    """A hashable description of a call's arguments: shapes and dtypes of tensors, ``repr``
    of everything else (what a module's output shapes can depend on)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_signature(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _signature(v)) for k, v in value.items()))
    return repr(value)


def _upstream(meta_module: nn.Module, call: _Call) -> nn.Module:
    """A module of an earlier stage: returns stand-ins shaped like its output (worked out by
    its meta copy once per argument shapes, then reused: a stage late in a deep model passes
    through every earlier block on every micro-batch); its own parameters read as stand-ins
    too."""
    outputs: dict[Any, Any] = {}

    def forward(*args: Any, **kwargs: Any) -> Any:
        key = _signature((args, kwargs))
        if key not in outputs:
            meta_args, meta_kwargs = map_tensors(_meta, (args, kwargs))
            with torch.no_grad():
                out = meta_module(*meta_args, **meta_kwargs)
            outputs[key] = map_tensors(call.fake, out)
        return outputs[key]

    view = _intercepted(meta_module, forward)
    view._parameters = {k: None if v is None else call.fake(v)  # type: ignore[misc]
                        for k, v in meta_module._parameters.items()}
    return view


def _owned(module: nn.Module, *, name: str, call: _Call, recompute: bool) -> nn.Module:
    """One of the stage's own modules: takes the boundary if it comes first, refuses
    stand-in arguments, and recomputes (checkpoints) a block when the plan says so."""

    def refuse(what: str) -> None:
        raise StageSliceError(
            f"unit '{name}' of stage {call.stage} is called with {what} computed from values "
            "only earlier stages have (the model's inputs or the outputs of earlier units)",
            fix=_FIX)

    def forward(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = call.substitute(name, args, kwargs)
        for i, a in enumerate(args):
            if _has_fake(a):
                refuse(f"argument {i}")
        for key, v in kwargs.items():
            if _has_fake(v):
                refuse(f"keyword argument '{key}'")
        if recompute and torch.is_grad_enabled():
            return checkpoint(module.forward, *args, use_reentrant=False, **kwargs)
        return module.forward(*args, **kwargs)

    return _intercepted(module, forward)


def _downstream(module: nn.Module) -> nn.Module:
    """A module of a later stage: its first call ends the forward."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        raise _StageEnd(_hidden(args, kwargs)[0])

    return _intercepted(module, forward)


def _view(root: nn.Module, replacements: Mapping[str, Any]) -> nn.Module:
    """A shallow copy of ``root`` in which the named submodules (or parameters) are
    replaced; ``root`` is untouched and every other module and tensor is shared."""
    view = copy.copy(root)
    view._modules = dict(root._modules)
    copied = {id(view): view}
    for name, new in replacements.items():
        parts = name.split(".")
        holder = view
        for part in parts[:-1]:
            child = holder._modules[part]
            if id(child) not in copied:
                child = copy.copy(child)
                child._modules = dict(child._modules)
                holder._modules[part] = child
                copied[id(child)] = child
            holder = child
        attr = parts[-1]
        if isinstance(new, nn.Module):
            holder._modules[attr] = new
        else:  # a parameter of an earlier stage: a plain attribute holding its stand-in
            holder._parameters = dict(holder._parameters)
            holder._parameters.pop(attr, None)
            object.__setattr__(holder, attr, new)
    return view


class StageSlice:
    """Units ``[start, end)`` of ``model``, run through the model's own forward.

    ``model`` holds the stage's own modules (other units may be pruned away); ``foreign``
    maps the names of the other stages' modules and direct parameters that hold parameters
    to meta copies of them (the shapes of their outputs come from there). ``inputs`` are the model's
    inputs at this stage's micro-batch size (meta tensors are fine): stand-ins for them are
    passed to the forward on every stage but the first.
    """

    def __init__(self, model: nn.Module, *, partition: Partition, stage: int, start: int,
                 end: int, foreign: Mapping[str, nn.Module | torch.Tensor],
                 inputs: Sequence[Any], recompute: bool, device: torch.device) -> None:
        self.start, self.end = start, end
        self.num_units = len(partition.unit_modules())
        self._call = _Call(stage=stage, device=device)
        self._inputs = tuple(inputs)
        replacements: dict[str, Any] = {}
        for k, (_, kind, names) in enumerate(partition.unit_modules()):
            for name in names:
                meta = foreign.get(name)
                if k < start:
                    if isinstance(meta, nn.Module):
                        replacements[name] = _upstream(meta, self._call)
                    elif isinstance(meta, torch.Tensor):
                        replacements[name] = self._call.fake(meta)
                    # else: a module without parameters, which runs on every stage
                elif k < end:
                    replacements[name] = _owned(model.get_submodule(name), name=name,
                                                call=self._call,
                                                recompute=recompute and kind == "block")
                else:
                    base = meta if isinstance(meta, nn.Module) else model.get_submodule(name)
                    replacements[name] = _downstream(base)
        self._view = _view(model, replacements)

    def __call__(self, *inputs: Any) -> Any:
        call = self._call
        call.used = False
        if self.start == 0:
            call.received = None
            model_inputs = inputs
        else:
            call.received = tuple(inputs)
            model_inputs = map_tensors(call.fake, self._inputs)
        try:
            out = self._view(*model_inputs)
        except _StageEnd as end:
            out = end.value
        else:
            if self.end < self.num_units:
                raise StageSliceError(
                    f"the forward of stage {call.stage} returned without calling unit "
                    f"{self.end}, where the next stage starts", fix=_FIX)
        if self.start > 0 and not call.used:
            raise StageSliceError(f"stage {call.stage} never called one of its own units with "
                                  "the previous stage's output", fix=_FIX)
        if _has_fake(out):
            raise StageSliceError(
                f"the output of stage {call.stage} is computed from values only earlier "
                "stages have (the model's inputs or the outputs of earlier units)", fix=_FIX)
        return out
