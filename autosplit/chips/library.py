"""Load the chip library from ``profiles/<chip>/chip.yaml`` files and look chips up by name.

Chips are data, not code: a user adds an accelerator by dropping a folder with a
``chip.yaml`` into a directory on the search path, and every figure is checked here, once,
so the cost model can trust a ``ChipSpec`` without re-validating it. The format itself is the
pydantic model in ``autosplit.chips.chip_file`` (shared with chips defined inline in a cluster
file); this module finds the files, reads them strictly and enforces what spans files: folder
and name agree, no name or alias belongs to two chips.

Search path, in order (a chip in a later directory replaces one of the same name in an
earlier directory, so a user can recalibrate a shipped chip without editing it):

1. the repository's ``profiles/`` directory;
2. the directories in the ``AUTOSPLIT_CHIP_PATH`` environment variable (``os.pathsep``
   separated);
3. ``extra_dirs`` given by the caller (``--dir`` on the command line, ``chip_dirs`` in a
   cluster file).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autosplit.chips.chip_file import CHIP_DOC, INTRA_NODE_LINKS, ChipFile, ChipName, ChipYaml
from autosplit.chips.spec import ChipSpec
from autosplit.errors import BadInputError
from autosplit.inputs.validation import validate
from autosplit.inputs.yaml_file import read_yaml_mapping

__all__ = [
    "CHIP_FILE",
    "CHIP_KEYS",
    "CHIP_PATH_ENV",
    "INTRA_NODE_LINKS",
    "chip_search_dirs",
    "chip_spec",
    "load_chip_library",
    "parse_chip",
    "resolve_chip",
]

#: The one file of a chip folder this module reads (measured profiles may sit next to it).
CHIP_FILE = "chip.yaml"

#: Environment variable with extra chip directories, separated by ``os.pathsep``.
CHIP_PATH_ENV = "AUTOSPLIT_CHIP_PATH"

#: Every key a chip mapping may hold, in the documented order.
CHIP_KEYS: tuple[str, ...] = tuple(ChipYaml.model_fields)

_FIX_FORMAT = f"see {CHIP_DOC} for the chip file format"


# ---- one chip ---------------------------------------------------------------------------


def parse_chip(data: Any, *, file: str, field_prefix: str = "",
               name: str | None = None) -> ChipSpec:
    """Validate one chip mapping (a ``chip.yaml`` or an inline ``chips:`` entry).

    ``name`` is the name the chip must have when it comes from elsewhere (the key of an
    inline entry); a ``name:`` inside the mapping must then agree with it.
    """
    if not isinstance(data, dict):
        raise BadInputError("a chip must be a mapping of fields to values", file=file,
                            field=field_prefix or None, fix=_FIX_FORMAT)
    entry = validate(ChipYaml if name is None else ChipFile, data, file=file, doc=CHIP_DOC,
                     field_prefix=field_prefix)
    return chip_spec(entry, file=file, field_prefix=field_prefix, name=name)


def chip_spec(entry: ChipFile, *, file: str, field_prefix: str = "",
              name: str | None = None) -> ChipSpec:
    """The ``ChipSpec`` of a validated entry; ``name`` (an inline entry's key) must agree with
    an inner ``name:``."""
    if name is None:
        assert entry.name is not None  # ChipYaml requires it
        return entry.to_spec(entry.name)
    where = field_prefix or "name"
    validate(ChipName, name, file=file, doc=CHIP_DOC, field_prefix=where)
    if entry.name is not None and entry.name.lower() != name.lower():
        raise BadInputError(f"name {entry.name!r} differs from the key {name!r}", file=file,
                            field=f"{where}.name" if field_prefix else "name",
                            fix="drop the inner `name:` or make it match the key")
    return entry.to_spec(name)


# ---- the library ------------------------------------------------------------------------


def _repo_profiles_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "profiles"


def chip_search_dirs(extra_dirs: Sequence[Path] = ()) -> list[Path]:
    """The directories searched for chips, in order (see the module docstring)."""
    dirs: list[Path] = []
    default = _repo_profiles_dir()
    if default.is_dir():
        dirs.append(default)
    for entry in os.environ.get(CHIP_PATH_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        path = Path(entry.strip()).expanduser()
        if not path.is_dir():
            raise BadInputError(f"chip directory '{path}' {_not_a_directory(path)}",
                                field=CHIP_PATH_ENV,
                                fix=f"fix or unset {CHIP_PATH_ENV}")
        dirs.append(path)
    for extra in extra_dirs:
        path = Path(extra).expanduser()
        if not path.is_dir():
            raise BadInputError(f"chip directory '{path}' {_not_a_directory(path)}",
                                file=str(path),
                                fix="give a directory holding <chip>/chip.yaml folders")
        dirs.append(path)
    return dirs


def _not_a_directory(path: Path) -> str:
    return "is a file, not a directory" if path.exists() else "does not exist"


def _chip_files(directory: Path) -> list[Path]:
    """``chip.yaml`` files of a directory: its own, or one per sub-folder (sorted). A
    ``chip.yaml`` that is not a regular file is listed too, so that reading refuses it rather
    than the chip silently missing."""
    if _present(directory / CHIP_FILE):
        return [directory / CHIP_FILE]
    files: list[Path] = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        chip_file = sub / CHIP_FILE
        if _present(chip_file):
            files.append(chip_file)
        elif (sub / "chip.yml").is_file():
            raise BadInputError("chip file has the wrong name", file=str(sub / "chip.yml"),
                                fix=f"rename it to {CHIP_FILE}")
    return files


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _load_chip_file(path: Path) -> ChipSpec:
    data = read_yaml_mapping(path, what="chip file", fix=_FIX_FORMAT)
    chip = parse_chip(data, file=str(path))
    folder = path.parent.name
    if folder.lower() != chip.name.lower():
        raise BadInputError(f"chip '{chip.name}' sits in folder '{folder}'", file=str(path),
                            field="name",
                            fix=f"name the folder '{chip.name.lower()}' or set "
                                f"`name: {folder}` (folder and chip name must agree)")
    return chip


def _names_of(chip: ChipSpec) -> list[str]:
    return [chip.name, *chip.aliases]


def _index(chips: Iterable[ChipSpec], origin: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased name or alias -> canonical name; a name claimed twice is an error."""
    index: dict[str, str] = {}
    for chip in chips:
        for label in _names_of(chip):
            owner = index.get(label.lower())
            if owner is not None and owner != chip.name:
                raise BadInputError(
                    f"name or alias '{label}' is used by both '{owner}' "
                    f"({origin.get(owner, 'inline')}) and '{chip.name}'",
                    file=origin.get(chip.name), field="aliases",
                    fix="remove the alias from one of the two chips")
            index[label.lower()] = chip.name
    return index


def load_chip_library(*, extra_dirs: Sequence[Path] = ()) -> dict[str, ChipSpec]:
    """Every chip on the search path, keyed by canonical name (sorted, case-insensitively).

    A chip in a later directory replaces a chip of the same name from an earlier one; two
    files of one directory may not define the same name.
    """
    chips: dict[str, ChipSpec] = {}  # lower-cased canonical name -> chip
    origin: dict[str, str] = {}  # canonical name -> file
    for directory in chip_search_dirs(extra_dirs):
        seen_here: dict[str, str] = {}
        for path in _chip_files(directory):
            chip = _load_chip_file(path)
            key = chip.name.lower()
            if key in seen_here:
                raise BadInputError(f"chip '{chip.name}' is also defined in {seen_here[key]}",
                                    file=str(path), field="name",
                                    fix="keep one file per chip name")
            seen_here[key] = str(path)
            old = chips.pop(key, None)
            if old is not None:
                origin.pop(old.name, None)
            chips[key] = chip
            origin[chip.name] = str(path)
    _index(chips.values(), origin)
    return {c.name: c for c in sorted(chips.values(), key=lambda c: c.name.lower())}


def resolve_chip(name: str, library: Mapping[str, ChipSpec], *, file: str | None = None,
                 field: str | None = None) -> ChipSpec:
    """The chip called ``name`` (canonical name or alias, any case).

    An unknown name raises ``BadInputError`` listing the nearest known names.
    """
    index = _index(library.values(), {})
    if isinstance(name, str) and name.lower() in index:
        return library[index[name.lower()]]
    labels = {label.lower(): label for c in library.values() for label in _names_of(c)}
    near = difflib.get_close_matches(str(name).lower(), list(labels), n=3, cutoff=0.5)
    if near:
        suggestion = "did you mean " + " or ".join(
            f"'{index[n]}'" if labels[n] == index[n] else f"'{labels[n]}' ({index[n]})"
            for n in near) + "? "
    else:
        suggestion = "known chips: " + ", ".join(library) + ". "
    raise BadInputError(
        f"unknown chip '{name}'", file=file, field=field,
        fix=suggestion + f"To use a new chip, add profiles/{str(name).lower()}/{CHIP_FILE} "
                         "or define it under `chips:` in the cluster file",
    )
