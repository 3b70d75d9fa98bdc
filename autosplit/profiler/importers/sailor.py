"""Read Sailor's per-GPU layer profiles (``profile.json`` + ``llm_info.json``).

Sailor (Strati et al., SOSP 2025; github.com/eth-easl/sailor) profiles one GPU type per file:

    profile.json:  {micro_batch: {tp: {layer_index: [forward_s, backward_s, update_s]}}}

with layer 0 the embedding and the last layer the head, all in seconds. Its companion
``llm_info.json`` gives per-layer parameter and activation sizes in floats (element counts) per
TP degree. The files sit in ``<model>/<gpu>/``, so the GPU type (our chip) and the model name
default to the two folder names.

Mapping: forward → ``fwd_s``, backward → ``bwd_s``; index 0 → ``pre``, last → ``post``, the
rest → blocks (one row per distinct kind: the median over the blocks of a kind, because
Sailor's first block often differs by a few percent from the rest). Activation floats × the
dtype's bytes × the micro-batch → ``activation_bytes``.

What the format lacks: recomputation (``recompute_bwd_s`` is left empty; the provider then
charges one forward), the peak during backward, the sequence length (give ``--seq-len``), the
spread and repeat count, and our ``layer_kind`` keys (give the model file to get them). The
optimizer ``update`` time has no column here: autosplit models the optimizer per stage.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from autosplit.config import DTYPE_BYTES
from autosplit.errors import BadInputError
from autosplit.profiler.importers import UnitKinds
from autosplit.profiler.store import ProfileRow

__all__ = ["read_sailor", "read_llm_info"]


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise BadInputError(f"cannot read ({exc.strerror})", file=str(path)) from exc
    except json.JSONDecodeError as exc:
        raise BadInputError(f"not valid JSON: {exc.msg} at line {exc.lineno}",
                            file=str(path), fix="pass Sailor's profile.json") from exc


def _int_key(key: str, *, file: str, field: str) -> int:
    try:
        value = int(key)
    except (TypeError, ValueError):
        raise BadInputError(f"key '{key}' is not an integer", file=file, field=field,
                            fix="Sailor's profile.json is {micro_batch: {tp: {layer: "
                                "[fwd, bwd, update]}}}") from None
    if value < 0:
        raise BadInputError(f"key '{key}' is negative", file=file, field=field)
    return value


def read_llm_info(path: Path) -> dict[int, dict[str, list[float]]]:
    """``{tp: {"params": [...], "activations": [...]}}`` from an ``llm_info.json``.

    Accepted shape: a mapping from TP degree to a mapping whose per-layer lists (or
    ``{layer: value}`` mappings) are recognised by key: a key containing ``param`` gives
    parameter floats, one containing ``act`` activation floats. Other keys are ignored.
    """
    data = _load_json(path)
    if not isinstance(data, dict):
        raise BadInputError("expected a mapping of TP degree to per-layer sizes",
                            file=str(path))
    out: dict[int, dict[str, list[float]]] = {}
    for tp_key, entry in data.items():
        try:
            tp = int(tp_key)
        except (TypeError, ValueError):
            continue  # metadata such as the model name
        if not isinstance(entry, dict):
            continue
        found: dict[str, list[float]] = {}
        for key, values in entry.items():
            target = ("params" if "param" in key.lower()
                      else "activations" if "act" in key.lower() else None)
            if target is None or target in found:
                continue
            if isinstance(values, dict):
                values = [values[k] for k in sorted(values, key=lambda k: int(k))]
            if not isinstance(values, list):
                raise BadInputError("expected a per-layer list", file=str(path),
                                    field=f"{tp_key}.{key}")
            try:
                found[target] = [float(v) for v in values]
            except (TypeError, ValueError):
                raise BadInputError("per-layer values must be numbers", file=str(path),
                                    field=f"{tp_key}.{key}") from None
        out[tp] = found
    return out


def _find(path: Path) -> tuple[Path, Path | None]:
    profile = path / "profile.json" if path.is_dir() else path
    if not profile.is_file():
        raise BadInputError("no profile.json here", file=str(path),
                            fix="pass Sailor's <model>/<gpu>/ folder or its profile.json")
    info = None
    for candidate in (profile.parent / "llm_info.json", profile.parent.parent / "llm_info.json"):
        if candidate.is_file():
            info = candidate
            break
    return profile, info


def read_sailor(path: Path, *, chip: str | None, model_name: str | None,
                seq_len: int | None, dtype: str, units: UnitKinds | None,
                command: str) -> tuple[str, list[ProfileRow]]:
    """Rows for every (micro-batch, TP, layer kind) in a Sailor profile."""
    profile_file, info_file = _find(path)
    file = str(profile_file)
    data = _load_json(profile_file)
    if not isinstance(data, dict) or not data:
        raise BadInputError("expected {micro_batch: {tp: {layer: [fwd, bwd, update]}}}",
                            file=file)
    chip = chip or profile_file.parent.name
    model = model_name or profile_file.parent.parent.name or "model"
    if not seq_len:
        raise BadInputError("Sailor profiles do not record the sequence length", file=file,
                            field="--seq-len", fix="give --seq-len N (the length profiled)")
    info = read_llm_info(info_file) if info_file is not None else {}
    rows: list[ProfileRow] = []
    for mb_key, per_tp in sorted(data.items(), key=lambda kv: str(kv[0])):
        mb = _int_key(mb_key, file=file, field="micro_batch")
        if mb < 1 or not isinstance(per_tp, dict):
            raise BadInputError(f"micro-batch {mb_key}: expected a positive size mapping to "
                                "{tp: {...}}", file=file, field=str(mb_key))
        for tp_key, layers in per_tp.items():
            tp = _int_key(tp_key, file=file, field=f"{mb_key}.tp")
            if tp < 1 or not isinstance(layers, dict) or not layers:
                raise BadInputError("expected {layer: [fwd, bwd, update]}", file=file,
                                    field=f"{mb_key}.{tp_key}")
            indexed = sorted((_int_key(k, file=file, field=f"{mb_key}.{tp_key}"), v)
                             for k, v in layers.items())
            if [i for i, _ in indexed] != list(range(len(indexed))):
                raise BadInputError("layer indices must run 0, 1, … without gaps", file=file,
                                    field=f"{mb_key}.{tp_key}")
            times = []
            for index, value in indexed:
                if (not isinstance(value, list) or len(value) < 2
                        or not all(isinstance(v, (int, float)) for v in value[:2])):
                    raise BadInputError("expected [forward_s, backward_s, update_s]",
                                        file=file, field=f"{mb_key}.{tp_key}.{index}")
                times.append((float(value[0]), float(value[1])))
            kinds = units or UnitKinds.generic(model, len(times))
            kinds.check(len(times), file=file)
            acts = info.get(tp, {}).get("activations")
            rows.extend(_rows_for(times, acts, kinds, chip=chip, mb=mb, tp=tp, dtype=dtype,
                                  seq_len=seq_len, command=command, file=file))
    return model, rows


def _rows_for(times: list[tuple[float, float]], acts: list[float] | None, kinds: UnitKinds, *,
              chip: str, mb: int, tp: int, dtype: str, seq_len: int, command: str,
              file: str) -> list[ProfileRow]:
    grouped: dict[str, list[int]] = {}
    for index, kind in enumerate(kinds.kinds):
        grouped.setdefault(kind, []).append(index)
    rows = []
    for kind, indices in grouped.items():
        fwd = statistics.median(times[i][0] for i in indices)
        # Sailor writes 1e-6 s for the embedding's backward: keep it positive, as measured.
        bwd = max(statistics.median(times[i][1] for i in indices), 1e-9)
        if fwd <= 0:
            raise BadInputError(f"forward time of layer {indices[0]} is not positive",
                                file=file, field=f"{mb}.{tp}.{indices[0]}")
        act = math.nan
        if acts is not None and len(acts) == len(kinds.names):
            act = statistics.median(acts[i] for i in indices) * DTYPE_BYTES[dtype] * mb
        rows.append(ProfileRow(
            chip=chip, model_fingerprint="", layer_kind=kind, unit=kinds.names[indices[0]],
            seq_len=seq_len, micro_batch=mb, tp=tp, dtype=dtype, fwd_s=fwd, bwd_s=bwd,
            recompute_bwd_s=math.nan, activation_bytes=act, peak_bwd_bytes=math.nan,
            repeats=0, spread=math.nan, method="imported-sailor", device=chip,
            command=command or f"Sailor profile {file}", date=""))
    return rows
