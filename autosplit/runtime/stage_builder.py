"""Build one pipeline stage, and only that stage, from the user's model file.

A rank of a 70B run cannot afford the whole model, so every rank builds the model on the meta
device, keeps the partition units its stage owns (the rest are dropped before any memory is
allocated), materialises the survivors and initialises them deterministically: every module is
initialised from a generator seeded with its fully qualified name, on the CPU, so a parameter
gets the same values whichever stage owns it and whether or not the model is split. That is
what lets a split run be checked against single-process training of the unsplit model.

The stage's forward calls the owned units in order. How a unit is called comes from the model
file (see docs/runtime.md, "Stage forward"); every hook is optional:

- ``forward_pre(model, *inputs) -> hidden`` runs the units before the block list. Default: the
  model's own ``forward`` on a view of the model whose block list is empty and whose post
  modules are identities, which is right for any model that loops ``for block in blocks``.
- ``forward_block(model, block, hidden) -> hidden`` runs one block. Default: ``block(hidden)``.
  Blocks that take extra arguments (rotary tables, masks) re-create them here from ``model``
  and ``hidden``.
- ``forward_post(model, hidden) -> outputs`` runs the units after the blocks. Default: the
  post modules called one after the other.
- ``init_weights(module, name)`` initialises the parameters a module holds directly. Default:
  ``module.reset_parameters()`` where the module has it, else N(0, 0.02) for matrices, ones
  for 1-D ``weight`` and zeros for other vectors.

Modules without parameters (a rotary-table helper, say) are kept on every stage, since blocks
may need them. Buffers (masks, rotary tables) are not parameters and ``to_empty`` leaves them
undefined, so they are recomputed by constructing the model once more with its parameters sent
to meta as they are registered (cheap: their storage is never touched) and copying the
buffers the stage kept.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from autosplit.errors import BadInputError
from autosplit.model.loader import ModelSource, Partition, build_on_meta, find_partition
from autosplit.model.user_code import call_user
from autosplit.runtime.outputs import record_saved_storages

__all__ = ["StageHooks", "StageModule", "UnitSpan", "stage_hooks", "build_stage",
           "model_partition", "unit_span", "name_seed"]


@dataclass(frozen=True)
class StageHooks:
    """The model file's stage-forward hooks; ``None`` means "use the default"."""

    forward_pre: Callable[..., Any] | None
    forward_block: Callable[..., Any] | None
    forward_post: Callable[..., Any] | None
    init_weights: Callable[..., Any] | None


@dataclass(frozen=True)
class UnitSpan:
    """What one stage owns, resolved against the model's partition."""

    pre: tuple[str, ...]
    blocks: tuple[str, ...]
    post: tuple[str, ...]

    @property
    def modules(self) -> tuple[str, ...]:
        return self.pre + self.blocks + self.post


def stage_hooks(source: ModelSource) -> StageHooks:
    """Read the optional hooks from the model file's namespace."""
    namespace: dict[str, Any] = getattr(source.build_model, "__globals__", {})

    def _get(name: str) -> Callable[..., Any] | None:
        fn = namespace.get(name)
        if fn is not None and not callable(fn):
            raise BadInputError(f"'{name}' is defined but is not a function", file=source.path,
                                fix=f"define {name} as a function (see docs/runtime.md)")
        return fn

    return StageHooks(_get("forward_pre"), _get("forward_block"), _get("forward_post"),
                      _get("init_weights"))


def model_partition(source: ModelSource, model: nn.Module, *, seq_len: int) -> Partition:
    """The model's partition units, found exactly as ingestion finds them (by running the
    forward once on meta inputs), so unit indices in the plan mean the same modules here."""
    batch = call_user(source.example_batch, 1, seq_len, torch.device("meta"), path=source.path,
                      what=f"example_batch(1, {seq_len}, meta)",
                      fix="example_batch(batch_size, seq_len, device) must return "
                          "(inputs tuple, targets) on `device`")
    inputs = batch[0] if isinstance(batch, tuple) and len(batch) == 2 else None
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    return find_partition(model, source.blocks_attr, inputs=inputs, path=source.path)


def unit_span(partition: Partition, start: int, end: int) -> UnitSpan:
    """The modules of partition units ``[start, end)``, split into pre/blocks/post."""
    units = partition.unit_modules()[start:end]
    pre = tuple(m for _, kind, mods in units if kind == "pre" for m in mods)
    blocks = tuple(m for _, kind, mods in units if kind == "block" for m in mods)
    post = tuple(m for _, kind, mods in units if kind == "post" for m in mods)
    return UnitSpan(pre, blocks, post)


def name_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed for one module, independent of the process and the split."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ---- pruning ----------------------------------------------------------------------------

