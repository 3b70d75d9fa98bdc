"""Importers for other planners' profiles (Sailor, Metis) into autosplit's profile store.

Each importer reads the other tool's files, maps its layer indices onto partition units
(index 0 = embedding = ``pre``, last = head = ``post``, the rest blocks), maps its GPU names to
library chips, and returns ``ProfileRow``s; ``import_profiles`` writes them to
``DIR/<chip>/measured/<name>.csv`` and reports what it did — which chip each GPU name became,
where activation memory came from, and which searches can use the rows (their dtype, sequence
length and layer kinds must match). What each format lacks is documented in docs/profiles.md
and in each importer's docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from autosplit.errors import BadInputError
from autosplit.profiler.importers.common import ChipNames
from autosplit.profiler.importers.kinds import UnitKinds
from autosplit.profiler.importers.progress import ImportProgress, ImportSink
from autosplit.profiler.store import ProfileRow, write_rows

__all__ = ["FORMATS", "ImportProgress", "ImportReport", "ImportSink", "UnitKinds",
           "import_profiles"]

FORMATS: tuple[str, ...] = ("sailor", "metis")


@dataclass(frozen=True)
class ImportReport:
    """The files an import wrote, and what the user should know about them."""

    files: tuple[Path, ...]
    rows: int
    notes: tuple[str, ...]


def import_profiles(path: str | Path, *, fmt: str, output: str | Path, chip: str | None = None,
                    model_name: str | None = None, seq_len: int | None = None,
                    dtype: str = "bf16", units: UnitKinds | None = None, command: str = "",
                    chip_dirs: Sequence[Path] = (), llm_info: Path | None = None,
                    progress: ImportSink | None = None) -> ImportReport:
    """Convert ``path`` (a file or directory in format ``fmt``) and write the store files.

    GPU names are mapped to chips of the library (plus ``chip_dirs`` and chip folders in
    ``output``); ``llm_info`` is Sailor's llm_info.json when it is not found beside the
    profile. Nothing is written when any input is refused. ``progress`` hears of each file
    read and each store file written.
    """
    if fmt not in FORMATS:
        raise BadInputError(f"unknown format '{fmt}'", field="--format",
                            fix="use one of: " + ", ".join(FORMATS))
    path, output = Path(path), Path(output)
    if not path.exists():
        raise BadInputError("profile path not found", file=str(path),
                            fix="pass the profile file or directory")
    if output.exists() and not output.is_dir():
        raise BadInputError("is a file, not a folder", file=str(output), field="--output",
                            fix="give the folder that holds <chip>/measured/ (e.g. profiles/)")
    for folder in map(Path, chip_dirs):
        if not folder.is_dir():
            raise BadInputError("chip directory not found (or not a folder)", file=str(folder),
                                field="--chips-dir",
                                fix="give a directory holding <chip>/chip.yaml folders")
    names = ChipNames.load([*chip_dirs, output])
    if fmt == "sailor":
        from autosplit.profiler.importers.sailor import read_sailor

        read = read_sailor(path, names=names, chip=chip, model_name=model_name,
                           seq_len=seq_len, dtype=dtype, units=units, command=command,
                           llm_info=llm_info, progress=progress)
    else:
        from autosplit.profiler.importers.metis import read_metis

        read = read_metis(path, names=names, chip=chip, model_name=model_name, seq_len=seq_len,
                          dtype=dtype, units=units, command=command, progress=progress)
    read_all = ImportProgress(files_read=read.files, files_total=read.files,
                              rows_read=len(read.rows))
    files = _write_by_chip(read.rows, output, fmt=fmt, model=read.model, read=read_all,
                           progress=progress)
    notes = [*names.notes, *read.notes, _usable_by(read.rows, generic=units is None,
                                                   model=read.model)]
    return ImportReport(files=tuple(files), rows=len(read.rows), notes=tuple(notes))


def _usable_by(rows: Sequence[ProfileRow], *, generic: bool, model: str) -> str:
    """Which searches will use the rows: the shape keys a search matches them by."""
    chips = ", ".join(sorted({r.chip for r in rows}))
    dtypes = ", ".join(sorted({r.dtype for r in rows}))
    seqs = ", ".join(str(s) for s in sorted({r.seq_len for r in rows}))
    text = (f"a search uses these rows for {chips} nodes with --dtype {dtypes} and --seq-len "
            f"{seqs}; other dtypes and lengths use the analytic model")
    if generic:
        text += (f". Their layer kinds are generic ({model}:pre, {model}:block, {model}:post), "
                 "which no model file has: import with --model FILE (the model the profile "
                 "was taken of) for a search to use them")
    return text


def _write_by_chip(rows: Sequence[ProfileRow], output: Path, *, fmt: str, model: str,
                   read: ImportProgress, progress: ImportSink | None = None) -> list[Path]:
    """One store file per chip, dtype and length; ``progress`` hears of each written, with
    ``read`` (what was read) carried along."""
    by_file: dict[Path, list[ProfileRow]] = {}
    for row in rows:
        name = f"imported-{fmt}-{_safe(model)}-s{row.seq_len}-{row.dtype}.csv"
        by_file.setdefault(output / row.chip.lower() / "measured" / name, []).append(row)
    for path in by_file:
        _check_target(path)
    written = []
    for path, rows_ in sorted(by_file.items()):
        written.append(write_rows(rows_, path))
        if progress is not None:
            progress(replace(read, profiles_written=len(written), profiles_total=len(by_file)))
    return written


def _check_target(path: Path) -> None:
    """Refuse, before anything is written, a store file that a folder is in the way of, or
    whose folder a file is in the way of (one file written and the next failing would leave
    a partial import)."""
    if path.is_dir():
        raise BadInputError("is a folder, not a file", file=str(path), field="--output",
                            fix="move it out of the way, or pass another --output folder")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BadInputError(f"is a file, so {path} cannot be created", file=str(parent),
                            field="--output",
                            fix="move it out of the way, or pass another --output folder")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text) or "model"
