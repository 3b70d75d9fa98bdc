"""One device-agnostic way to synchronize, time and read memory on any torch device.

The profiler must run unchanged on CUDA, ROCm (which PyTorch exposes as ``cuda``), Ascend
(``npu``), Intel (``xpu``), Cambricon (``mlu``) and the CPU. ``torch.accelerator`` covers every
backend registered with PyTorch's accelerator API where it exists; older versions and
out-of-tree backends are reached through their per-type module (``torch.cuda``, ``torch.npu``
…), which all share the CUDA-style names. The CPU has no allocator statistics: callers fall back
to counting saved tensors there (``memory_available`` says which path applies).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from autosplit.errors import BadInputError

__all__ = ["DeviceHandle", "Stopwatch", "open_device", "device_description", "cpu_model_name"]


@dataclass(frozen=True)
class DeviceHandle:
    """A torch device plus the backend module that synchronizes it and reports its memory."""

    device: torch.device
    #: ``torch.accelerator``, a per-type module such as ``torch.cuda``, or ``None`` on the CPU.
    backend: Any

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def memory_available(self) -> bool:
        """Whether the allocator reports allocated and peak bytes for this device."""
        return self._memory_fn("memory_allocated") is not None

    def synchronize(self) -> None:
        """Wait for every queued kernel on the device (no-op on the CPU)."""
        if self.backend is None:
            return
        sync = getattr(self.backend, "synchronize", None)
        if sync is not None:
            sync()

    def now(self) -> float:
        """A host clock reading taken after the device has drained its queue."""
        self.synchronize()
        return time.perf_counter()

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """Seconds ``fn`` takes on the device, and what it returned."""
        start = self.now()
        result = fn()
        return self.now() - start, result

    def allocated(self) -> int:
        """Bytes currently held by tensors on the device (0 where unknown)."""
        fn = self._memory_fn("memory_allocated")
        return int(fn(self.device)) if fn is not None else 0

    def peak(self) -> int:
        """Highest allocated bytes since the last ``reset_peak`` (0 where unknown)."""
        fn = self._memory_fn("max_memory_allocated")
        return int(fn(self.device)) if fn is not None else 0

    def reset_peak(self) -> None:
        fn = self._memory_fn("reset_peak_memory_stats")
        if fn is not None:
            fn(self.device)

    def empty_cache(self) -> None:
        fn = self._memory_fn("empty_cache")
        if fn is not None:
            fn()

    def _memory_fn(self, name: str) -> Callable[..., Any] | None:
        if self.backend is None:
            return None
        fn = getattr(self.backend, name, None)
        if fn is None and self.backend is getattr(torch, "accelerator", None):
            # torch.accelerator grew memory functions later than synchronize (2.8/2.9).
            fn = getattr(getattr(torch, self.device.type, None), name, None)
        return fn


def _event_type(handle: DeviceHandle) -> Any:
    """The backend's timing event class (``torch.cuda.Event``, ``torch.xpu.Event`` …) if one
    can be created and recorded here, else ``None``."""
    if handle.is_cpu:
        return None
    event = getattr(getattr(torch, handle.device.type, None), "Event", None)
    if event is None:
        return None
    try:
        event(enable_timing=True).record()
    except (RuntimeError, TypeError, AttributeError):
        return None
    return event


class Stopwatch:
    """Marks on the device's own timeline where it has timing events, else host clock readings
    taken after the device drained its queue.

    Device events time what the device did between two marks without stopping the host in
    between, so a forward and its backward are timed back to back as training runs them;
    the host clock is the fallback (the CPU, backends without events) and adds a
    synchronisation per mark. ``kind`` says which applies; it is stored with each row.
    """

    def __init__(self, handle: DeviceHandle) -> None:
        self.handle = handle
        self._event = _event_type(handle)
        self.kind = "device-events" if self._event is not None else "host-clock"
        self._marks: list[Any] = []

    def start(self) -> None:
        """Forget earlier marks and take the first one."""
        self._marks = []
        self.mark()

    def mark(self) -> None:
        """Take a mark now (on the device's current stream, or on the host after a sync)."""
        if self._event is None:
            self._marks.append(self.handle.now())
            return
        event = self._event(enable_timing=True)
        event.record()
        self._marks.append(event)

    def seconds(self, first: int, last: int) -> float:
        """Seconds between mark ``first`` and mark ``last`` (waits for the device)."""
        a, b = self._marks[first], self._marks[last]
        if self._event is None:
            return b - a
        b.synchronize()
        return a.elapsed_time(b) / 1e3


def open_device(name: str) -> DeviceHandle:
    """Resolve ``cpu``, ``cuda``, ``cuda:1``, ``npu``, ``xpu`` … to a usable device.

    Raises ``BadInputError`` when the name is not a torch device or the backend is absent.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise BadInputError(f"'{name}' is not a torch device ({exc})", field="--device",
                            fix="use cpu, cuda, cuda:0, npu, xpu, mlu …") from exc
    if device.type == "cpu":
        return DeviceHandle(device=device, backend=None)
    module = getattr(torch, device.type, None)
    if module is not None and hasattr(module, "is_available") and not module.is_available():
        raise BadInputError(f"device type '{device.type}' is not available on this machine",
                            field="--device",
                            fix="install the vendor's PyTorch backend or use --device cpu")
    accel = getattr(torch, "accelerator", None)
    backend: Any = module
    if accel is not None and accel.is_available():
        current = accel.current_accelerator()
        if current is not None and current.type == device.type:
            backend = accel
    if backend is None:
        raise BadInputError(f"no PyTorch backend module for device type '{device.type}'",
                            field="--device", fix="import the vendor's torch plugin first")
    if device.index is not None and hasattr(module, "set_device"):
        module.set_device(device)
    elif device.index is None and hasattr(module, "current_device"):
        device = torch.device(device.type, module.current_device())
    return DeviceHandle(device=device, backend=backend)


def cpu_model_name() -> str:
    """The processor's marketing name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_description(handle: DeviceHandle) -> str:
    """A human-readable name of the device (GPU model, or the CPU's processor)."""
    if handle.is_cpu:
        return cpu_model_name()
    module = getattr(torch, handle.device.type, None)
    get_name = getattr(module, "get_device_name", None)
    if get_name is not None:
        try:
            return str(get_name(handle.device))
        except (RuntimeError, AssertionError):
            pass
    return str(handle.device)
