"""Chip micro-benchmarks: the two ceilings every roofline figure rests on, measured.

A datasheet peak is an upper bound no training run reaches; the analytic cost model needs the
fraction a large GEMM actually achieves (``compute_efficiency``) and the fraction of the memory
bandwidth a streaming copy achieves (``memory_efficiency``). This module measures both on the
device at hand, plus the host↔device copy bandwidth the CPU-relay path between vendors uses:

- GEMM: square ``n × n × n`` products over a range of sizes (bf16 on accelerators, fp32 and
  bf16 on the CPU), random inputs, two input sets alternated so repeated runs do not measure a
  warm cache; ``2·n³`` FLOPs each.
- Memory: a large device-to-device copy, counting bytes read plus bytes written.
- Host↔device: pinned host memory to the device and back.
- Workspace (first, while the process has touched nothing else): the bytes the allocator
  still holds after one matrix product and its backward, beyond the tensors themselves —
  the math libraries' workspaces (cuBLAS keeps one per thread and stream, and the backward
  runs on autograd's own thread). Every training process holds them once; only devices
  whose allocator reports memory have the figure.

Each timing is the median of ``repeats`` timed runs after ``warmup`` untimed ones.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import torch

from autosplit.atomic import atomic_write_text
from autosplit.model.loader import DTYPES
from autosplit.profiler.device import DeviceHandle, device_description
from autosplit.profiler.timing import median_spread

__all__ = ["BenchResult", "ChipBenchSettings", "run_chip_bench", "write_bench", "read_bench",
           "best_rate"]


@dataclass(frozen=True)
class ChipBenchSettings:
    """Sizes and repetitions (defaults chosen per device type by ``defaults_for``)."""

    gemm_sizes: tuple[int, ...]
    gemm_dtypes: tuple[str, ...]
    copy_bytes: int
    host_copy_bytes: int
    repeats: int = 10
    warmup: int = 3

    @staticmethod
    def defaults_for(handle: DeviceHandle, *, repeats: int = 10,
                     warmup: int = 3) -> ChipBenchSettings:
        if handle.is_cpu:
            return ChipBenchSettings(gemm_sizes=(256, 512, 1024, 2048),
                                     gemm_dtypes=("fp32", "bf16"), copy_bytes=256 << 20,
                                     host_copy_bytes=0, repeats=repeats, warmup=warmup)
        return ChipBenchSettings(gemm_sizes=(512, 1024, 2048, 4096, 8192, 16384),
                                 gemm_dtypes=("bf16",), copy_bytes=2 << 30,
                                 host_copy_bytes=1 << 30, repeats=repeats, warmup=warmup)


@dataclass(frozen=True)
class BenchResult:
    """One benchmark figure. ``rate`` is TFLOPS for ``gemm`` and GB/s (1e9 B/s) otherwise."""

    chip: str
    benchmark: str  # "gemm" | "copy" | "h2d" | "d2h" | "workspace"
    dtype: str
    size: int  # n of an n×n×n GEMM, or bytes per copy
    seconds: float
    rate: float
    unit: str
    repeats: int
    spread: float
    device: str
    command: str
    date: str


_COLUMNS = tuple(f.name for f in fields(BenchResult))


def _median_time(handle: DeviceHandle, fn: Callable[[int], None], *, warmup: int,
                 repeats: int) -> tuple[float, float]:
    for i in range(warmup):
        fn(i)
    samples = []
    for i in range(repeats):
        start = handle.now()
        fn(i)
        samples.append(handle.now() - start)
    return median_spread(samples)


def _gemm(handle: DeviceHandle, n: int, dtype: str, settings: ChipBenchSettings
          ) -> tuple[float, float]:
    device = handle.device
    gen = torch.Generator(device=device).manual_seed(n)
    torch_dtype = DTYPES[dtype]
    sets = [(torch.randn(n, n, device=device, dtype=torch_dtype, generator=gen),
             torch.randn(n, n, device=device, dtype=torch_dtype, generator=gen))
            for _ in range(2)]
    out = torch.empty(n, n, device=device, dtype=torch_dtype)
    # Small products finish in microseconds: batch several per timed run so host timing
    # overhead stays a small fraction.
    inner = max(1, min(64, int(2e11 // (2 * n**3)))) if not handle.is_cpu else 1

    def run(i: int) -> None:
        for j in range(inner):
            a, b = sets[(i + j) % 2]
            torch.mm(a, b, out=out)

    seconds, spread = _median_time(handle, run, warmup=settings.warmup,
                                   repeats=settings.repeats)
    return seconds / inner, spread


def _storage_bytes(tensors: Sequence[torch.Tensor | None]) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors if t is not None)


def _workspace(handle: DeviceHandle, dtype: str) -> int:
    """Bytes allocated after a product and its backward, minus the live tensors' bytes."""
    before = handle.allocated()
    torch_dtype = DTYPES[dtype]
    x = torch.randn(1024, 1024, device=handle.device, dtype=torch_dtype, requires_grad=True)
    w = torch.randn(1024, 1024, device=handle.device, dtype=torch_dtype, requires_grad=True)
    (x @ w).sum().backward()
    handle.synchronize()
    return max(0, handle.allocated() - before - _storage_bytes([x, w, x.grad, w.grad]))


