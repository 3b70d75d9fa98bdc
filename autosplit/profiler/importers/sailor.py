"""Read Sailor's per-GPU layer profiles (``profile.json``) and its ``llm_info.json``.

Sailor (Strati et al., SOSP 2025; github.com/eth-easl/sailor) profiles one GPU type per file,
``sailor/Planner/sailor_planner/profiles/<model>/<gpu>/profile.json``:

    {micro_batch: {tp: {layer_index: [forward_s, backward_s, update_s]}}}

with layer 0 the embedding and the last layer the head, all in seconds. Per-layer memory sizes
are one file for all models, ``sailor/Planner/llm_info.json``:

    {model: {tp: {layer_index: {"act_mem_floats": ..., "params_floats": ..., ...}}}}

(``act_mem_floats`` is the activation memory a layer keeps for its backward, in elements per
sample, as Sailor's own memory estimate uses it). The importer looks for it in the folders
above the profile, up to Sailor's ``Planner/`` folder, or takes ``--llm-info``.

Mapping: forward → ``fwd_s``, backward → ``bwd_s``; index 0 → ``pre``, last → ``post``, the
rest → blocks (one row per distinct kind: the median over the blocks of a kind, because
Sailor's first block often differs by a few percent from the rest); ``act_mem_floats`` × the
dtype's bytes × the micro-batch → ``activation_bytes``; the GPU folder name (``A100-40``) →
a library chip (``A100``), see ``ChipNames``.

What the format lacks: recomputation (``recompute_bwd_s`` is left empty; the provider then
charges one forward), the peak during backward, the sequence length (give ``--seq-len``), the
spread and repeat count, and our ``layer_kind`` keys (give the model file to get them). The
optimizer ``update`` time has no column here: autosplit models the optimizer per stage.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from autosplit.config import DTYPE_BYTES
from autosplit.errors import BadInputError
from autosplit.inputs.validation import validate
from autosplit.profiler.importers.common import ChipNames, read_json
from autosplit.profiler.importers.kinds import UnitKinds
from autosplit.profiler.importers.progress import ImportProgress, ImportSink
from autosplit.profiler.store import ProfileRow

__all__ = ["SailorImport", "read_sailor", "find_llm_info", "LLM_INFO"]

LLM_INFO = "llm_info.json"
_PROFILE = "profile.json"
_FORMAT = "Sailor's profile.json is {micro_batch: {tp: {layer: [fwd_s, bwd_s, update_s]}}}"
_DOC = "docs/profiles.md"
#: Folders above ``<gpu>/`` where Sailor keeps llm_info.json: <model>, profiles,
#: sailor_planner, Planner.
_LLM_INFO_DEPTH = 4


class _LayerMemory(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    act_mem_floats: Annotated[float, Field(ge=0)]


#: One model's entry of llm_info.json: {tp: {layer: {act_mem_floats: ...}}}.
_ModelMemory = dict[str, dict[str, _LayerMemory]]


@dataclass(frozen=True)
class SailorImport:
    """What one import read: the model name, the rows, and what the user should know."""

    model: str
    rows: list[ProfileRow]
    notes: list[str]
    #: profile.json files read
    files: int = 0


def _int_key(key: str, *, file: str, field: str) -> int:
    try:
        value = int(key)
    except (TypeError, ValueError):
        raise BadInputError(f"key '{key}' is not an integer", file=file, field=field,
                            fix=_FORMAT) from None
    if value < 0:
        raise BadInputError(f"key '{key}' is negative", file=file, field=field, fix=_FORMAT)
    return value


def _profiles(path: Path) -> list[Path]:
    """The profile.json files of ``path``: itself, ``<gpu>/profile.json``, or one per GPU
    folder of a ``<model>/`` folder."""
    if not path.is_dir():
        return [path]  # a file, or a FIFO or device the reader refuses
    if _present(path / _PROFILE):
        return [path / _PROFILE]
    found = sorted(p / _PROFILE for p in path.iterdir() if p.is_dir() and _present(p / _PROFILE))
    if not found:
        raise BadInputError("no profile.json here", file=str(path),
                            fix="pass Sailor's <model>/<gpu>/ folder, a <model>/ folder, or a "
                                "profile.json")
    return found


def _present(path: Path) -> bool:
    """Exists, as a file or not (a profile.json that is a FIFO is refused when read, not
    skipped)."""
    return path.exists() or path.is_symlink()


def find_llm_info(profile: Path) -> Path | None:
    """Sailor's llm_info.json for ``profile``: next to it or in a folder above, up to
    Sailor's ``Planner/`` folder."""
    folder = profile.resolve().parent
    for candidate in [folder, *folder.parents[:_LLM_INFO_DEPTH]]:
        if (candidate / LLM_INFO).is_file():
            return candidate / LLM_INFO
    return None


