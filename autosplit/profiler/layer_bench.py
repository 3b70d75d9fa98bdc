"""Measure each distinct layer kind of a model on a real device: time and memory.

A 32-block model has three kinds of partition unit (the embedding ``pre``, one block kind,
the ``post`` head) but 34 units; identical units cost the same, so one of each kind is
measured (ingestion's ``layer_kind`` says which are identical) at every requested micro-batch
size, and the results apply to all units of that kind.

How each kind is run in isolation (``method`` column of the store):

- ``direct``: a block (or any unit that is one module) is called with the exact arguments
  the model's forward gave it, captured by a hook (see ``capture``).
- ``chain``: ``pre``/``post`` units made of modules that feed each other in order (e.g. final
  norm then head) are run as that chain, after checking that the chain reproduces the model's
  own intermediate tensor; ``post`` includes the loss.
- ``hollow-minus-post`` / ``hollow-minus-pre`` / ``hollow-split``: when a chain cannot stand
  in (e.g. ``tok_emb(ids) + pos_emb(positions)`` computed in the model's forward), the whole
  model is run with its block list emptied, which costs ``pre + post``; the other unit's
  measured time is subtracted, or, if neither chain holds, the total is split by the units'
  FLOP shares.

Tensor parallelism: see ``tp_estimate`` (Linear calls re-timed at 1/tp shapes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from autosplit.errors import BadInputError
from autosplit.model.loader import DTYPES, ModelSource, load_model_source
from autosplit.model.types import LayerProfile, ModelProfile
from autosplit.model.user_code import call_user
from autosplit.profiler.capture import (
    ModelCapture,
    UnitCapture,
    capture_forward,
    first_float_tensor,
)
from autosplit.profiler.device import DeviceHandle, device_description
from autosplit.profiler.store import ProfileRow
from autosplit.profiler.structure import unit_structure
from autosplit.profiler.timing import MemoryFigures, PhaseTimes, measure_memory, time_piece
from autosplit.profiler.tp_estimate import LinearTimer, apply_tp

__all__ = ["ProfileSettings", "ProgressSink", "profile_model", "count_steps",
           "build_on_device", "training_loss", "example_inputs"]

_NAN = float("nan")


@dataclass(frozen=True)
class ProfileSettings:
    """What to measure and how often."""

    micro_batches: tuple[int, ...] = (1, 2, 4)
    tps: tuple[int, ...] = (1,)
    seq_len: int = 2048
    dtype: str = "bf16"
    repeats: int = 10
    warmup: int = 3
    #: A set of runs whose spread is above this is taken again …
    max_spread: float = 0.03
    #: … up to this many sets (the one with the smallest spread is kept).
    max_rounds: int = 5
    #: Backwards add into existing weight gradients (a step's later micro-batches); ``False``:
    #: into fresh ones (its first), as profiles before 2026-12 were timed.
    accumulate_grads: bool = True


class ProgressSink(Protocol):
    """Receives one call per finished measurement (the CLI draws a progress bar)."""

    def __call__(self, label: str) -> None: ...


@dataclass
class _Piece:
    """A differentiable callable plus what its backward must clear between runs."""

    forward: Callable[[], torch.Tensor]
    params: list[torch.Tensor]
    leaves: list[torch.Tensor]
    #: Tensors shared by every unit (buffers, masks): never counted as activations.
    constants: list[torch.Tensor] = field(default_factory=list)


def count_steps(profile: ModelProfile, settings: ProfileSettings) -> int:
    """How many progress steps ``profile_model`` reports (kinds × micro-batches × TP)."""
    return len(_distinct_units(profile)) * len(settings.micro_batches) * len(settings.tps)


def _distinct_units(profile: ModelProfile) -> list[LayerProfile]:
    seen: dict[str, LayerProfile] = {}
    for layer in profile.layers:
        key = layer.layer_kind or layer.name
        seen.setdefault(key, layer)
    return list(seen.values())


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
    except (TypeError, RuntimeError):  # dtypes a backend cannot default to
        yield
        return
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_on_device(source: ModelSource, handle: DeviceHandle, dtype: torch.dtype) -> nn.Module:
    """Instantiate the model directly on the device, in the training dtype."""
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(source.model_args.items()))
    with torch.device(handle.device), _default_dtype(dtype):
        model = call_user(source.build_model, path=source.path,
                          what=f"build_model({args}) on {handle.device}",
                          fix="check the --model-arg values and that the model fits the "
                              "device's memory", **source.model_args)
    model = model.to(device=handle.device, dtype=dtype)
    model.train()
    return model


def training_loss(source: ModelSource) -> Callable[[Any, Any], torch.Tensor]:
    """The model file's ``loss_fn``, else cross-entropy in fp32 as mixed precision runs it."""
    if source.loss_fn is not None:
        return source.loss_fn

    def cross_entropy(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        logits = first_float_tensor(outputs)
        if logits is None:
            raise BadInputError("the model's output holds no floating-point tensor",
                                file=source.path, field="loss_fn",
                                fix="define loss_fn(outputs, targets) in the model file")
        return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten())

    return cross_entropy


