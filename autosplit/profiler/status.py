"""Profiles of a model that exist but are not used, with the reason and the command that fixes it.

A search that silently falls back to the analytic model when a measured profile of the same
model sits in the chip library is wrong by 25-60 % without a word. So every profile file that
belongs to the model being searched — it measures one of its units (same structure or layer
kind), or it was taken of the same model file with the same model arguments (its ``command``
says so) — yet gives the search no row is reported: which file, which chip, how many rows, why
(another dtype, another sequence length, a changed structure, written before rows carried a
structure key) and the command that measures what the search needs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autosplit.model.types import LayerProfile, ModelProfile
from autosplit.profiler.store import ProfileRow
from autosplit.profiler.structure import same_work, structure_changes, unit_structure

__all__ = ["ProfileMismatch", "find_mismatches", "format_mismatches", "profile_notes",
           "measured_of", "row_matches"]

#: Options of ``autosplit profile`` whose value is replaced in a re-measure command.
_REPLACED = ("--dtype", "--seq-len", "--output", "-o")


def row_matches(row: ProfileRow, layer: LayerProfile, *, structure: str, fingerprint: str,
                first_unit: str) -> bool:
    """Whether ``row`` measures ``layer`` (any chip, TP, dtype or sequence length): the same
    structure key, the same ``layer_kind``, or — for rows of this very model file (same
    fingerprint) — the unit the profiler measured for that kind."""
    if row.structure:
        return row.structure == structure
    if row.layer_kind == (layer.layer_kind or layer.name):
        return True
    return bool(fingerprint) and row.model_fingerprint == fingerprint and row.unit == first_unit


@dataclass(frozen=True)
class ProfileMismatch:
    """One file's rows for one chip that the search does not use, and why."""

    file: Path
    chip: str
    rows: int
    reason: str
    fix: str


@dataclass(frozen=True)
class _Model:
    """What the rows are compared with: the model, its units' structure keys."""

    profile: ModelProfile
    structures: dict[str, str]
    first_unit: dict[str, str]

    @staticmethod
    def of(profile: ModelProfile) -> _Model:
        first: dict[str, str] = {}
        for layer in profile.layers:
            first.setdefault(layer.layer_kind or layer.name, layer.name)
        return _Model(profile=profile,
                      structures={u.name: unit_structure(u).key for u in profile.layers},
                      first_unit=first)

    def matching(self, row: ProfileRow) -> list[LayerProfile]:
        """The units ``row`` measures, in any dtype (at the same sequence length, where only
        byte counts may differ)."""
        return [u for u in self.profile.layers
                if row_matches(row, u, structure=self.structures[u.name],
                               fingerprint=self.profile.fingerprint,
                               first_unit=self.first_unit.get(u.layer_kind or u.name, ""))
                or (row.structure and row.dtype != self.profile.dtype
                    and row.seq_len == self.profile.seq_len
                    and same_work(row.structure, self.structures[u.name]))]


def measured_of(command: str) -> tuple[str, dict[str, str]] | None:
    """The model file's name and model arguments a row's ``command`` was run with
    (``autosplit profile FILE -a k=v`` or ``autosplit profile-import … --model FILE``)."""
    try:
        tokens = shlex.split(command)
    except ValueError:
        return None
    if len(tokens) < 3 or tokens[0] != "autosplit":
        return None
    file = ""
    if tokens[1] == "profile":
        file = tokens[2]
    args: dict[str, str] = {}
    for i, token in enumerate(tokens):
        value = None
        if token.startswith("--model-arg="):
            value = token.split("=", 1)[1]
        elif token in ("--model-arg", "-a") and i + 1 < len(tokens):
            value = tokens[i + 1]
        elif token == "--model" and i + 1 < len(tokens):
            file = tokens[i + 1]
        if value is not None and "=" in value:
            key, _, val = value.partition("=")
            args[key] = val
    return (Path(file).name, args) if file else None


def _same_model(row: ProfileRow, model: ModelProfile) -> bool:
    measured = measured_of(row.command)
    return measured is not None and measured == (Path(model.source_file).name,
                                                 dict(model.model_args))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "model"


