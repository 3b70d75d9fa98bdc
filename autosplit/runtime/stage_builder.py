"""Build one pipeline stage, and only that stage, from the user's model file.

A rank of a 70B run cannot afford the whole model, so every rank builds the model on the meta
device, keeps the partition units its stage owns (the rest are dropped before any memory is
allocated), materialises the survivors and initialises them deterministically: every module is
initialised from a generator seeded with its fully qualified name, on the CPU, so a parameter
gets the same values whichever stage owns it and whether or not the model is split. That is
what lets a split run be checked against single-process training of the unsplit model.

The stage's forward is the slice of the model's own forward between its split points
(``slicing``); the model file needs no stage hooks. One optional function changes how
parameters start: ``init_weights(module, name)`` initialises the parameters a module holds
directly. Default: ``module.reset_parameters()`` where the module has it, else N(0, 0.02) for
matrices, ones for 1-D ``weight`` and zeros for other vectors.

Modules without parameters (a rotary-table helper, say) are kept on every stage, since the
forward may call them anywhere. Buffers (masks, rotary tables) are not parameters and
``to_empty`` leaves them undefined, so they are recomputed by constructing the model once more
with its parameters sent to meta as they are registered (cheap: their storage is never
touched) and copying the buffers the stage kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from autosplit.errors import BadInputError
from autosplit.model.loader import ModelSource, Partition, build_on_meta, find_partition
from autosplit.model.user_code import call_user
from autosplit.runtime.data import example_pair
from autosplit.runtime.slicing import StageSlice, map_tensors

__all__ = ["StageModule", "init_weights_hook", "build_stage", "model_partition",
           "meta_inputs", "foreign_modules", "name_seed"]

#: Stage hooks of earlier releases, now replaced by running the model's own forward.
_RETIRED_HOOKS = ("forward_pre", "forward_block", "forward_post")


def init_weights_hook(source: ModelSource) -> Callable[..., Any] | None:
    """The model file's optional ``init_weights``; refuses the retired stage hooks, which
    would otherwise be silently ignored."""
    namespace: dict[str, Any] = getattr(source.build_model, "__globals__", {})
    for name in _RETIRED_HOOKS:
        if name in namespace:
            raise BadInputError(
                f"the model file defines {name}, which is no longer used: every stage runs "
                "the slice of the model's own forward between its split points",
                file=source.path, fix=f"remove {name} (see docs/runtime.md, 'Stage forward')")
    fn = namespace.get("init_weights")
    if fn is not None and not callable(fn):
        raise BadInputError("'init_weights' is defined but is not a function", file=source.path,
                            fix="define init_weights(module, name) (see docs/runtime.md)")
    return fn


def model_partition(source: ModelSource, model: nn.Module, *, seq_len: int) -> Partition:
    """The model's partition units, found exactly as ingestion finds them (by running the
    forward once on meta inputs), so unit indices in the plan mean the same modules here."""
    inputs = meta_inputs(source, rows=1, seq_len=seq_len)
    return find_partition(model, source.blocks_attr, inputs=inputs, path=source.path)


def meta_inputs(source: ModelSource, *, rows: int, seq_len: int) -> tuple[Any, ...]:
    """The model's forward arguments for ``rows`` samples, on the meta device."""
    return example_pair(source, rows=rows, seq_len=seq_len, device=torch.device("meta"))[0]


def foreign_modules(model: nn.Module, partition: Partition, start: int, end: int
                    ) -> dict[str, nn.Module | torch.Tensor]:
    """The modules and direct parameters holding parameters of the units outside
    ``[start, end)`` (meta while ``model`` is on meta): a stage shapes its stand-ins of
    earlier units' outputs from them."""
    out: dict[str, nn.Module | torch.Tensor] = {}
    units = partition.unit_modules()
    for _, _, names in units[:start] + units[end:]:
        for name in names:
            if not _holds_parameters(model, name):
                continue
            parent, attr = _parent_and_attr(model, name)
            out[name] = (parent._parameters[attr] if attr in parent._parameters
                         else model.get_submodule(name))
    return out


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