def example_inputs(source: ModelSource, micro_batch: int, seq_len: int,
                   device: torch.device) -> tuple[tuple[Any, ...], Any]:
    """One seeded micro-batch from the model file's ``example_batch``, on the device."""
    torch.manual_seed(0)
    inputs, targets = call_user(source.example_batch, micro_batch, seq_len, device,
                                path=source.path, what="example_batch",
                                fix="example_batch(batch_size, seq_len, device) must return "
                                    "(inputs, targets) on the given device")
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    return inputs, targets


def _params_of(model: nn.Module, names: Sequence[str]) -> list[torch.Tensor]:
    params: list[torch.Tensor] = []
    for name in names:
        try:
            params.extend(p for p in model.get_submodule(name).parameters() if p.requires_grad)
        except AttributeError:
            with contextlib.suppress(AttributeError):
                params.append(model.get_parameter(name))
    return params


def _with_hidden_leaf(capture: UnitCapture) -> tuple[tuple[Any, ...], dict[str, Any],
                                                    torch.Tensor | None]:
    """The unit's captured arguments, with its first float tensor made a gradient leaf."""
    args = list(capture.args)
    kwargs = dict(capture.kwargs)
    for i, value in enumerate(args):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            args[i] = value.detach().clone().requires_grad_(True)
            return tuple(args), kwargs, args[i]
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            kwargs[key] = value.detach().clone().requires_grad_(True)
            return tuple(args), kwargs, kwargs[key]
    return tuple(args), kwargs, None


def _output_tensor(out: Any, what: str) -> torch.Tensor:
    tensor = first_float_tensor(out)
    if tensor is None or not tensor.requires_grad:
        raise BadInputError(f"{what} returned no floating-point tensor that needs a gradient",
                            fix="profile a model whose units return their hidden state")
    return tensor


def _block_piece(model: nn.Module, layer: LayerProfile, capture: UnitCapture) -> _Piece:
    module = model.get_submodule(layer.module_names[0])
    args, kwargs, leaf = _with_hidden_leaf(capture)

    def forward() -> torch.Tensor:
        return _output_tensor(module(*args, **kwargs), layer.name)

    constants = [t for t in (*args, *kwargs.values())
                 if isinstance(t, torch.Tensor) and t is not leaf]
    return _Piece(forward=forward, params=_params_of(model, layer.module_names),
                  leaves=[leaf] if leaf is not None else [], constants=constants)


def _same(a: Any, b: Any) -> bool:
    ta, tb = first_float_tensor(a), first_float_tensor(b)
    if ta is None or tb is None or ta.shape != tb.shape:
        return False
    # Relative to the whole tensor: GEMM kernels picked differently (another micro-batch,
    # an MPS share) round bf16 differently element by element, but never by 1 % overall.
    diff = torch.linalg.vector_norm((ta.float() - tb.float()).flatten())
    scale = torch.linalg.vector_norm(tb.float().flatten())
    return bool(diff <= 1e-2 * scale + 1e-6)


def _chain(model: nn.Module, names: Sequence[str]) -> list[nn.Module] | None:
    modules = []
    for name in names:
        try:
            modules.append(model.get_submodule(name))
        except AttributeError:
            return None  # a bare parameter used by the model's own forward code
    return modules or None


