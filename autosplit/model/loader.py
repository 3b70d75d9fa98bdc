"""Load a user's ``model.py`` and build it on the meta device.

The convention (documented in docs/model-files.md):

- ``build_model(**model_args) -> torch.nn.Module`` — required. ``model_args`` come from the
  CLI (``--model-arg size=70b``) as strings; the file converts them.
- ``example_batch(batch_size: int, seq_len: int, device) -> (inputs, targets)`` — required.
  ``inputs`` is a tuple of positional arguments for ``model.forward``.
- ``loss_fn(outputs, targets) -> Tensor`` — optional; defaults to cross-entropy over the last
  dimension.
- ``BLOCKS = "layers"`` — optional; the attribute path of the repeated block list. Without it,
  the largest ``nn.ModuleList``/``nn.Sequential`` of same-class children is used.
- ``TOKENS_PER_SAMPLE`` — optional; tokens one sample counts for in tokens/s (default: the
  sequence length; set 1 for non-sequence models).
- ``NAME`` — optional; a display name (default: the file stem plus the model args).

Everything here raises ``BadInputError`` naming the file and the fix, never a traceback.
Building on the meta device allocates no memory, so a 70B model is built in about a second;
the partition (what runs before and after the block list) is found by running the forward
once on meta inputs and watching which top-level modules execute when, because attribute
order says nothing about execution order.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autosplit.errors import BadInputError
from autosplit.model.replay import replay_identical_blocks
from autosplit.model.user_code import call_user, describe_exception

__all__ = ["ModelSource", "Partition", "load_model_source", "build_on_meta", "find_partition",
           "DTYPES"]

#: Training dtypes accepted on the command line.
DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}

_CONVENTION_FIX = ("a model file defines build_model(**model_args) -> nn.Module and "
                   "example_batch(batch_size, seq_len, device) -> (inputs, targets); "
                   "see docs/model-files.md")


@dataclass
class ModelSource:
    """A loaded model file and its entry points."""

    path: str
    name: str
    build_model: Callable[..., Any]
    example_batch: Callable[..., Any]
    loss_fn: Callable[..., Any] | None
    blocks_attr: str | None
    tokens_per_sample: int | None
    model_args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Partition:
    """How the model is cut into partition units.

    ``pre`` and ``post`` are the fully qualified names of the top-level modules that run
    before and after the block list; ``blocks`` the names of the blocks (``layers.0`` …).
    Unit 0 is ``pre`` (if non-empty), then one unit per block, then ``post`` (if non-empty).
    """

    block_list: str
    pre: tuple[str, ...]
    blocks: tuple[str, ...]
    post: tuple[str, ...]

    def unit_modules(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """``(unit name, kind, module names)`` for every unit, in execution order."""
        units: list[tuple[str, str, tuple[str, ...]]] = []
        if self.pre:
            units.append(("pre", "pre", self.pre))
        units.extend((b, "block", (b,)) for b in self.blocks)
        if self.post:
            units.append(("post", "post", self.post))
        return units


# --------------------------------------------------------------------------------------------
# Loading the file


def _module_name_for(path: str) -> str:
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    return f"_autosplit_user_model_{digest}"


def _import_file(path: str) -> Any:
    name = _module_name_for(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BadInputError("cannot be imported as a Python module", file=path,
                            fix="pass the path of a .py file")
    module = importlib.util.module_from_spec(spec)
    # Registered while executing so that dataclasses/pickling inside the file can find it.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file may raise anything
        sys.modules.pop(name, None)
        raise BadInputError(f"importing the model file failed: {describe_exception(exc, path)}",
                            file=path, fix="make `python " + os.path.basename(path)
                            + "` import cleanly (fix the line shown)") from None
    return module


def _accepted_args(fn: Callable[..., Any]) -> tuple[list[str], bool]:
    """Names ``fn`` accepts as keywords, and whether it takes ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in params
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    return names, var_kw


