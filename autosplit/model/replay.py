"""Run one block of each kind on meta; the other blocks of that kind replay its output shape.

A 70B model has 80 identical blocks. Running all of them on meta tensors costs only shape
arithmetic, but that is still ~1 s of Python per forward pass. Identical blocks (same class,
structure and parameter shapes, see ``layer_kind``) given inputs of the same shapes produce
outputs of the same shapes, so while ingesting, every block after the first of its kind
returns fresh empty meta tensors shaped like that first output. Module hooks still fire, so
execution order and block inputs are observed exactly as in a full run.

Limit: a block whose output *shape* depends on something other than its class, parameters and
input shapes (e.g. a per-layer attribute that changes the output size) is not supported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["layer_kind", "replay_identical_blocks"]


def layer_kind(module: nn.Module) -> str:
    """Key shared by identical modules: the classes of the module tree and the names, shapes
    and dtypes of its parameters and buffers. Not ``repr``: it changes between PyTorch
    releases, and profiles measured on one machine must match ingestion on another."""
    cls = type(module)
    parts = [f"{cls.__module__}.{cls.__qualname__}"]
    parts.extend(f"{n}:{type(m).__qualname__}" for n, m in module.named_modules())
    parts.extend(f"{n}:{tuple(p.shape)}:{p.dtype}" for n, p in module.named_parameters())
    parts.extend(f"{n}:{tuple(b.shape)}:{b.dtype}" for n, b in module.named_buffers())
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]


def _signature(tree: Any) -> tuple[Any, ...]:
    leaves, spec = tree_flatten(tree)
    parts: list[Any] = [str(spec)]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append((tuple(leaf.shape), leaf.dtype, leaf.device.type, leaf.requires_grad))
        elif isinstance(leaf, (int, float, bool, str, type(None))):
            parts.append(leaf)
        else:
            parts.append(type(leaf).__qualname__)
    return tuple(parts)


@dataclass(frozen=True)
class _TensorShape:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool


def _template(x: Any) -> Any:
    if not isinstance(x, torch.Tensor):
        return x
    return _TensorShape(tuple(x.shape), tuple(x.stride()), x.dtype, x.requires_grad)


def _replay(x: Any) -> Any:
    if not isinstance(x, _TensorShape):
        return x
    out = torch.empty_strided(x.shape, x.stride, dtype=x.dtype, device="meta")
    if x.requires_grad and torch.is_grad_enabled():
        out.requires_grad_()
    return out


@contextmanager
def replay_identical_blocks(blocks: Sequence[nn.Module], kinds: Sequence[str] | None = None
                            ) -> Iterator[None]:
    """Within the context, only the first call per (kind, input shapes) really runs.

    Only calls whose tensors are all on the meta device are replayed.
    """
    kinds = list(kinds) if kinds is not None else [layer_kind(b) for b in blocks]
    templates: dict[tuple[str, tuple[Any, ...]], Any] = {}
    saved: list[tuple[nn.Module, Any]] = []

    def patch(block: nn.Module, kind: str) -> None:
        original = block.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            tensors = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
            if any(t.device.type != "meta" for t in tensors):
                return original(*args, **kwargs)
            key = (kind, _signature((args, kwargs)))
            if key in templates:
                return tree_map(_replay, templates[key])
            out = original(*args, **kwargs)
            templates[key] = tree_map(_template, out)
            return out

        saved.append((block, block.__dict__.get("forward")))
        block.forward = forward  # type: ignore[method-assign]

    for block, kind in zip(blocks, kinds, strict=True):
        patch(block, kind)
    try:
        yield
    finally:
        for block, previous in saved:
            if previous is None:
                del block.forward
            else:
                block.forward = previous  # type: ignore[method-assign]
