"""Where a non-finite value first appears in a stage's forward, found on the first step.

A loss that is NaN from the first step says nothing about its origin: a bad initial weight, a
buffer left uninitialised by ``to_empty``, a corrupted boundary activation, or one kernel. So
for the first step only, every module of the stage gets a forward hook that checks its output
(one device sync per module, hence not for every step). The first module in execution order
whose output is not finite — inner modules finish before their parents, so that is the
innermost culprit — is reported with the micro-batch it happened in and the largest magnitude
among its inputs: a finite, moderate input with a non-finite output points at the module's own
computation, a huge input at the stages before it. To tell the module's own computation
apart further, the report says whether its parameters are finite at that moment and whether
running it again on the same input (no gradient) gives a finite output: a deterministic fault
(bad weights or values) repeats, a transient one (a kernel or memory race) does not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from autosplit.runtime.tensor_parallel import local

__all__ = ["FirstNonFinite", "nonfinite_tensors", "all_finite"]


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def all_finite(value: Any) -> bool:
    """Whether every floating-point tensor in ``value`` (nested tuples, lists, dicts) is
    finite."""
    return all(bool(torch.isfinite(local(t.detach())).all()) for t in _tensors(value))


def nonfinite_tensors(named: Any) -> list[str]:
    """Names of the tensors in ``(name, tensor)`` pairs that are not all finite (a
    tensor-parallel tensor by this rank's shard)."""
    return [name for name, t in named
            if t is not None and t.is_floating_point()
            and not bool(torch.isfinite(local(t)).all())]


def _largest(value: Any) -> float:
    finite = [local(t.detach())[torch.isfinite(local(t.detach()))] for t in _tensors(value)]
    return max((float(t.abs().max()) for t in finite if t.numel()), default=0.0)


class FirstNonFinite:
    """Forward hooks on ``root`` and all its modules while armed; ``found`` describes the
    first non-finite output (``None``: everything was finite)."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.found: str | None = None
        self._micro_batch = -1
        self._handles: list[RemovableHandle] = []

    def arm(self) -> None:
        self.disarm()
        self._micro_batch = -1
        self._handles.append(self.root.register_forward_pre_hook(self._count))
        for name, module in self.root.named_modules():
            if module is not self.root and not isinstance(module, nn.Identity):
                self._handles.append(module.register_forward_hook(
                    self._watcher(name.removeprefix("model."))))

    def disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _count(self, module: nn.Module, args: Any) -> None:
        self._micro_batch += 1
        if self.found is None and not all_finite(args):
            self.found = f"stage input of micro-batch {self._micro_batch} is not finite"

    def _watcher(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.found is not None or all_finite(output):
                return
            self.found = "(being examined)"  # the repeat below must not report itself
            params_ok = all_finite(tuple(module.parameters()))
            with torch.no_grad():
                again = "finite" if all_finite(module(*args)) else "not finite"
            self.found = (f"output of {name} ({type(module).__name__}) is not finite in "
                          f"micro-batch {self._micro_batch}; its inputs are "
                          f"{'finite' if all_finite(args) else 'not finite'} (largest finite "
                          f"|input| {_largest(args):.3g}), its parameters "
                          f"{'finite' if params_ok else 'not finite'}; run again on the same "
                          f"input it is {again}")
        return hook
