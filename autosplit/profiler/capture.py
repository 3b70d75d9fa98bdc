"""Run the whole model once and keep the real inputs each profiled unit receives.

Timing a block in isolation needs exactly the arguments the model's own forward passes it —
the hidden state, but also rotary tables, masks, position ids, in whatever positional or
keyword form the user's code chose. Rather than guess them, the profiler runs one forward
(no gradients) with hooks on the first block of each distinct kind, on the modules before and
after the block list, and on every Linear inside the profiled units, and keeps detached copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["LinearShape", "UnitCapture", "ModelCapture", "capture_forward", "detach_tree",
           "first_float_tensor"]


@dataclass(frozen=True)
class LinearShape:
    """One ``nn.Linear`` call: rows (tokens) × ``in_features`` → ``out_features``."""

    rows: int
    in_features: int
    out_features: int
    bias: bool


@dataclass
class UnitCapture:
    """What the first module of a unit received, and the Linear calls made inside the unit."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    linears: list[LinearShape] = field(default_factory=list)


@dataclass
class ModelCapture:
    """Everything one forward revealed."""

    units: dict[str, UnitCapture]
    #: Modules (of ``pre``/``post``) that ran, in the order they started.
    ran: list[str]
    output: Any


def detach_tree(value: Any) -> Any:
    """A copy of ``value`` with every tensor detached and cloned (containers kept)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(detach_tree(v) for v in value)
    if isinstance(value, list):
        return [detach_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: detach_tree(v) for k, v in value.items()}
    return value


def first_float_tensor(value: Any) -> torch.Tensor | None:
    """The first floating-point tensor in a (nested) output or argument list."""
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else None
    if isinstance(value, (tuple, list)):
        for v in value:
            found = first_float_tensor(v)
            if found is not None:
                return found
    if isinstance(value, dict):
        for v in value.values():
            found = first_float_tensor(v)
            if found is not None:
                return found
    return None


def capture_forward(model: nn.Module, *, inputs: tuple[Any, ...],
                    unit_modules: dict[str, Sequence[str]],
                    side_modules: Sequence[str]) -> ModelCapture:
    """Run ``model(*inputs)`` once without gradients, capturing per-unit inputs.

    ``unit_modules`` maps each unit to profile to its module names; the inputs of the unit's
    first module and every Linear call under its modules are captured. ``side_modules`` are
    the pre/post modules whose execution order is recorded.
    """
    captures = {unit: UnitCapture() for unit in unit_modules}
    ran: list[str] = []
    handles = []

    def on_first(unit: str):
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            cap = captures[unit]
            if not cap.args and not cap.kwargs:
                cap.args = detach_tree(args)
                cap.kwargs = detach_tree(kwargs)
        return hook

    def on_linear(unit: str):
        def hook(m: nn.Linear, args: tuple[Any, ...], _out: Any) -> None:
            x = args[0]
            rows = x.numel() // max(x.shape[-1], 1)
            captures[unit].linears.append(LinearShape(rows=rows, in_features=m.in_features,
                                                      out_features=m.out_features,
                                                      bias=m.bias is not None))
        return hook

    def on_run(name: str):
        def hook(_m: nn.Module, _args: tuple[Any, ...]) -> None:
            if name not in ran:
                ran.append(name)
        return hook

    try:
        for unit, names in unit_modules.items():
            first = _submodule(model, names[0]) if names else None
            if first is not None:
                handles.append(first.register_forward_pre_hook(on_first(unit),
                                                                with_kwargs=True))
            for name in names:
                module = _submodule(model, name)
                if module is None:
                    continue
                for sub in module.modules():
                    if isinstance(sub, nn.Linear):
                        handles.append(sub.register_forward_hook(on_linear(unit)))
        for name in side_modules:
            module = _submodule(model, name)
            if module is not None:
                handles.append(module.register_forward_pre_hook(on_run(name)))
        with torch.no_grad():
            output = model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return ModelCapture(units=captures, ran=ran, output=detach_tree(output))


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None
