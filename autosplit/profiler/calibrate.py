"""Turn chip micro-benchmarks into a calibrated chip entry (``chip.yaml``).

The analytic model multiplies datasheet peaks by two efficiencies; calibration replaces the
guessed efficiencies by measured ones and records, for every figure it touches, that it was
measured, by which command, on which device and when. Datasheet peaks are kept (they are what
a user recognises); only the efficiencies and the host copy bandwidth change. A chip with no
datasheet entry yet (a CPU, say) gets the measured rates as its peaks and efficiency 1.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from autosplit.profiler.chip_bench import BenchResult, best_rate

__all__ = ["calibrated_chip", "surface_peaks", "with_links", "with_surface", "write_chip_yaml"]

_PEAK_KEY = {"bf16": "tflops_bf16", "fp16": "tflops_fp16", "fp32": "tflops_fp32"}


def _physical_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 16.0


def _vendor(device: str) -> str:
    words = re.sub(r"\((r|tm)\)", "", device, flags=re.IGNORECASE).split()
    return words[0] if words else "unknown"


def calibrated_chip(results: Sequence[BenchResult], *, chip: str,
                    base: Mapping[str, Any] | None, command: str) -> dict[str, Any]:
    """A chip mapping: ``base`` (the current ``chip.yaml``) with measured efficiencies.

    Without ``base`` a new entry is made from the measurements alone.
    """
    data: dict[str, Any] = dict(base or {})
    provenance: dict[str, Any] = dict(data.get("provenance") or {})
    if not results:
        return data
    first = results[0]
    where = f"`{command}` on {first.device}, {first.date}"

    def note(key: str, text: str) -> None:
        provenance[key] = {"source": f"{text}; {where}", "confidence": "measured"}

    copy = best_rate(results, "copy")
    if base is None:
        data = {"name": chip, "vendor": _vendor(first.device),
                "description": f"Measured on {first.device}."}
        for dtype, key in _PEAK_KEY.items():
            best = best_rate(results, "gemm", dtype) or best_rate(results, "gemm", "bf16" if
                                                                  dtype == "fp16" else None)
            if best is not None:
                data[key] = round(best.rate, 4)
                note(key, f"measured {best.dtype} GEMM n={best.size}: {best.rate:.3f} TFLOPS")
        data["compute_efficiency"] = 1.0
        note("compute_efficiency", "peaks above are measured rates")
        data["memory_gb"] = round(_physical_memory_gb(), 1)
        provenance["memory_gb"] = {"source": "physical memory of the host", "confidence": "high"}
        if copy is not None:
            data["memory_bw_gbs"] = round(copy.rate, 2)
            data["memory_efficiency"] = 1.0
            note("memory_bw_gbs", f"copy of {copy.size} bytes, read+write: {copy.rate:.1f} GB/s")
        data.setdefault("intra_node_link", "pcie")
        data.setdefault("intra_node_bw_gbs", 25.0)
        provenance["intra_node_bw_gbs"] = {"source": "placeholder (PCIe 4.0 x16 achieved)",
                                           "confidence": "low"}
        data.setdefault("collective_library", "gloo")
        data["host_bw_gbs"] = round(copy.rate / 2, 2) if copy is not None else 25.0
        data["supports_rdma"] = False
    else:
        for dtype, key in _PEAK_KEY.items():
            best = best_rate(results, "gemm", dtype)
            if best is None or key not in data:
                continue
            efficiency = min(1.0, best.rate / float(data[key]))
            data["compute_efficiency"] = round(efficiency, 4)
            note("compute_efficiency", f"best {dtype} GEMM n={best.size}: {best.rate:.1f} TFLOPS "
                 f"/ {key} {float(data[key]):g}")
            break
        if copy is not None and "memory_bw_gbs" in data:
            data["memory_efficiency"] = round(min(1.0, copy.rate / float(data["memory_bw_gbs"])),
                                              4)
            note("memory_efficiency", f"device copy of {copy.size} bytes, read+write: "
                 f"{copy.rate:.1f} GB/s / memory_bw_gbs {float(data['memory_bw_gbs']):g}")
    workspace = next((r for r in results if r.benchmark == "workspace"), None)
    if workspace is not None:
        data["workspace_mb"] = round(workspace.size / 1e6, 3)
        note("workspace_mb", f"bytes held after a {workspace.dtype} product and its backward, "
             f"beyond its tensors: {workspace.size}")
    host = [r for r in (best_rate(results, "h2d"), best_rate(results, "d2h")) if r is not None]
    if host:
        slowest = min(host, key=lambda r: r.rate)
        data["host_bw_gbs"] = round(slowest.rate, 2)
        note("host_bw_gbs", "slower of pinned host->device and device->host copies: "
             + ", ".join(f"{r.benchmark} {r.rate:.1f} GB/s" for r in host))
    data["provenance"] = provenance
    return data


def write_chip_yaml(data: Mapping[str, Any], path: str | Path, *, header: str = "") -> Path:
    """Write a chip mapping as YAML atomically, keys in a stable order."""
    from autosplit.atomic import atomic_write_text

    path = Path(path)
    text = yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, width=100)
    comments = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    atomic_write_text(path, comments + text)
    return path


def surface_peaks(data: Mapping[str, Any]) -> dict[str, float]:
    """The dtype peaks (TFLOPS) a chip mapping gives, which a fitted surface is relative to."""
    return {d: float(data[k]) for d, k in _PEAK_KEY.items() if k in data}


def with_surface(data: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with a measured ``compute_surface`` (``surface_fit.surface_entry``)."""
    out = dict(data)
    out["compute_surface"] = dict(entry)
    return out


def with_links(data: Mapping[str, Any], *, alpha_s: float, beta_gbs: float, source: str
               ) -> dict[str, Any]:
    """``data`` with the intra-node link's fitted latency and bandwidth (``--links``)."""
    out = dict(data)
    provenance = dict(out.get("provenance") or {})
    out["intra_node_latency_us"] = round(alpha_s * 1e6, 3)
    out["intra_node_bw_gbs"] = round(beta_gbs, 3)
    for key in ("intra_node_latency_us", "intra_node_bw_gbs"):
        provenance[key] = {"source": source, "confidence": "measured"}
    out["provenance"] = provenance
    return out

