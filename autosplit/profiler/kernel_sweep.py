"""The kernel-shape sweep of ``autosplit profile-chip``: what the compute surface is fitted to.

Why a sweep: the cost model prices every GEMM of a layer at the efficiency of its shape and
every memory-bound kernel at a launch cost plus its bytes (``autosplit.cost.analytic``); those
three things — efficiency per shape, launch cost, streaming rate — are only known by timing
kernels of the shapes models use. The sweep times:

- GEMMs ``(m, n, k)``: rows (tokens of one micro-batch on one rank) from a few hundred to
  tens of thousands, weight dimensions from 1024 to 16384 (hidden sizes and their 3-4× MLP
  widths, divided by TP), in each dtype; plus square sizes for continuity with the older
  ``n³`` figures;
- memory-bound kernels (layer norm, softmax, GELU, an add) over row counts at a fixed width,
  from a few rows (launch-bound) to hundreds of megabytes (bandwidth-bound);
- fused causal attention (``scaled_dot_product_attention``) at a few sequence lengths.

Each figure is the median of ``repeats`` timed runs after ``warmup`` untimed ones; a timed run
launches the kernel ``inner`` times back to back (as a training step does), so its time per
kernel includes the gaps between kernels of an eager stream. Two input sets alternate so a
repeat does not find its operands in cache.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from autosplit.atomic import atomic_write_text
from autosplit.errors import BadInputError
from autosplit.model.loader import DTYPES
from autosplit.profiler.device import DeviceHandle, device_description
from autosplit.profiler.timing import median_spread

__all__ = ["MEMORY_KERNELS", "SweepRow", "SweepSettings", "read_sweep", "run_sweep",
           "sweep_size", "write_sweep"]

#: Memory-bound kernels the sweep times, with the tensors each reads and writes (in units of
#: the ``rows × width`` activation).
MEMORY_KERNELS: dict[str, int] = {"layer_norm": 2, "softmax": 2, "gelu": 2, "add": 3}


@dataclass(frozen=True)
class SweepSettings:
    """Shapes and repetitions of one sweep (``defaults_for`` picks them per device type)."""

    gemm_shapes: tuple[tuple[int, int, int], ...]
    gemm_dtypes: tuple[str, ...]
    memory_rows: tuple[int, ...]
    memory_width: int
    memory_dtype: str
    attention_shapes: tuple[tuple[int, int, int], ...]  # (heads, seq, head_dim), batch 1
    repeats: int = 10
    warmup: int = 3
    #: Upper bound on one timed run's FLOPs per kernel batch (keeps fp32 sweeps short).
    max_flops: float = 2.0**41

    @staticmethod
    def defaults_for(handle: DeviceHandle, *, repeats: int = 10,
                     warmup: int = 3) -> SweepSettings:
        if handle.is_cpu:  # small: a CPU sweep is for trying the tool, not for planning
            shapes = (*itertools.product((16, 256), (64, 256), (64, 256)), (512, 512, 512))
            return SweepSettings(gemm_shapes=shapes, gemm_dtypes=("fp32",),
                                 memory_rows=(1, 64, 1024, 8192), memory_width=512,
                                 memory_dtype="fp32", attention_shapes=((4, 128, 32),),
                                 repeats=repeats, warmup=warmup, max_flops=2.0**33)
        rows = (256, 1024, 4096, 16384)
        dims = (1024, 4096, 16384)
        squares = tuple((n, n, n) for n in (128, 512, 2048, 8192))
        shapes = tuple(itertools.product(rows, dims, dims)) + squares + (
            (1024, 2048, 2048), (2048, 6144, 2048), (2048, 8192, 2048), (2048, 2048, 8192))
        return SweepSettings(gemm_shapes=shapes, gemm_dtypes=("bf16", "fp16", "fp32"),
                             memory_rows=(1, 16, 256, 2048, 16384, 65536), memory_width=4096,
                             memory_dtype="bf16",
                             attention_shapes=((16, 1024, 128), (16, 2048, 128),
                                               (32, 4096, 128), (32, 2048, 64)),
                             repeats=repeats, warmup=warmup)


@dataclass(frozen=True)
class SweepRow:
    """One timed kernel. ``m, n, k``: GEMM shape; for a memory-bound kernel ``m`` rows of
    width ``n``; for attention ``m`` heads, ``n`` sequence length, ``k`` head dimension."""

    chip: str
    kernel: str  # "gemm" | "attention" | one of MEMORY_KERNELS
    dtype: str
    m: int
    n: int
    k: int
    flops: float
    nbytes: float
    seconds: float
    spread: float
    repeats: int
    device: str
    command: str
    date: str


_COLUMNS = tuple(f.name for f in fields(SweepRow))


def _inner(handle: DeviceHandle, work: float, rate: float) -> int:
    """Kernels per timed run so that one run lasts about a millisecond on an accelerator."""
    if handle.is_cpu:
        return 1
    return max(1, min(200, int(1e-3 * rate / max(work, 1.0))))


def _time(handle: DeviceHandle, fn: Callable[[int], None], inner: int,
          settings: SweepSettings) -> tuple[float, float]:
    for i in range(settings.warmup):
        fn(i)
    samples = []
    for i in range(settings.repeats):
        start = handle.now()
        for j in range(inner):
            fn(i + j)
        samples.append((handle.now() - start) / inner)
    return median_spread(samples)


def _gemm(handle: DeviceHandle, shape: tuple[int, int, int], dtype: str,
          settings: SweepSettings) -> tuple[float, float]:
    m, n, k = shape
    gen = torch.Generator(device=handle.device).manual_seed(m * 7 + n * 5 + k)
    t = DTYPES[dtype]
    sets = [(torch.randn(m, k, device=handle.device, dtype=t, generator=gen),
             torch.randn(k, n, device=handle.device, dtype=t, generator=gen)) for _ in range(2)]
    out = torch.empty(m, n, device=handle.device, dtype=t)

    def run(i: int) -> None:
        a, b = sets[i % 2]
        torch.mm(a, b, out=out)

    return _time(handle, run, _inner(handle, 2.0 * m * n * k, 3e14), settings)


def _memory(handle: DeviceHandle, kernel: str, rows: int, settings: SweepSettings
            ) -> tuple[float, float]:
    t = DTYPES[settings.memory_dtype]
    width = settings.memory_width
    gen = torch.Generator(device=handle.device).manual_seed(rows)
    xs = [torch.randn(rows, width, device=handle.device, dtype=t, generator=gen)
          for _ in range(2)]
    y = torch.randn(rows, width, device=handle.device, dtype=t, generator=gen)
    weight = torch.ones(width, device=handle.device, dtype=t)
    ops: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "layer_norm": lambda x: F.layer_norm(x, (width,), weight, weight),
        "softmax": lambda x: torch.softmax(x, dim=-1),
        "gelu": F.gelu,
        "add": lambda x: x + y,
    }
    op = ops[kernel]
    nbytes = MEMORY_KERNELS[kernel] * rows * width * t.itemsize
    return _time(handle, lambda i: op(xs[i % 2]), _inner(handle, nbytes, 2e12), settings)


def _attention(handle: DeviceHandle, shape: tuple[int, int, int], dtype: str,
               settings: SweepSettings) -> tuple[float, float]:
    heads, seq, dim = shape
    t = DTYPES[dtype]
    gen = torch.Generator(device=handle.device).manual_seed(heads * seq + dim)
    qkv = [tuple(torch.randn(1, heads, seq, dim, device=handle.device, dtype=t, generator=gen)
                 for _ in range(3)) for _ in range(2)]

    def run(i: int) -> None:
        q, k, v = qkv[i % 2]
        F.scaled_dot_product_attention(q, k, v, is_causal=True)

    flops = 2.0 * heads * seq * seq * dim  # causal: half of 4·h·s²·d
    return _time(handle, run, _inner(handle, flops, 2e14), settings)


def run_sweep(handle: DeviceHandle, *, chip: str, settings: SweepSettings, command: str,
              progress: Callable[[str], None] | None = None) -> list[SweepRow]:
    """Time every kernel of ``settings`` on ``handle``; rows in a fixed order."""
    date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    device = device_description(handle)
    rows: list[SweepRow] = []

    def add(kernel: str, dtype: str, shape: tuple[int, int, int], flops: float,
            nbytes: float, timing: tuple[float, float]) -> None:
        rows.append(SweepRow(chip=chip, kernel=kernel, dtype=dtype, m=shape[0], n=shape[1],
                             k=shape[2], flops=flops, nbytes=nbytes, seconds=timing[0],
                             spread=round(timing[1], 6), repeats=settings.repeats,
                             device=device, command=command, date=date))
        if progress is not None:
            progress(f"{kernel} {dtype} {shape[0]}x{shape[1]}x{shape[2]}")

    for dtype in settings.gemm_dtypes:
        size = DTYPES[dtype].itemsize
        for m, n, k in settings.gemm_shapes:
            flops = 2.0 * m * n * k
            if flops > settings.max_flops and dtype == "fp32":
                if progress is not None:
                    progress(f"gemm {dtype} {m}x{n}x{k} skipped")
                continue
            add("gemm", dtype, (m, n, k), flops, float((m * k + k * n + m * n) * size),
                _gemm(handle, (m, n, k), dtype, settings))
        handle.empty_cache()
    width = settings.memory_width
    size = DTYPES[settings.memory_dtype].itemsize
    for kernel, tensors in MEMORY_KERNELS.items():
        for r in settings.memory_rows:
            add(kernel, settings.memory_dtype, (r, width, 0), 0.0,
                float(tensors * r * width * size), _memory(handle, kernel, r, settings))
        handle.empty_cache()
    att_dtype = settings.gemm_dtypes[0]
    for heads, seq, dim in settings.attention_shapes:
        add("attention", att_dtype, (heads, seq, dim), 2.0 * heads * seq * seq * dim,
            float(4 * heads * seq * dim * DTYPES[att_dtype].itemsize),
            _attention(handle, (heads, seq, dim), att_dtype, settings))
    handle.empty_cache()
    return rows


def sweep_size(settings: SweepSettings) -> int:
    """Kernels ``run_sweep`` reports progress for (for a progress bar)."""
    return (len(settings.gemm_shapes) * len(settings.gemm_dtypes)
            + len(settings.memory_rows) * len(MEMORY_KERNELS) + len(settings.attention_shapes))


def write_sweep(rows: Sequence[SweepRow], path: str | Path) -> Path:
    """Write sweep rows as CSV atomically."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row))
    atomic_write_text(Path(path), buf.getvalue())
    return Path(path)


def read_sweep(path: str | Path) -> list[SweepRow]:
    """Read a sweep CSV written by ``write_sweep``; a malformed row names its line."""
    try:
        with open(path, newline="") as fh:
            raw = list(csv.DictReader(fh))
    except OSError as exc:
        raise BadInputError(f"cannot read the kernel sweep ({exc.strerror})", file=str(path),
                            fix="give the CSV written by autosplit profile-chip --sweep") from exc
    out = []
    for line, r in enumerate(raw, start=2):
        try:
            out.append(SweepRow(chip=r["chip"], kernel=r["kernel"], dtype=r["dtype"],
                                m=int(r["m"]), n=int(r["n"]), k=int(r["k"]),
                                flops=float(r["flops"]), nbytes=float(r["nbytes"]),
                                seconds=float(r["seconds"]), spread=float(r["spread"]),
                                repeats=int(r["repeats"]), device=r.get("device", ""),
                                command=r.get("command", ""), date=r.get("date", "")))
        except (KeyError, ValueError, TypeError) as exc:
            raise BadInputError(f"line {line}: malformed sweep row ({exc})", file=str(path),
                                fix="regenerate it with autosplit profile-chip") from exc
    return out