def _copy(handle: DeviceHandle, nbytes: int, settings: ChipBenchSettings) -> tuple[float, float]:
    numel = nbytes // 4
    src = torch.rand(numel, device=handle.device)
    dst = torch.empty_like(src)
    return _median_time(handle, lambda _i: dst.copy_(src), warmup=settings.warmup,
                        repeats=settings.repeats)


def _host_copy(handle: DeviceHandle, nbytes: int, settings: ChipBenchSettings,
               *, to_device: bool) -> tuple[float, float]:
    numel = nbytes // 4
    host = torch.rand(numel)
    with contextlib.suppress(RuntimeError):  # unpinned copies are slower but still measured
        host = host.pin_memory()
    dev = torch.empty(numel, device=handle.device)
    if to_device:
        return _median_time(handle, lambda _i: dev.copy_(host, non_blocking=True),
                            warmup=settings.warmup, repeats=settings.repeats)
    return _median_time(handle, lambda _i: host.copy_(dev, non_blocking=True),
                        warmup=settings.warmup, repeats=settings.repeats)


def run_chip_bench(handle: DeviceHandle, *, chip: str, settings: ChipBenchSettings,
                   command: str, progress: Callable[[str], None] | None = None
                   ) -> list[BenchResult]:
    """Run every benchmark of ``settings`` on ``handle``; results in a fixed order."""
    date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    device = device_description(handle)
    results: list[BenchResult] = []

    def add(benchmark: str, dtype: str, size: int, seconds: float, spread: float,
            rate: float, unit: str) -> None:
        results.append(BenchResult(chip=chip, benchmark=benchmark, dtype=dtype, size=size,
                                   seconds=seconds, rate=rate, unit=unit,
                                   repeats=settings.repeats, spread=round(spread, 6),
                                   device=device, command=command, date=date))
        if progress is not None:
            progress(f"{benchmark} {dtype} {size}")

    if handle.memory_available and not handle.is_cpu:
        dtype = settings.gemm_dtypes[0]
        add("workspace", dtype, _workspace(handle, dtype), 0.0, 0.0, 0.0, "B")
    for dtype in settings.gemm_dtypes:
        for n in settings.gemm_sizes:
            seconds, spread = _gemm(handle, n, dtype, settings)
            add("gemm", dtype, n, seconds, spread, 2.0 * n**3 / seconds / 1e12, "TFLOPS")
            handle.empty_cache()
    seconds, spread = _copy(handle, settings.copy_bytes, settings)
    add("copy", "fp32", settings.copy_bytes, seconds, spread,
        2.0 * settings.copy_bytes / seconds / 1e9, "GB/s")
    handle.empty_cache()
    if settings.host_copy_bytes and not handle.is_cpu:
        for name, to_device in (("h2d", True), ("d2h", False)):
            seconds, spread = _host_copy(handle, settings.host_copy_bytes, settings,
                                         to_device=to_device)
            add(name, "fp32", settings.host_copy_bytes, seconds, spread,
                settings.host_copy_bytes / seconds / 1e9, "GB/s")
        handle.empty_cache()
    return results


def best_rate(results: Sequence[BenchResult], benchmark: str, dtype: str | None = None
              ) -> BenchResult | None:
    """The highest-rate result of one benchmark (and dtype), or ``None``."""
    chosen = [r for r in results if r.benchmark == benchmark
              and (dtype is None or r.dtype == dtype)]
    return max(chosen, key=lambda r: r.rate) if chosen else None


def write_bench(results: Sequence[BenchResult], path: str | Path) -> Path:
    """Write results as CSV atomically (temp file, then rename)."""
    path = Path(path)
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow(asdict(result))
    atomic_write_text(path, buf.getvalue())
    return path


def read_bench(path: str | Path) -> list[BenchResult]:
    """Read a chip benchmark CSV written by ``write_bench``."""
    from autosplit.errors import BadInputError

    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise BadInputError(f"cannot read chip benchmark ({exc.strerror})",
                            file=str(path)) from exc
    out = []
    for line, row in enumerate(rows, start=2):
        try:
            out.append(BenchResult(
                chip=row["chip"], benchmark=row["benchmark"], dtype=row["dtype"],
                size=int(row["size"]), seconds=float(row["seconds"]), rate=float(row["rate"]),
                unit=row["unit"], repeats=int(row["repeats"]), spread=float(row["spread"]),
                device=row.get("device", ""), command=row.get("command", ""),
                date=row.get("date", "")))
        except (KeyError, ValueError, TypeError) as exc:
            raise BadInputError(f"line {line}: malformed benchmark row ({exc})",
                                file=str(path),
                                fix="regenerate it with autosplit profile-chip") from exc
    return out
