"""Read Metis' per-(GPU type, TP, batch) profile files.

Metis (Um et al., USENIX ATC 2024; github.com/SamsungLabs/Metis) keeps one JSON file per GPU
type, TP degree and batch size, named ``DeviceType.<GPU>_tp<T>_bs<B>.json``, holding:

- ``model.model_name``, ``model.num_layers``,
  ``model.parameters.parameters_per_layer_bytes`` (per layer);
- ``execution_time.layer_compute_total_ms`` (per layer: forward + backward, in ms), plus
  whole-step figures (``forward_backward_time_ms``, ``optimizer_time_ms``, …);
- ``execution_memory.layer_memory_total_mb`` (per layer, MB; in Metis' own samples this list
  can be one entry shorter than ``num_layers``).

Mapping: layer 0 → ``pre``, last → ``post``, the rest → blocks (median per kind); the batch
size → ``micro_batch``; the GPU type → ``chip``.

What the format lacks: the split between forward and backward (only their sum is recorded;
the importer splits it 1 : 2, the ratio of their FLOPs in a transformer, and says so in the
``method`` column), recomputation, the activation memory on its own (the per-layer memory
mixes weights, gradients, optimizer states and activations, so it is not imported), the
sequence length (give ``--seq-len``), repeats and spread.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from autosplit.errors import BadInputError
from autosplit.profiler.importers import UnitKinds
from autosplit.profiler.store import ProfileRow

__all__ = ["read_metis", "FILE_PATTERN"]

#: ``DeviceType.A100_tp2_bs4.json`` → GPU ``A100``, TP 2, batch 4.
FILE_PATTERN = re.compile(r"^(?:DeviceType\.)?(?P<gpu>.+?)_tp(?P<tp>\d+)_bs(?P<bs>\d+)\.json$")

#: Share of ``layer_compute_total_ms`` attributed to the forward (FLOPs ratio fwd : bwd = 1 : 2).
_FWD_SHARE = 1.0 / 3.0


def _get(data: Any, dotted: str, *, file: str) -> Any:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise BadInputError("missing field", file=file, field=dotted,
                                fix="pass Metis profile files (DeviceType.<GPU>_tp<T>_bs<B>.json)")
        node = node[part]
    return node


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if FILE_PATTERN.match(p.name))
    if not files:
        raise BadInputError("no Metis profile files (DeviceType.<GPU>_tp<T>_bs<B>.json) here",
                            file=str(path), fix="pass Metis' profile directory")
    return files


def read_metis(path: Path, *, chip: str | None, model_name: str | None, seq_len: int | None,
               dtype: str, units: UnitKinds | None,
               command: str) -> tuple[str, list[ProfileRow]]:
    """Rows for every file of a Metis profile directory (or one file)."""
    if not seq_len:
        raise BadInputError("Metis profiles do not record the sequence length", file=str(path),
                            field="--seq-len", fix="give --seq-len N (the length profiled)")
    rows: list[ProfileRow] = []
    model = model_name or ""
    for file_path in _files(path):
        file = str(file_path)
        match = FILE_PATTERN.match(file_path.name)
        if match is None:
            raise BadInputError("file name is not DeviceType.<GPU>_tp<T>_bs<B>.json", file=file,
                                fix="keep Metis' file names: they carry GPU, TP and batch")
        tp, mb = int(match["tp"]), int(match["bs"])
        if tp < 1 or mb < 1:
            raise BadInputError("TP degree and batch size must be positive", file=file)
        try:
            data = json.loads(file_path.read_text())
        except json.JSONDecodeError as exc:
            raise BadInputError(f"not valid JSON: {exc.msg} at line {exc.lineno}",
                                file=file) from exc
        model = model or str(_get(data, "model.model_name", file=file))
        totals = _get(data, "execution_time.layer_compute_total_ms", file=file)
        if (not isinstance(totals, list) or not totals
                or not all(isinstance(v, (int, float)) and v > 0 for v in totals)):
            raise BadInputError("expected a list of positive per-layer times (ms)", file=file,
                                field="execution_time.layer_compute_total_ms")
        num_layers = data.get("model", {}).get("num_layers")
        if isinstance(num_layers, int) and num_layers != len(totals):
            raise BadInputError(f"{len(totals)} layer times for num_layers {num_layers}",
                                file=file, field="execution_time.layer_compute_total_ms")
        kinds = units or UnitKinds.generic(model, len(totals))
        kinds.check(len(totals), file=file)
        grouped: dict[str, list[int]] = {}
        for index, kind in enumerate(kinds.kinds):
            grouped.setdefault(kind, []).append(index)
        for kind, indices in grouped.items():
            total_s = statistics.median(totals[i] for i in indices) / 1e3
            rows.append(ProfileRow(
                chip=chip or match["gpu"], model_fingerprint="", layer_kind=kind,
                unit=kinds.names[indices[0]], seq_len=seq_len, micro_batch=mb, tp=tp,
                dtype=dtype, fwd_s=total_s * _FWD_SHARE, bwd_s=total_s * (1 - _FWD_SHARE),
                recompute_bwd_s=math.nan, activation_bytes=math.nan,
                peak_bwd_bytes=math.nan, repeats=0, spread=math.nan,
                method="imported-metis-split-1:2", device=match["gpu"],
                command=command or f"Metis profile {file}", date=""))
    return model or "model", rows