def _check_model_args(path: str, build_model: Callable[..., Any],
                      model_args: dict[str, str]) -> None:
    names, var_kw = _accepted_args(build_model)
    if var_kw:
        return
    unknown = sorted(set(model_args) - set(names))
    if unknown:
        accepted = ", ".join(names) if names else "no arguments"
        raise BadInputError(
            f"unknown model argument(s) {', '.join(unknown)}: build_model accepts {accepted}",
            file=path, field="model_args",
            fix="use --model-arg NAME=VALUE with one of: " + (accepted or "(none)"))


def _default_name(path: str, model_args: dict[str, str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    if not model_args:
        return stem
    args = ",".join(f"{k}={v}" for k, v in sorted(model_args.items()))
    return f"{stem}({args})"


def load_model_source(path: str, model_args: dict[str, str] | None = None) -> ModelSource:
    """Import ``path`` as a module and check it follows the convention."""
    model_args = dict(model_args or {})
    if not os.path.exists(path):
        raise BadInputError("model file not found", file=path,
                            fix="pass the path of an existing model .py file")
    if not os.path.isfile(path) or not path.endswith(".py"):
        raise BadInputError("a model file must be a Python source file ending in .py",
                            file=path, fix="pass the path of a model .py file")
    module = _import_file(path)
    build_model = getattr(module, "build_model", None)
    if not callable(build_model):
        raise BadInputError("no build_model function", file=path, field="build_model",
                            fix="define build_model(**model_args) returning a torch.nn.Module; "
                            + _CONVENTION_FIX)
    example_batch = getattr(module, "example_batch", None)
    if not callable(example_batch):
        raise BadInputError("no example_batch function", file=path, field="example_batch",
                            fix="define example_batch(batch_size, seq_len, device) returning "
                            "(inputs tuple, targets); " + _CONVENTION_FIX)
    loss_fn = getattr(module, "loss_fn", None)
    if loss_fn is not None and not callable(loss_fn):
        raise BadInputError("loss_fn is not a function", file=path, field="loss_fn",
                            fix="define loss_fn(outputs, targets) -> scalar tensor, or remove it "
                            "to use cross-entropy")
    blocks_attr = getattr(module, "BLOCKS", None)
    if blocks_attr is not None and (not isinstance(blocks_attr, str) or not blocks_attr):
        raise BadInputError("BLOCKS must be a non-empty string such as 'layers'", file=path,
                            field="BLOCKS", fix="set BLOCKS to the attribute path of the block "
                            "list, e.g. BLOCKS = 'transformer.h'")
    tokens = getattr(module, "TOKENS_PER_SAMPLE", None)
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                               or tokens < 1):
        raise BadInputError(f"TOKENS_PER_SAMPLE must be a positive integer, got {tokens!r}",
                            file=path, field="TOKENS_PER_SAMPLE",
                            fix="set TOKENS_PER_SAMPLE = 1 for non-sequence models, or remove it")
    name = getattr(module, "NAME", None)
    if not isinstance(name, str) or not name:
        name = _default_name(path, model_args)
    _check_model_args(path, build_model, model_args)
    return ModelSource(path=path, name=name, build_model=build_model,
                       example_batch=example_batch, loss_fn=loss_fn, blocks_attr=blocks_attr,
                       tokens_per_sample=tokens, model_args=model_args)


# --------------------------------------------------------------------------------------------
# Building


def build_on_meta(source: ModelSource, *, dtype: torch.dtype | None = None) -> nn.Module:
    """Build the model with every parameter on the meta device (no memory, seconds for 70B).

    With ``dtype`` the floating-point parameters and buffers are cast to the training dtype.
    """
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(source.model_args.items()))
    names, _ = _accepted_args(source.build_model)
    with torch.device("meta"):
        try:
            model = source.build_model(**source.model_args)
        except TypeError as exc:
            # A TypeError raised by the call itself (not inside the body) means bad arguments.
            if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
                accepted = ", ".join(names) or "no arguments"
                raise BadInputError(f"build_model({args}) rejected the model arguments: {exc}",
                                    file=source.path, field="model_args",
                                    fix=f"build_model accepts: {accepted}") from None
            raise BadInputError(f"build_model({args}) failed: "
                                f"{describe_exception(exc, source.path)}", file=source.path,
                                fix="fix build_model (see the line shown)") from None
        except Exception as exc:  # noqa: BLE001 - user code
            raise BadInputError(f"build_model({args}) failed: "
                                f"{describe_exception(exc, source.path)}", file=source.path,
                                fix="check the --model-arg values and the line shown") from None
    if not isinstance(model, nn.Module):
        raise BadInputError(f"build_model returned {type(model).__name__}, not torch.nn.Module",
                            file=source.path, field="build_model",
                            fix="return the model (an nn.Module) from build_model")
    if dtype is not None:
        model = model.to(dtype=dtype)
    off_meta = [n for n, p in model.named_parameters() if p.device.type != "meta"]
    if off_meta:
        where = model.get_parameter(off_meta[0]).device
        raise BadInputError(f"parameter '{off_meta[0]}' was created on {where}, "
                            "not on the default device", file=source.path, field="build_model",
                            fix="do not pass device= when creating parameters in build_model")
    return model