def _parent_and_attr(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    return parent, attr


def _drop_module(root: nn.Module, name: str) -> None:
    """Remove a module (or a parameter the model holds directly) from the tree while keeping
    every other name stable."""
    parent, attr = _parent_and_attr(root, name)
    if attr in parent._parameters:
        parent._parameters[attr] = None
    elif isinstance(parent, (nn.ModuleList, nn.Sequential)):
        parent[int(attr)] = nn.Identity()
    else:
        parent._modules[attr] = None


def _holds_parameters(root: nn.Module, name: str) -> bool:
    """Parameter-less helpers (a rotary table, say) cost nothing and blocks may need them on
    every stage, so only modules holding parameters are dropped."""
    parent, attr = _parent_and_attr(root, name)
    if attr in parent._parameters:
        return True
    return any(True for _ in root.get_submodule(name).parameters())


def _with_replaced(root: nn.Module, replacements: dict[str, nn.Module]) -> nn.Module:
    """A shallow view of ``root`` where the named submodules are swapped; ``root`` is left
    untouched and parameters are shared, not copied."""
    view = copy.copy(root)
    view._modules = dict(root._modules)
    for name, new in replacements.items():
        parts = name.split(".")
        holder = view
        for part in parts[:-1]:
            child = copy.copy(holder._modules[part])
            child._modules = dict(child._modules)
            holder._modules[part] = child
            holder = child
        holder._modules[parts[-1]] = new
    return view


# ---- initialisation -----------------------------------------------------------------------

def _default_init(module: nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    for pname, param in module.named_parameters(recurse=False):
        with torch.no_grad():
            if param.dim() >= 2:
                nn.init.normal_(param, mean=0.0, std=0.02)
            elif pname == "weight":
                nn.init.ones_(param)
            else:
                nn.init.zeros_(param)


def _initialise(model: nn.Module, *, seed: int, hooks: StageHooks, path: str) -> None:
    """Initialise every module that holds parameters directly, each from its own seed."""
    for name, module in sorted(model.named_modules(), key=lambda item: item[0]):
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        torch.manual_seed(name_seed(seed, name))
        if hooks.init_weights is not None:
            call_user(hooks.init_weights, module, name, path=path,
                      what=f"init_weights(module, '{name}')",
                      fix="init_weights(module, name) must initialise module's own parameters")
        else:
            _default_init(module)


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Construct modules with real buffers but meta parameters.

    Parameters are moved to meta as they are registered and ``nn.init`` is a no-op meanwhile,
    so the transient host allocations are never written (the kernel never backs them)."""
    original_register = nn.Module.register_parameter
    init_names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    originals = {n: getattr(nn.init, n) for n in init_names}

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original_register(self, name, param)
        if param is not None and not param.is_meta:
            p = self._parameters[name]
            self._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    def _noop(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    for n in init_names:
        setattr(nn.init, n, _noop)
    try:
        yield
    finally:
        nn.Module.register_parameter = original_register  # type: ignore[method-assign]
        for n, fn in originals.items():
            setattr(nn.init, n, fn)


def _restore_buffers(stage_model: nn.Module, source: ModelSource) -> None:
    """Copy real buffer values into the materialised stage (see module docstring)."""
    wanted = dict(stage_model.named_buffers())
    if not wanted:
        return
    with _parameters_on_meta():
        full = call_user(source.build_model, **source.model_args, path=source.path,
                         what="build_model()", fix="build_model must build the model")
    real = dict(full.named_buffers())
    with torch.no_grad():
        for name, buf in wanted.items():
            value = real.get(name)
            if value is None or value.is_meta or value.shape != buf.shape:
                # to_empty left it uninitialised: garbage (or NaN) on this stage only.
                raise BadInputError(
                    f"buffer '{name}' could not be recomputed for a pipeline stage (building "
                    "the model again did not give it a value of the same shape)",
                    file=source.path,
                    fix="create buffers with their final shape in __init__ from the model "
                        "arguments alone, or compute them in the forward")
            buf.copy_(value.to(buf.dtype))


# ---- the stage module ---------------------------------------------------------------------

class StageModule(nn.Module):
    """Runs the units one stage owns, in order.

    ``model`` is the user's model with every non-owned unit removed, so parameter names are
    the unsplit model's names. Float outputs are cast to ``boundary_dtype`` (what crosses the
    stage boundary), inputs are moved to ``compute_device`` and outputs to ``send_device``:
    with the CPU relay the pipeline exchanges host tensors while the stage computes on a GPU.
    """

    def __init__(self, model: nn.Module, *, span: UnitSpan, hooks: StageHooks, path: str,
                 block_list: str, post_all: Sequence[str], recompute: bool,
                 is_last: bool) -> None:
        super().__init__()
        self.model = model
        self.span = span
        self.hooks = hooks
        self.path = path
        self.recompute = recompute
        self.is_last = is_last
        self.compute_device = torch.device("cpu")
        self.send_device: torch.device | None = None
        self.boundary_dtype: torch.dtype | None = None
        self.autocast_dtype: torch.dtype | None = None
        #: When a set: the storages of the tensors the last forward saved for its backward
        #: (the last stage's loss frees outputs that none of them shares).
        self.saved_storages: set[int | None] | None = None
        # A view for the default pre forward: the model's own forward, no blocks, no post.
        replacements: dict[str, nn.Module] = {block_list: nn.ModuleList()}
        replacements.update({name: nn.Identity() for name in post_all})
        object.__setattr__(self, "_pre_view", _with_replaced(model, replacements)
                           if span.pre and hooks.forward_pre is None else None)

    # The user's hooks run under call_user only at build time; at run time they run bare so
    # autograd and the pipeline see ordinary tensors (errors there are real bugs).
    def _run_pre(self, *inputs: Any) -> Any:
        if self.hooks.forward_pre is not None:
            return self.hooks.forward_pre(self.model, *inputs)
        return self._pre_view(*inputs)

    def _run_block(self, name: str, hidden: Any) -> Any:
        block = self.model.get_submodule(name)
        if self.hooks.forward_block is not None:
            return self.hooks.forward_block(self.model, block, hidden)
        return block(hidden)

    def _run_post(self, hidden: Any) -> Any:
        if self.hooks.forward_post is not None:
            return self.hooks.forward_post(self.model, hidden)
        for name in self.span.post:
            hidden = self.model.get_submodule(name)(hidden)
        return hidden

    def _compute(self, *inputs: Any) -> Any:
        if self.span.pre:
            hidden = self._run_pre(*inputs)
        else:
            hidden = inputs[0] if len(inputs) == 1 else inputs
        for name in self.span.blocks:
            if self.recompute and torch.is_grad_enabled():
                hidden = checkpoint(self._run_block, name, hidden, use_reentrant=False)
            else:
                hidden = self._run_block(name, hidden)
        if self.span.post:
            hidden = self._run_post(hidden)
        return hidden

    def _to_boundary(self, out: Any) -> Any:
        def conv(t: Any) -> Any:
            if not isinstance(t, torch.Tensor):
                return t
            if self.boundary_dtype is not None and t.is_floating_point():
                t = t.to(self.boundary_dtype)
            if self.send_device is not None and not self.is_last:
                t = t.to(self.send_device)
            return t

        if isinstance(out, tuple):
            return tuple(conv(t) for t in out)
        return conv(out)

    def forward(self, *inputs: Any) -> Any:
        # A blocking copy: the pipeline may receive the next micro-batch into the same host
        # buffer, so the copy must have read it before the forward goes on. Contiguous, since
        # kernels (and the stride checks of the pipeline) assume it.
        inputs = tuple(t.to(self.compute_device).contiguous() if isinstance(t, torch.Tensor)
                       else t for t in inputs)
        record = (nullcontext() if self.saved_storages is None
                  else record_saved_storages(self.saved_storages))
        if self.saved_storages is not None:
            self.saved_storages.clear()
        with record:
            if self.autocast_dtype is not None:
                with torch.autocast(self.compute_device.type, dtype=self.autocast_dtype):
                    out = self._compute(*inputs)
            else:
                out = self._compute(*inputs)
        return self._to_boundary(out)


def build_stage(source: ModelSource, *, start: int, end: int, num_units: int, seq_len: int,
                recompute: bool, seed: int, device: torch.device) -> StageModule:
    """Build the stage owning partition units ``[start, end)`` on ``device``.

    Only the owned modules are ever allocated; initialisation happens on the CPU (so values do
    not depend on the device), then the stage moves to ``device``.
    """
    hooks = stage_hooks(source)
    model = build_on_meta(source)
    partition = model_partition(source, model, seq_len=seq_len)
    units = partition.unit_modules()
    if len(units) != num_units:
        raise BadInputError(
            f"the model has {len(units)} partition units but the plan expects {num_units}",
            file=source.path, fix="run the plan with the model (and --model-arg) it was made for")
    span = unit_span(partition, start, end)
    owned = set(span.modules)
    for _, _, mods in units:
        for name in mods:
            if name not in owned and _holds_parameters(model, name):
                _drop_module(model, name)
    model.to_empty(device="cpu")
    _initialise(model, seed=seed, hooks=hooks, path=source.path)
    _restore_buffers(model, source)
    stage = StageModule(model, span=span, hooks=hooks, path=source.path,
                        block_list=partition.block_list, post_all=partition.post,
                        recompute=recompute, is_last=end == num_units)
    stage.to(device)
    stage.compute_device = device
    return stage