def _run_chain(modules: Sequence[nn.Module], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:
    y = modules[0](*args, **kwargs)
    for module in modules[1:]:
        y = module(y)
    return y


def _pre_piece(model: nn.Module, layer: LayerProfile, capture: ModelCapture,
               inputs: tuple[Any, ...], first_block: UnitCapture) -> _Piece | None:
    """The ``pre`` modules as a chain on the model's inputs, if that reproduces the input of
    the first block."""
    if any(_chain(model, [n]) is None for n in layer.module_names):
        return None
    ran = [n for n in capture.ran if n in layer.module_names]
    modules = _chain(model, ran)
    if modules is None:
        return None
    with torch.no_grad():
        try:
            y = _run_chain(modules, inputs, {})
        except Exception:  # noqa: BLE001 - not a chain: fall back to the hollow model
            return None
    if not _same(y, first_block.args or first_block.kwargs):
        return None

    def forward() -> torch.Tensor:
        return _output_tensor(_run_chain(modules, inputs, {}), layer.name)

    return _Piece(forward=forward, params=_params_of(model, layer.module_names), leaves=[])


def _post_piece(model: nn.Module, layer: LayerProfile, capture: ModelCapture,
                targets: Any, loss_fn: Callable[[Any, Any], torch.Tensor]) -> _Piece | None:
    """The ``post`` modules as a chain plus the loss, if the chain reproduces the output."""
    ran = [n for n in capture.ran if n in layer.module_names]
    modules = _chain(model, ran)
    unit = capture.units.get(layer.name)
    if modules is None or unit is None or not (unit.args or unit.kwargs):
        return None
    args, kwargs, leaf = _with_hidden_leaf(unit)
    with torch.no_grad():
        try:
            y = _run_chain(modules, args, kwargs)
        except Exception:  # noqa: BLE001 - not a chain: fall back to the hollow model
            return None
    if not _same(y, capture.output):
        return None

    def forward() -> torch.Tensor:
        return loss_fn(_run_chain(modules, args, kwargs), targets)

    return _Piece(forward=forward, params=_params_of(model, layer.module_names),
                  leaves=[leaf] if leaf is not None else [])


@contextlib.contextmanager
def _hollow(model: nn.Module, block_list: str) -> Iterator[None]:
    """The model with its block list replaced by an empty one of the same type."""
    parent_name, _, attr = block_list.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = getattr(parent, attr)
    setattr(parent, attr, type(original)())
    try:
        yield
    finally:
        setattr(parent, attr, original)


def _hollow_memory(handle: DeviceHandle, model: nn.Module, piece: _Piece,
                   first_post: str | None) -> tuple[float, float]:
    """Saved bytes of the hollow model split into (pre, post) at the first post module."""
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    counts = [0, 0]
    seen: set[int] = set()
    phase = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in exclude and ptr not in seen:
            seen.add(ptr)
            counts[phase[0]] += storage.nbytes()
        return t

    hook = None
    if first_post is not None:
        hook = model.get_submodule(first_post).register_forward_pre_hook(
            lambda *_: phase.__setitem__(0, 1))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = piece.forward()
        del out
    finally:
        if hook is not None:
            hook.remove()
    return float(counts[0]), float(counts[1])


@dataclass(frozen=True)
class _Measured:
    times: PhaseTimes
    memory: MemoryFigures | None
    method: str


def _split_hollow(hollow: _Measured, pre: LayerProfile, post: LayerProfile,
                  mem: tuple[float, float]) -> tuple[_Measured, _Measured]:
    total = pre.fwd_flops + post.fwd_flops
    # FLOP shares, but never under 2 % each: an embedding does no FLOPs yet takes time.
    share = min(max(pre.fwd_flops / total if total > 0 else 0.5, 0.02), 0.98)
    out = []
    for frac, saved in ((share, mem[0]), (1.0 - share, mem[1])):
        t = hollow.times
        times = replace(t, fwd_s=t.fwd_s * frac, bwd_s=t.bwd_s * frac,
                        recompute_bwd_s=t.recompute_bwd_s * frac)
        memory = MemoryFigures(activation_bytes=saved, peak_bwd_bytes=_NAN,
                               saved_tensor_bytes=saved, method="saved-tensors")
        out.append(_Measured(times=times, memory=memory, method="hollow-split"))
    return out[0], out[1]


def _minus(hollow: _Measured, other: _Measured, saved: float, method: str) -> _Measured:
    t, o = hollow.times, other.times
    floor = 0.02  # never below 2 % of the hollow model: subtraction noise, not a measurement
    times = PhaseTimes(fwd_s=max(t.fwd_s - o.fwd_s, floor * t.fwd_s),
                       bwd_s=max(t.bwd_s - o.bwd_s, floor * t.bwd_s),
                       recompute_bwd_s=max(t.recompute_bwd_s - o.recompute_bwd_s,
                                           floor * t.recompute_bwd_s),
                       repeats=t.repeats, spread=max(t.spread, o.spread),
                       rounds=max(t.rounds, o.rounds), timer=t.timer)
    memory = MemoryFigures(activation_bytes=saved, peak_bwd_bytes=_NAN,
                           saved_tensor_bytes=saved, method="saved-tensors")
    return _Measured(times=times, memory=memory, method=method)


class _Profiler:
    """Holds the model on the device and measures units at one micro-batch size."""

    def __init__(self, *, source: ModelSource, profile: ModelProfile, handle: DeviceHandle,
                 settings: ProfileSettings) -> None:
        self.source = source
        self.profile = profile
        self.handle = handle
        self.settings = settings
        self.dtype = DTYPES[settings.dtype]
        self.model = build_on_device(source, handle, self.dtype)
        self.loss_fn = training_loss(source)
        self.units = _distinct_units(profile)
        self.linears = LinearTimer(handle=handle, dtype=self.dtype, warmup=settings.warmup,
                                   repeats=settings.repeats)

    def _measure(self, piece: _Piece, method: str) -> _Measured:
        s = self.settings
        times = time_piece(self.handle, piece.forward, params=piece.params,
                           leaves=piece.leaves, warmup=s.warmup, repeats=s.repeats,
                           max_spread=s.max_spread, max_rounds=s.max_rounds,
                           accumulate=s.accumulate_grads)
        constants = [*piece.constants, *self.model.buffers()]
        memory = measure_memory(self.handle, piece.forward, params=piece.params,
                                leaves=piece.leaves, constants=constants)
        return _Measured(times=times, memory=memory, method=method)

    def measure(self, micro_batch: int) -> tuple[dict[str, _Measured], ModelCapture]:
        """Every distinct unit at ``micro_batch`` (tp = 1), keyed by unit name."""
        inputs, targets = example_inputs(self.source, micro_batch, self.settings.seq_len,
                                 self.handle.device)
        blocks = [u for u in self.profile.layers if u.kind == "block"]
        watched = {u.name: u.module_names for u in self.units}
        if blocks:
            watched.setdefault(blocks[0].name, blocks[0].module_names)
        side = [n for u in self.profile.layers if u.kind != "block" for n in u.module_names]
        capture = call_user(capture_forward, self.model, inputs=inputs, unit_modules=watched,
                            side_modules=side, path=self.source.path,
                            what="the model's forward on the device",
                            fix="make the forward run on the given device")
        results: dict[str, _Measured] = {}
        pre = next((u for u in self.units if u.kind == "pre"), None)
        post = next((u for u in self.units if u.kind == "post"), None)
        for unit in self.units:
            if unit.kind == "block" or (unit.kind not in ("pre", "post")
                                        and len(unit.module_names) == 1):
                piece = _block_piece(self.model, unit, capture.units[unit.name])
                results[unit.name] = self._measure(piece, "direct")
        pre_piece = (_pre_piece(self.model, pre, capture, inputs,
                                capture.units[blocks[0].name])
                     if pre is not None and blocks else None)
        post_piece = (_post_piece(self.model, post, capture, targets, self.loss_fn)
                      if post is not None else None)
        if pre_piece is not None:
            results[pre.name] = self._measure(pre_piece, "chain")
        if post_piece is not None:
            results[post.name] = self._measure(post_piece, "chain")
        if (pre is not None and pre_piece is None) or (post is not None and post_piece is None):
            self._measure_hollow(results, pre, post, inputs, targets, capture)
        return results, capture

    def _measure_hollow(self, results: dict[str, _Measured], pre: LayerProfile | None,
                        post: LayerProfile | None, inputs: tuple[Any, ...], targets: Any,
                        capture: ModelCapture) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]

        def forward() -> torch.Tensor:
            return self.loss_fn(self.model(*inputs), targets)

        piece = _Piece(forward=forward, params=params, leaves=[])
        first_post = None
        if post is not None:
            first_post = next((n for n in capture.ran if n in post.module_names), None)
        with _hollow(self.model, self.profile.block_list):
            try:
                hollow = self._measure(piece, "hollow")
            except Exception:  # noqa: BLE001 - user forward needs its blocks
                return  # the forward needs its blocks: leave pre/post to the analytic model
            mem = _hollow_memory(self.handle, self.model, piece, first_post)
        if pre is None:
            results[post.name] = replace(hollow, method="hollow")
        elif post is None:
            results[pre.name] = replace(hollow, method="hollow")
        elif post.name in results:
            results[pre.name] = _minus(hollow, results[post.name], mem[0],
                                       "hollow-minus-post")
        elif pre.name in results:
            results[post.name] = _minus(hollow, results[pre.name], mem[1],
                                        "hollow-minus-pre")
        else:
            results[pre.name], results[post.name] = _split_hollow(hollow, pre, post, mem)