# --------------------------------------------------------------------------------------------
# Partition


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_block_list(module: nn.Module) -> bool:
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return False
    children = list(module.children())
    return len(children) >= 2 and len({type(c) for c in children}) == 1


def _pick_block_list(model: nn.Module, blocks_attr: str | None, path: str | None) -> str:
    if blocks_attr is not None:
        try:
            module = model.get_submodule(blocks_attr)
        except AttributeError:
            raise BadInputError(f"BLOCKS = {blocks_attr!r} names no submodule of the model",
                                file=path, field="BLOCKS",
                                fix="set BLOCKS to the attribute path of the block list; the "
                                "candidates are: " + (", ".join(_candidates(model)) or "(none)")
                                ) from None
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            raise BadInputError(f"BLOCKS = {blocks_attr!r} is a {type(module).__name__}, "
                                "not an nn.ModuleList or nn.Sequential", file=path,
                                field="BLOCKS", fix="point BLOCKS at the list holding the "
                                "repeated blocks (e.g. 'layers', 'transformer.h')")
        if len(module) < 1:
            raise BadInputError(f"BLOCKS = {blocks_attr!r} is empty", file=path, field="BLOCKS",
                                fix="point BLOCKS at a non-empty block list")
        return blocks_attr
    candidates = _candidates(model)
    if not candidates:
        raise BadInputError("found no nn.ModuleList/nn.Sequential of two or more blocks of the "
                            "same class", file=path, field="BLOCKS",
                            fix="keep the repeated blocks in one nn.ModuleList and, if needed, "
                            "name it with BLOCKS = 'attribute.path'")
    return candidates[0]


def _candidates(model: nn.Module) -> list[str]:
    """Block-list candidates, most parameters first (ties: shallower, then name).

    The model itself is a candidate (``""``): a plain ``nn.Sequential`` of identical layers.
    """
    found = [(name, _param_count(m)) for name, m in model.named_modules()
             if _is_block_list(m)]
    found.sort(key=lambda item: (-item[1], item[0].count("."), item[0]))
    return [name for name, _ in found]


def _siblings(model: nn.Module, block_list: str) -> list[str]:
    """Modules and direct parameters next to the block list along its attribute path."""
    if not block_list:
        return []  # the model itself is the block list
    parts = block_list.split(".")
    names: list[str] = []
    module = model
    prefix = ""
    for part in parts:
        for child_name, _ in module.named_children():
            if child_name != part:
                names.append(prefix + child_name)
        names.extend(prefix + n for n, _ in module.named_parameters(recurse=False))
        module = module.get_submodule(part)
        prefix += part + "."
    return names


def _has_params(model: nn.Module, name: str) -> bool:
    try:
        return _param_count(model.get_submodule(name)) > 0
    except AttributeError:
        return True  # a direct parameter