def _activations(info_file: Path | None, *, model: str, layers: int,
                 notes: list[str]) -> dict[int, list[float]]:
    """Activation floats per layer, per TP degree, for ``model`` ({} when unknown)."""
    if info_file is None:
        notes.append(f"no {LLM_INFO} found next to the profile or above it: activation memory "
                     "is left empty (the cost model's estimate is used); pass --llm-info FILE")
        return {}
    data = read_json(info_file, what="Sailor llm_info.json",
                     fix="pass Sailor's sailor/Planner/llm_info.json")
    if not isinstance(data, dict) or model not in data:
        known = ", ".join(sorted(map(str, data))) if isinstance(data, dict) else "none"
        notes.append(f"{info_file} has no entry for model '{model}' (it has: {known}): "
                     "activation memory is left empty; pass --model-name to pick the entry")
        return {}
    entry = validate(_ModelMemory, json.dumps(data[model]), file=str(info_file), doc=_DOC,
                     field_prefix=model, from_json=True)
    out: dict[int, list[float]] = {}
    for tp_key, per_layer in entry.items():
        tp = _int_key(tp_key, file=str(info_file), field=f"{model}.{tp_key}")
        indexed = sorted((_int_key(k, file=str(info_file), field=f"{model}.{tp_key}"), v)
                         for k, v in per_layer.items())
        if [i for i, _ in indexed] != list(range(layers)):
            notes.append(f"{info_file}: {model} at TP {tp} lists {len(indexed)} layers, the "
                         f"profile {layers}: its activation memory is not used")
            continue
        out[tp] = [v.act_mem_floats for _, v in indexed]
    if out:
        notes.append(f"activation memory from {info_file} (model '{model}', TP "
                     f"{', '.join(map(str, sorted(out)))})")
    return out


def _times(layers: Any, *, file: str, where: str) -> list[tuple[float, float]]:
    if not isinstance(layers, dict) or not layers:
        raise BadInputError("expected {layer: [fwd, bwd, update]}", file=file, field=where,
                            fix=_FORMAT)
    indexed = sorted((_int_key(k, file=file, field=where), v) for k, v in layers.items())
    if [i for i, _ in indexed] != list(range(len(indexed))):
        raise BadInputError("layer indices must run 0, 1, … without gaps", file=file,
                            field=where, fix=_FORMAT)
    times = []
    for index, value in indexed:
        pair = value[:2] if isinstance(value, list) else []
        if (len(pair) < 2 or any(isinstance(v, bool) or not isinstance(v, int | float)
                                 or not math.isfinite(v) or v < 0 for v in pair)):
            raise BadInputError("expected [forward_s, backward_s, update_s] (finite seconds "
                                "≥ 0)", file=file, field=f"{where}.{index}", fix=_FORMAT)
        if pair[0] <= 0:
            raise BadInputError(f"forward time of layer {index} is not positive", file=file,
                                field=f"{where}.{index}", fix="pass the profile as Sailor "
                                                                "measured it")
        times.append((float(pair[0]), float(pair[1])))
    return times


def _rows_for(times: list[tuple[float, float]], acts: list[float] | None, kinds: UnitKinds, *,
              chip: str, gpu: str, mb: int, tp: int, dtype: str, seq_len: int, command: str,
              file: str) -> list[ProfileRow]:
    grouped: dict[str, list[int]] = {}
    for index, kind in enumerate(kinds.kinds):
        grouped.setdefault(kind, []).append(index)
    rows = []
    for kind, indices in grouped.items():
        fwd = statistics.median(times[i][0] for i in indices)
        # Sailor writes 1e-6 s for the embedding's backward: keep it positive, as measured.
        bwd = max(statistics.median(times[i][1] for i in indices), 1e-9)
        act = math.nan
        if acts is not None:
            act = statistics.median(acts[i] for i in indices) * DTYPE_BYTES[dtype] * mb
        rows.append(ProfileRow(
            chip=chip, model_fingerprint="", layer_kind=kind, unit=kinds.names[indices[0]],
            seq_len=seq_len, micro_batch=mb, tp=tp, dtype=dtype, fwd_s=fwd, bwd_s=bwd,
            recompute_bwd_s=math.nan, activation_bytes=act, peak_bwd_bytes=math.nan,
            repeats=0, spread=math.nan, method="imported-sailor", device=gpu,
            command=command or f"Sailor profile {file}", date="",
            structure=kinds.structure(indices[0])))
    return rows