def profile_model(path: str, *, model_args: dict[str, str], settings: ProfileSettings,
                  handle: DeviceHandle, chip: str, command: str,
                  profile: ModelProfile | None = None,
                  progress: ProgressSink | None = None) -> list[ProfileRow]:
    """Measure every distinct unit kind of the model at every micro-batch size and TP degree.

    ``profile`` is the ingested model (ingested here when not given); its ``layer_kind``
    keys the rows so the measured cost provider can find them.
    """
    if settings.dtype not in DTYPES:
        raise BadInputError(f"unknown dtype '{settings.dtype}'", field="--dtype",
                            fix="use one of " + ", ".join(DTYPES))
    source = load_model_source(path, model_args)
    if profile is None:
        from autosplit.model.ingest import ingest_model

        profile = ingest_model(path, model_args=model_args, seq_len=settings.seq_len,
                               dtype=settings.dtype)
    profiler = _Profiler(source=source, profile=profile, handle=handle, settings=settings)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    device = device_description(handle)
    rows: list[ProfileRow] = []
    for micro_batch in settings.micro_batches:
        results, capture = profiler.measure(micro_batch)
        for unit in profiler.units:
            measured = results.get(unit.name)
            linears = capture.units[unit.name].linears if unit.name in capture.units else []
            for tp in settings.tps:
                if progress is not None:
                    progress(f"{unit.name} mb={micro_batch} tp={tp}")
                if measured is None:
                    continue
                times = replace(apply_tp(measured.times, linears, tp, profiler.linears),
                                rounds=measured.times.rounds, timer=measured.times.timer)
                memory = measured.memory if tp == 1 else None
                method = measured.method if tp == 1 else f"{measured.method}+linear-shards"
                rows.append(ProfileRow(
                    chip=chip, model_fingerprint=profile.fingerprint,
                    layer_kind=unit.layer_kind or unit.name, unit=unit.name,
                    seq_len=settings.seq_len, micro_batch=micro_batch, tp=tp,
                    dtype=settings.dtype, fwd_s=times.fwd_s, bwd_s=times.bwd_s,
                    recompute_bwd_s=times.recompute_bwd_s,
                    activation_bytes=memory.activation_bytes if memory else _NAN,
                    peak_bwd_bytes=memory.peak_bwd_bytes if memory else _NAN,
                    repeats=times.repeats, spread=round(times.spread, 6), method=method,
                    device=device, command=command, date=date,
                    structure=unit_structure(unit).key, rounds=times.rounds,
                    timer=times.timer))
        handle.empty_cache()
    if not rows:
        raise BadInputError("no unit could be measured", file=path,
                            fix="check that the model's blocks run in isolation")
    return [r for r in rows if math.isfinite(r.fwd_s)]