def _initialise(model: nn.Module, *, seed: int, init_weights: Callable[..., Any] | None,
                path: str) -> None:
    """Initialise every module that holds parameters directly, each from its own seed."""
    for name, module in sorted(model.named_modules(), key=lambda item: item[0]):
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        torch.manual_seed(name_seed(seed, name))
        if init_weights is not None:
            call_user(init_weights, module, name, path=path,
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


# ---- the stage module ---------------------------------------------------------------------

class StageModule(nn.Module):
    """Runs the units one stage owns (``slicing.StageSlice``).

    ``model`` is the user's model with every other stage's units removed, so parameter names
    are the unsplit model's names. Floating-point outputs are cast to ``boundary_dtype``, what
    crosses the stage boundary, inside the graph so that gradients flow back through the cast.
    """

    def __init__(self, model: nn.Module, *, stage_slice: StageSlice, is_first: bool,
                 is_last: bool) -> None:
        super().__init__()
        self.model = model
        self.is_first = is_first
        self.is_last = is_last
        self.boundary_dtype: torch.dtype | None = None
        self.autocast_dtype: torch.dtype | None = None
        self.compute_device = torch.device("cpu")
        object.__setattr__(self, "_slice", stage_slice)  # a view of ``model``, not a child

    def _to_boundary(self, t: torch.Tensor) -> torch.Tensor:
        if self.boundary_dtype is not None and t.is_floating_point():
            return t.to(self.boundary_dtype)
        return t

    def forward(self, *inputs: Any) -> Any:
        if self.autocast_dtype is not None:
            with torch.autocast(self.compute_device.type, dtype=self.autocast_dtype):
                out = self._slice(*inputs)
        else:
            out = self._slice(*inputs)
        return map_tensors(self._to_boundary, out)


def _cast_floats(value: nn.Module | torch.Tensor, dtype: torch.dtype
                 ) -> nn.Module | torch.Tensor:
    if isinstance(value, nn.Module):
        return value.to(dtype)
    return value.to(dtype) if value.is_floating_point() else value


def build_stage(source: ModelSource, *, start: int, end: int, num_units: int, seq_len: int,
                rows: int, recompute: bool, seed: int, device: torch.device,
                activation_dtype: torch.dtype | None = None, stage: int = 0) -> StageModule:
    """Build the stage owning partition units ``[start, end)`` on ``device`` for
    micro-batches of ``rows`` samples.

    Only the owned modules are ever allocated; initialisation happens on the CPU (so values do
    not depend on the device), then the stage moves to ``device``. ``activation_dtype``: the
    dtype the stage's parameters will have (the stand-ins of earlier units' outputs take it).
    """
    init_weights = init_weights_hook(source)
    model = build_on_meta(source)
    partition = model_partition(source, model, seq_len=seq_len)
    units = partition.unit_modules()
    if len(units) != num_units:
        raise BadInputError(
            f"the model has {len(units)} partition units but the plan expects {num_units}",
            file=source.path, fix="run the plan with the model (and --model-arg) it was made for")
    foreign = foreign_modules(model, partition, start, end)
    if activation_dtype is not None:
        foreign = {n: _cast_floats(m, activation_dtype) for n, m in foreign.items()}
    owned = {name for _, _, mods in units[start:end] for name in mods}
    for _, _, mods in units:
        for name in mods:
            if name not in owned and _holds_parameters(model, name):
                _drop_module(model, name)
    model.to_empty(device="cpu")
    _initialise(model, seed=seed, init_weights=init_weights, path=source.path)
    _restore_buffers(model, source)
    model.to(device)
    stage_slice = StageSlice(model, partition=partition, stage=stage, start=start, end=end,
                             foreign=foreign,
                             inputs=meta_inputs(source, rows=rows, seq_len=seq_len),
                             recompute=recompute, device=device)
    module = StageModule(model, stage_slice=stage_slice, is_first=start == 0,
                         is_last=end == num_units)
    module.compute_device = device
    return module
