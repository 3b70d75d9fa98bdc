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
size → ``micro_batch``; the GPU type → a library chip (``ChipNames``). The fields read are
declared as a pydantic model (``MetisProfile``); other fields are ignored.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from autosplit.errors import BadInputError
from autosplit.inputs.validation import Hint, validate
from autosplit.profiler.importers.common import ChipNames, read_json
from autosplit.profiler.importers.kinds import UnitKinds
from autosplit.profiler.importers.progress import ImportProgress, ImportSink
from autosplit.profiler.store import ProfileRow

__all__ = ["FILE_PATTERN", "MetisImport", "MetisProfile", "read_metis"]

#: ``DeviceType.A100_tp2_bs4.json`` → GPU ``A100``, TP 2, batch 4.
FILE_PATTERN = re.compile(r"^(?:DeviceType\.)?(?P<gpu>.+?)_tp(?P<tp>\d+)_bs(?P<bs>\d+)\.json$")

#: Share of ``layer_compute_total_ms`` attributed to the forward (FLOPs ratio fwd : bwd = 1 : 2).
_FWD_SHARE = 1.0 / 3.0
_FIX = "pass Metis profile files (DeviceType.<GPU>_tp<T>_bs<B>.json)"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model_name: StrictStr = ""
    num_layers: StrictInt | None = None


class _Times(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    layer_compute_total_ms: Annotated[
        list[Annotated[float, Field(gt=0)]], Field(min_length=1),
        Hint("give the positive per-layer times (ms) Metis measured")]


class MetisProfile(BaseModel):
    """The part of a Metis profile file the importer reads."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: _Model = Field(default_factory=_Model)
    # Validated even when absent, so the missing field is named by its full path.
    execution_time: _Times = Field(default_factory=dict, validate_default=True)


@dataclass(frozen=True)
class MetisImport:
    """What one import read: the model name, the rows, and what the user should know."""

    model: str
    rows: list[ProfileRow]
    notes: list[str]
    #: profile files read
    files: int = 0


def _files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]  # a file, or a FIFO or device the reader refuses
    files = sorted(p for p in path.iterdir() if FILE_PATTERN.match(p.name))
    if not files:
        raise BadInputError("no Metis profile files (DeviceType.<GPU>_tp<T>_bs<B>.json) here",
                            file=str(path), fix="pass Metis' profile directory")
    return files


def _profile(file_path: Path) -> MetisProfile:
    file = str(file_path)
    data = read_json(file_path, what="Metis profile", fix=_FIX)
    if not isinstance(data, dict):
        raise BadInputError("expected a JSON object", file=file, fix=_FIX)
    return validate(MetisProfile, json.dumps(data), file=file, doc="docs/profiles.md",
                    from_json=True)


def read_metis(path: Path, *, names: ChipNames, chip: str | None, model_name: str | None,
               seq_len: int | None, dtype: str, units: UnitKinds | None,
               command: str, progress: ImportSink | None = None) -> MetisImport:
    """Rows for every file of a Metis profile directory (or one file); ``progress`` hears
    of each file read."""
    if not seq_len:
        raise BadInputError("Metis profiles do not record the sequence length", file=str(path),
                            field="--seq-len", fix="give --seq-len N (the length profiled)")
    rows: list[ProfileRow] = []
    model = model_name or ""
    target = names.chip_option(chip) if chip else None
    files = _files(path)
    for done, file_path in enumerate(files, start=1):
        file = str(file_path)
        match = FILE_PATTERN.match(file_path.name)
        if match is None:
            raise BadInputError("file name is not DeviceType.<GPU>_tp<T>_bs<B>.json", file=file,
                                fix="keep Metis' file names: they carry GPU, TP and batch")
        tp, mb = int(match["tp"]), int(match["bs"])
        if tp < 1 or mb < 1:
            raise BadInputError("TP degree and batch size must be positive", file=file,
                                fix="keep Metis' file names: they carry GPU, TP and batch")
        profile = _profile(file_path)
        if not model and not profile.model.model_name:
            raise BadInputError("missing required field", file=file, field="model.model_name",
                                fix="pass --model-name NAME")
        model = model or profile.model.model_name
        totals = profile.execution_time.layer_compute_total_ms
        num_layers = profile.model.num_layers
        if num_layers is not None and num_layers != len(totals):
            raise BadInputError(f"{len(totals)} layer times for num_layers {num_layers}",
                                file=file, field="execution_time.layer_compute_total_ms",
                                fix="pass the profile as Metis wrote it")
        kinds = units or UnitKinds.generic(model, len(totals))
        kinds.check(len(totals), file=file)
        grouped: dict[str, list[int]] = {}
        for index, kind in enumerate(kinds.kinds):
            grouped.setdefault(kind, []).append(index)
        stored = target or names.chip_for(match["gpu"], tool="Metis", file=file)
        for kind, indices in grouped.items():
            total_s = statistics.median(totals[i] for i in indices) / 1e3
            rows.append(ProfileRow(
                chip=stored, model_fingerprint="", layer_kind=kind,
                unit=kinds.names[indices[0]], seq_len=seq_len, micro_batch=mb, tp=tp,
                dtype=dtype, fwd_s=total_s * _FWD_SHARE, bwd_s=total_s * (1 - _FWD_SHARE),
                recompute_bwd_s=math.nan, activation_bytes=math.nan,
                peak_bwd_bytes=math.nan, repeats=0, spread=math.nan,
                method="imported-metis-split-1:2", device=match["gpu"],
                command=command or f"Metis profile {file}", date="",
                structure=kinds.structure(indices[0])))
        if progress is not None:
            progress(ImportProgress(files_read=done, files_total=len(files),
                                    rows_read=len(rows)))
    notes = ["Metis records forward + backward only: split 1 : 2 (method "
             "imported-metis-split-1:2); activation memory is left empty"]
    return MetisImport(model=model or "model", rows=rows, notes=notes, files=len(files))