def _read_one(profile: Path, *, chip: str, model: str, seq_len: int, dtype: str,
              units: UnitKinds | None, command: str, info_file: Path | None,
              notes: list[str]) -> list[ProfileRow]:
    file = str(profile)
    data = read_json(profile, what="Sailor profile", fix="pass Sailor's profile.json")
    if not isinstance(data, dict) or not data:
        raise BadInputError("expected {micro_batch: {tp: {layer: [fwd, bwd, update]}}}",
                            file=file, fix=_FORMAT)
    rows: list[ProfileRow] = []
    acts: dict[int, list[float]] | None = None
    for mb_key, per_tp in sorted(data.items(), key=lambda kv: str(kv[0])):
        mb = _int_key(mb_key, file=file, field="micro_batch")
        if mb < 1 or not isinstance(per_tp, dict):
            raise BadInputError(f"micro-batch {mb_key}: expected a positive size mapping to "
                                "{tp: {...}}", file=file, field=str(mb_key), fix=_FORMAT)
        for tp_key, layers in per_tp.items():
            tp = _int_key(tp_key, file=file, field=f"{mb_key}.tp")
            if tp < 1:
                raise BadInputError("TP degree must be at least 1", file=file,
                                    field=f"{mb_key}.{tp_key}", fix=_FORMAT)
            times = _times(layers, file=file, where=f"{mb_key}.{tp_key}")
            kinds = units or UnitKinds.generic(model, len(times))
            kinds.check(len(times), file=file)
            if acts is None:
                acts = _activations(info_file, model=model, layers=len(times), notes=notes)
            rows.extend(_rows_for(times, acts.get(tp), kinds, chip=chip, gpu=profile.parent.name,
                                  mb=mb, tp=tp, dtype=dtype, seq_len=seq_len, command=command,
                                  file=file))
    return rows


def read_sailor(path: Path, *, names: ChipNames, chip: str | None, model_name: str | None,
                seq_len: int | None, dtype: str, units: UnitKinds | None, command: str,
                llm_info: Path | None = None, progress: ImportSink | None = None
                ) -> SailorImport:
    """Rows for every (GPU, micro-batch, TP, layer kind) of a Sailor profile folder or file
    (``progress`` hears of each profile.json read)."""
    profiles = _profiles(path)
    if not seq_len:
        raise BadInputError("Sailor profiles do not record the sequence length",
                            file=str(profiles[0]), field="--seq-len",
                            fix="give --seq-len N (the length profiled)")
    gpus = [p.parent.name for p in profiles]
    if chip and len(profiles) > 1:
        raise BadInputError(f"--chip names one chip, but {path} holds profiles of "
                            f"{len(profiles)} GPUs ({', '.join(gpus)})", field="--chip",
                            fix="import one <gpu>/ folder at a time with --chip, or drop "
                                "--chip to map each GPU name to its chip")
    model = model_name or profiles[0].parent.parent.name or "model"
    notes: list[str] = []
    rows: list[ProfileRow] = []
    for done, (profile, gpu) in enumerate(zip(profiles, gpus, strict=True), start=1):
        target = (names.chip_option(chip) if chip else
                  names.chip_for(gpu, tool="Sailor", file=str(profile)))
        info = llm_info if llm_info is not None else find_llm_info(profile)
        rows.extend(_read_one(profile, chip=target, model=model, seq_len=seq_len, dtype=dtype,
                              units=units, command=command, info_file=info, notes=notes))
        if progress is not None:
            progress(ImportProgress(files_read=done, files_total=len(profiles),
                                    rows_read=len(rows)))
    return SailorImport(model=model, rows=rows, notes=notes, files=len(profiles))