def _renamed(path: Path, model: ModelProfile) -> Path:
    """``path`` named for the model's sequence length and dtype (``gpt-1.3b-s2048-bf16.csv``
    becomes ``gpt-1.3b-s2048-fp16.csv``), so measuring it leaves the other file alone."""
    suffix = f"-s{model.seq_len}-{model.dtype}.csv"
    name = re.sub(r"-s\d+-(bf16|fp16|fp32)\.csv$", suffix, path.name)
    if name == path.name:
        name = _slug(model.name) + suffix
    return path.with_name(name)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _remeasure(row: ProfileRow, model: ModelProfile, output: Path) -> str:
    """``autosplit profile`` for ``row``'s chip with the model's dtype and sequence length."""
    tokens = shlex.split(row.command) if row.command.startswith("autosplit profile ") else []
    if not tokens:
        device = "cpu" if row.device.lower().startswith("cpu") or not row.device else "cuda"
        tokens = ["autosplit", "profile", model.source_file, "--device", device, "--chip",
                  row.chip, *[f"--model-arg={k}={v}" for k, v in sorted(model.model_args.items())]]
    kept: list[str] = []
    skip = False
    for token in tokens:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in _REPLACED:
            skip = "=" not in token
            continue
        kept.append(token)
    kept[2] = model.source_file
    kept += ["--seq-len", str(model.seq_len), "--dtype", model.dtype, "-o", _shown(output)]
    return " ".join(shlex.quote(t) for t in kept)


def _reason(row: ProfileRow, model: _Model, matched: Sequence[LayerProfile]) -> str | None:
    """Why ``row`` is not used (None: it is used, or it belongs to another model)."""
    profile = model.profile
    same_model = _same_model(row, profile)
    if matched or same_model:
        if row.dtype != profile.dtype:
            return f"rows are {row.dtype}, the model is costed in {profile.dtype} (--dtype)"
        if row.seq_len != profile.seq_len:
            return (f"rows are of sequence length {row.seq_len}, the model is costed at "
                    f"{profile.seq_len} (--seq-len)")
    if matched or not same_model:
        return None
    current = model.structures.get(row.unit)
    if row.structure and current is not None:
        changes = structure_changes(row.structure, current)
        return f"the model's unit {row.unit} changed ({'; '.join(changes[:3])})"
    if row.structure:
        return f"the model has no unit {row.unit} any more"
    return (f"measured of another version of {Path(profile.source_file).name} (fingerprint "
            f"{row.model_fingerprint or 'none'}, now {profile.fingerprint}), before rows "
            "carried structure keys")


def find_mismatches(model: ModelProfile, files: Sequence[tuple[Path, Sequence[ProfileRow]]]
                    ) -> list[ProfileMismatch]:
    """The files' rows that belong to ``model`` but give its search nothing (module doc)."""
    compared = _Model.of(model)
    grouped: dict[tuple[Path, str, str], list[ProfileRow]] = {}
    for path, rows in files:
        for row in rows:
            reason = _reason(row, compared, compared.matching(row))
            if reason is not None:
                grouped.setdefault((path, row.chip, reason), []).append(row)
    out = []
    for (path, chip, reason), rows in sorted(grouped.items(), key=lambda kv: (str(kv[0][0]),
                                                                             kv[0][1],
                                                                             kv[0][2])):
        same_shape = rows[0].dtype == model.dtype and rows[0].seq_len == model.seq_len
        target = path if same_shape else _renamed(path, model)
        out.append(ProfileMismatch(file=path, chip=chip, rows=len(rows), reason=reason,
                                   fix=_remeasure(rows[0], model, target)))
    return out


def format_mismatches(mismatches: Sequence[ProfileMismatch]) -> list[str]:
    """One line per mismatch: the file, the chip, the reason and the fix."""
    return [f"profile {_shown(m.file)} ({m.chip}, {m.rows} row{'s' if m.rows != 1 else ''}) is not "
            f"used: {m.reason}; the analytic model stands in. Measure what is needed with: "
            f"{m.fix}" for m in mismatches]


def profile_notes(costs: object) -> list[str]:
    """The mismatch lines of a cost provider (none for providers that keep no profiles)."""
    return format_mismatches(getattr(costs, "mismatches", ()))
