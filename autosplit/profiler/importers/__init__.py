"""Importers for other planners' profiles (Sailor, Metis) into autosplit's profile store.

Each importer reads the other tool's files, maps its layer indices onto partition units
(index 0 = embedding = ``pre``, last = head = ``post``, the rest blocks) and returns
``ProfileRow``s; ``import_profiles`` writes them to ``DIR/<chip>/measured/<name>.csv``.
What each format lacks is documented in docs/profiles.md and in each importer's docstring.

Layer kinds: the measured provider matches rows by ``layer_kind``. Given the matching model
file, the importer uses ingestion's kinds unit by unit; without it, kinds are named
``<model>:pre``, ``<model>:block`` and ``<model>:post`` (usable once a model with those kinds
exists, or for inspection with pandas).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autosplit.errors import BadInputError
from autosplit.profiler.store import ProfileRow, write_rows

__all__ = ["UnitKinds", "import_profiles", "FORMATS"]

FORMATS: tuple[str, ...] = ("sailor", "metis")


@dataclass(frozen=True)
class UnitKinds:
    """The partition units of the model the profile belongs to: names and layer kinds."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]

    @staticmethod
    def generic(model: str, count: int) -> UnitKinds:
        """``pre``, ``block.1`` … , ``post`` with kinds ``<model>:pre|block|post``."""
        if count < 3:
            raise BadInputError(f"a profile with {count} layers has no blocks",
                                fix="profiles must list embedding, blocks and head")
        names = ("pre", *[f"block.{i}" for i in range(1, count - 1)], "post")
        kinds = (f"{model}:pre", *[f"{model}:block"] * (count - 2), f"{model}:post")
        return UnitKinds(names=names, kinds=kinds)

    @staticmethod
    def from_model(path: str, *, model_args: dict[str, str], seq_len: int,
                   dtype: str) -> UnitKinds:
        from autosplit.model.ingest import ingest_model

        profile = ingest_model(path, model_args=model_args, seq_len=seq_len, dtype=dtype)
        return UnitKinds(names=tuple(u.name for u in profile.layers),
                         kinds=tuple(u.layer_kind or u.name for u in profile.layers))

    def check(self, count: int, *, file: str) -> None:
        if count != len(self.names):
            raise BadInputError(f"the profile has {count} layers but the model has "
                                f"{len(self.names)} partition units", file=file,
                                fix="import with the model file the profile was taken of "
                                    "(embedding + blocks + head), or without --model")


def import_profiles(path: str | Path, *, fmt: str, output: str | Path, chip: str | None = None,
                    model_name: str | None = None, seq_len: int | None = None,
                    dtype: str = "bf16", units: UnitKinds | None = None,
                    command: str = "") -> list[Path]:
    """Convert ``path`` (a file or directory in format ``fmt``) and write the store files."""
    if fmt not in FORMATS:
        raise BadInputError(f"unknown format '{fmt}'", field="--format",
                            fix="use one of: " + ", ".join(FORMATS))
    path = Path(path)
    if not path.exists():
        raise BadInputError("profile path not found", file=str(path),
                            fix="pass the profile file or directory")
    if fmt == "sailor":
        from autosplit.profiler.importers.sailor import read_sailor

        model, rows = read_sailor(path, chip=chip, model_name=model_name, seq_len=seq_len,
                           dtype=dtype, units=units, command=command)
    else:
        from autosplit.profiler.importers.metis import read_metis

        model, rows = read_metis(path, chip=chip, model_name=model_name, seq_len=seq_len,
                          dtype=dtype, units=units, command=command)
    return _write_by_chip(rows, Path(output), fmt=fmt, model=model)


def _write_by_chip(rows: Sequence[ProfileRow], output: Path, *, fmt: str,
                   model: str) -> list[Path]:
    by_file: dict[Path, list[ProfileRow]] = {}
    for row in rows:
        name = f"imported-{fmt}-{_safe(model)}-s{row.seq_len}-{row.dtype}.csv"
        by_file.setdefault(output / row.chip.lower() / "measured" / name, []).append(row)
    return [write_rows(rows_, path) for path, rows_ in sorted(by_file.items())]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text) or "model"