def _execution_events(model: nn.Module, siblings: list[str], blocks: list[str],
                      inputs: tuple[Any, ...], path: str | None
                      ) -> dict[str, list[tuple[int, int]]]:
    """Run the forward once; ``name -> [(start, end), ...]`` in a global event order."""
    counter = [0]
    spans: dict[str, list[list[int]]] = {}
    handles = []

    def tick() -> int:
        counter[0] += 1
        return counter[0]

    def watch(name: str, module: nn.Module) -> None:
        def pre(_m: nn.Module, _args: Any) -> None:
            spans.setdefault(name, []).append([tick(), -1])

        def post(_m: nn.Module, _args: Any, _out: Any) -> None:
            spans[name][-1][1] = tick()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    for name in siblings + blocks:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue  # a direct parameter: no hooks
        watch(name, module)
    try:
        with torch.no_grad(), replay_identical_blocks([model.get_submodule(b) for b in blocks]):
            call_user(model, *inputs, path=path or "<model>", what="the model's forward on meta "
                      "tensors", fix="the forward must run on any device: create new tensors "
                      "with device=x.device and avoid .item()/.tolist() on activations")
    finally:
        for handle in handles:
            handle.remove()
    return {name: [(s, e) for s, e in v] for name, v in spans.items()}


def find_partition(model: Any, blocks_attr: str | None = None, *,
                   inputs: tuple[Any, ...] | None = None, path: str | None = None) -> Partition:
    """Find the repeated block list and what runs before and after it.

    ``inputs`` (meta tensors from ``example_batch``) let the forward run once so that modules
    are classified by when they execute; without them attribute order is used as a guess.
    Modules next to the block list that hold no parameters and never run, or that run between
    blocks (e.g. a shared rotary-embedding helper), are ignored. Parameters owned directly by
    the model (or by a module on the path to the block list) are counted in ``pre``.
    """
    block_list = _pick_block_list(model, blocks_attr, path)
    block_names = [name for name, _ in model.get_submodule(block_list).named_children()]
    prefix = f"{block_list}." if block_list else ""
    blocks = [prefix + name for name in block_names]
    siblings = _siblings(model, block_list)
    direct_params = [n for n in siblings if not _is_submodule(model, n)]
    modules = [n for n in siblings if _is_submodule(model, n)]
    if inputs is None:
        return _partition_by_attribute_order(model, block_list, blocks, modules, direct_params)

    spans = _execution_events(model, modules, blocks, inputs, path)
    for name in blocks:
        runs = len(spans.get(name, []))
        if runs != 1:
            raise BadInputError(f"block '{name}' ran {runs} times in one forward; every block "
                                f"of '{block_list}' must run exactly once", file=path,
                                field="BLOCKS", fix="use a block list whose blocks each run once "
                                "per forward (or set BLOCKS to it)")
    first_start = min(spans[b][0][0] for b in blocks)
    last_end = max(spans[b][0][1] for b in blocks)
    pre: list[tuple[int, str]] = []
    post: list[tuple[int, str]] = []
    never_ran: list[str] = []
    for name in modules:
        runs = spans.get(name, [])
        if not runs:
            if _has_params(model, name):
                never_ran.append(name)
            continue
        if max(e for _, e in runs) < first_start:
            pre.append((runs[0][0], name))
        elif min(s for s, _ in runs) > last_end:
            post.append((runs[0][0], name))
        elif _has_params(model, name):
            raise BadInputError(f"module '{name}' holds parameters and runs while the blocks of "
                                f"'{block_list}' run, so it belongs to no pipeline stage",
                                file=path, field="BLOCKS",
                                fix="move it into the blocks or out of the block loop, or set "
                                "BLOCKS to a block list that contains it")
    pre_names = tuple(direct_params) + tuple(n for _, n in sorted(pre))
    post_names = tuple(n for _, n in sorted(post)) + tuple(sorted(never_ran))
    return Partition(block_list=block_list, pre=pre_names, blocks=tuple(blocks),
                     post=post_names)


def _is_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _partition_by_attribute_order(model: nn.Module, block_list: str, blocks: list[str],
                                  modules: list[str], direct_params: list[str]) -> Partition:
    order = [name for name, _ in model.named_modules()]
    anchor = order.index(block_list)
    pre = [n for n in modules if order.index(n) < anchor]
    post = [n for n in modules if order.index(n) > anchor]
    keep = [n for n in pre + post if _has_params(model, n)]
    return Partition(block_list=block_list,
                     pre=tuple(direct_params) + tuple(n for n in pre if n in keep),
                     blocks=tuple(blocks), post=tuple(n for n in post if n in keep))
