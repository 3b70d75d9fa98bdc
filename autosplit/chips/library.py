"""Load the chip library from ``profiles/<chip>/chip.yaml`` files and look chips up by name.

Chips are data, not code: a user adds an accelerator by dropping a folder with a
``chip.yaml`` into a directory on the search path, and every figure is checked here, once,
so the cost model can trust a ``ChipSpec`` without re-validating it. The strict YAML reading
and key checking live here too because the cluster loader applies the same rules to chips
defined inline in a cluster file.

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
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from autosplit.chips.spec import CONFIDENCE_LEVELS, ChipSpec, Provenance
from autosplit.errors import BadInputError

__all__ = [
    "CHIP_FILE",
    "CHIP_KEYS",
    "CHIP_PATH_ENV",
    "INTRA_NODE_LINKS",
    "chip_search_dirs",
    "load_chip_library",
    "parse_chip",
    "read_yaml_mapping",
    "reject_unknown_keys",
    "resolve_chip",
]

#: The one file of a chip folder this module reads (measured profiles may sit next to it).
CHIP_FILE = "chip.yaml"

#: Environment variable with extra chip directories, separated by ``os.pathsep``.
CHIP_PATH_ENV = "AUTOSPLIT_CHIP_PATH"

#: Link kinds a chip file or a cluster file may name for the intra-node fabric.
INTRA_NODE_LINKS: tuple[str, ...] = (
    "nvlink", "infinity_fabric", "hccs", "mlu_link", "pcie", "roce",
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

#: Positive figures every chip must give.
_REQUIRED_NUMBERS: tuple[str, ...] = (
    "tflops_bf16", "tflops_fp16", "tflops_fp32", "memory_gb", "memory_bw_gbs",
    "intra_node_bw_gbs",
)
_REQUIRED_STRINGS: tuple[str, ...] = ("vendor", "intra_node_link", "collective_library")
#: Fractions in (0, 1].
_EFFICIENCIES: tuple[str, ...] = ("compute_efficiency", "memory_efficiency")
_OPTIONAL_KEYS: tuple[str, ...] = (
    "compute_efficiency", "memory_efficiency", "host_bw_gbs", "supports_rdma",
    "description", "provenance", "aliases",
)
#: Fields every chip must give, in the documented order (errors report the first missing).
_REQUIRED_KEYS: tuple[str, ...] = (
    "vendor", "tflops_bf16", "tflops_fp16", "tflops_fp32", "memory_gb", "memory_bw_gbs",
    "intra_node_link", "intra_node_bw_gbs", "collective_library",
)
#: Every key a chip mapping may hold.
CHIP_KEYS: tuple[str, ...] = ("name", *_REQUIRED_KEYS, *_OPTIONAL_KEYS)
#: Fields a ``provenance:`` entry may describe.
_PROVENANCE_FIELDS: tuple[str, ...] = tuple(
    k for k in CHIP_KEYS if k not in ("name", "description", "provenance", "aliases")
)

_FIX_FORMAT = "see docs/chips.md for the chip file format"


# ---- strict YAML reading (shared with the cluster loader) -------------------------------


class _DuplicateKeyError(Exception):
    def __init__(self, key: object, line: int, *, unhashable: bool = False) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key
        self.line = line
        self.unhashable = unhashable


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_strict_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in result
        except TypeError:  # an unhashable key such as a list
            raise _DuplicateKeyError(key, key_node.start_mark.line + 1,
                                     unhashable=True) from None
        if duplicate:
            raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_strict_mapping
)


def read_yaml_mapping(path: Path, *, what: str) -> dict[str, Any]:
    """Read ``path`` as a YAML mapping; any problem is a ``BadInputError`` naming the line.

    ``what`` names the kind of file in messages ("chip file", "cluster file").
    """
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"{what} not found", file=file,
                            fix="check the path (relative paths start at the current "
                                "directory)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read {what}: {exc}", file=file,
                            fix="make it a readable UTF-8 text file") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKeyError as exc:
        if exc.unhashable:
            raise BadInputError(f"line {exc.line}: {exc.key!r} cannot be a key", file=file,
                                fix="keys are plain names, e.g. `devices:`") from None
        raise BadInputError(f"line {exc.line}: key {exc.key!r} is given twice", file=file,
                            fix="keep one entry per key") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInputError(f"{line}YAML syntax error: {problem}", file=file,
                            fix="fix the YAML syntax (indentation, ':' after each key, "
                                "closing brackets)") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise BadInputError(f"{what} must be a YAML mapping of keys to values, but it is "
                            f"{kind}", file=file, fix=_FIX_FORMAT if what == "chip file"
                            else "see docs/cluster-format.md for the file format")
    return data


def reject_unknown_keys(data: Mapping[Any, Any], allowed: Iterable[str], *, file: str,
                        field: str = "") -> None:
    """Raise on the first key not in ``allowed``, suggesting the nearest allowed key."""
    allowed = tuple(allowed)
    for key in data:
        if isinstance(key, str) and key in allowed:
            continue
        path = f"{field}.{key}" if field else str(key)
        near = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{near[0]}'?" if near else (
            "allowed keys: " + ", ".join(allowed))
        raise BadInputError(f"unknown key '{key}'", file=file, field=path,
                            fix=f"{hint} (keys are case-sensitive)")


# ---- one chip ---------------------------------------------------------------------------


def _field(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _as_number(value: Any, *, file: str, field: str) -> float:
    if isinstance(value, bool) or value is None:
        ok = False
    elif isinstance(value, (int, float)):
        ok = True
    elif isinstance(value, str):  # YAML 1.1 reads "1e3" as a string
        try:
            value = float(value)
            ok = True
        except ValueError:
            ok = False
    else:
        ok = False
    if not ok or not math.isfinite(float(value)):
        raise BadInputError(f"expected a number, got {value!r}", file=file, field=field,
                            fix="write a plain number, e.g. 989 or 1.0e3")
    return float(value)


def _positive(data: Mapping[str, Any], key: str, *, file: str, prefix: str) -> float:
    field = _field(prefix, key)
    value = _as_number(data[key], file=file, field=field)
    if value <= 0:
        raise BadInputError(f"must be greater than 0, got {value:g}", file=file, field=field,
                            fix="give the datasheet figure (a positive number)")
    return value


def _text(data: Mapping[str, Any], key: str, *, file: str, prefix: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"expected a non-empty text value, got {value!r}", file=file,
                            field=_field(prefix, key), fix="write it as text, e.g. NVIDIA")
    return value.strip()


def _check_name(name: Any, *, file: str, field: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BadInputError(f"invalid chip name {name!r}", file=file, field=field,
                            fix="use letters, digits, '.', '_' or '-', starting with a "
                                "letter or digit (e.g. H100, Ascend910B)")
    return name


def _parse_provenance(raw: Any, *, file: str, prefix: str) -> dict[str, Provenance]:
    field = _field(prefix, "provenance")
    if not isinstance(raw, dict):
        raise BadInputError("expected a mapping of field name to {source, confidence}",
                            file=file, field=field,
                            fix="write e.g. `tflops_bf16: {source: NVIDIA datasheet, "
                                "confidence: high}`")
    out: dict[str, Provenance] = {}
    for key, entry in raw.items():
        reject_unknown_keys({key: None}, _PROVENANCE_FIELDS, file=file, field=field)
        where = f"{field}.{key}"
        if not isinstance(entry, dict):
            raise BadInputError("expected {source: ..., confidence: ...}", file=file,
                                field=where, fix="give the source and a confidence level")
        reject_unknown_keys(entry, ("source", "confidence"), file=file, field=where)
        source = entry.get("source")
        if not isinstance(source, str) or not source.strip():
            raise BadInputError("missing or empty 'source'", file=file,
                                field=f"{where}.source",
                                fix="say where the figure comes from (datasheet, paper, "
                                    "measurement)")
        confidence = entry.get("confidence", "medium")
        if confidence not in CONFIDENCE_LEVELS:
            raise BadInputError(f"unknown confidence {confidence!r}", file=file,
                                field=f"{where}.confidence",
                                fix="use one of: " + ", ".join(CONFIDENCE_LEVELS))
        out[str(key)] = Provenance(source=source.strip(), confidence=confidence)
    return out


def parse_chip(data: Mapping[str, Any], *, file: str, field_prefix: str = "",
               name: str | None = None) -> ChipSpec:
    """Validate one chip mapping (a ``chip.yaml`` or an inline ``chips:`` entry).

    ``name`` is the name the chip must have when it comes from elsewhere (the key of an
    inline entry); a ``name:`` inside the mapping must then agree with it.
    """
    prefix = field_prefix
    if not isinstance(data, dict):
        raise BadInputError("a chip must be a mapping of fields to values", file=file,
                            field=prefix or None, fix=_FIX_FORMAT)
    reject_unknown_keys(data, CHIP_KEYS, file=file, field=prefix)
    if name is None:
        if "name" not in data:
            raise BadInputError("missing required field", file=file,
                                field=_field(prefix, "name"),
                                fix="add `name: <ChipName>` (the name cluster files use)")
        chip_name = _check_name(data["name"], file=file, field=_field(prefix, "name"))
    else:
        chip_name = _check_name(name, file=file, field=prefix or "name")
        inner = data.get("name")
        if inner is not None and str(inner).lower() != chip_name.lower():
            raise BadInputError(f"name {inner!r} differs from the key {chip_name!r}",
                                file=file, field=_field(prefix, "name"),
                                fix="drop the inner `name:` or make it match the key")
    for key in _REQUIRED_KEYS:
        if key not in data or data[key] is None:
            raise BadInputError("missing required field", file=file,
                                field=_field(prefix, key),
                                fix=f"add `{key}: ...` ({_FIX_FORMAT})")
    numbers = {k: _positive(data, k, file=file, prefix=prefix) for k in _REQUIRED_NUMBERS}
    strings = {k: _text(data, k, file=file, prefix=prefix) for k in _REQUIRED_STRINGS}
    link = strings["intra_node_link"].lower()
    if link not in INTRA_NODE_LINKS:
        near = difflib.get_close_matches(link, INTRA_NODE_LINKS, n=1)
        raise BadInputError(f"unknown intra-node link {strings['intra_node_link']!r}",
                            file=file, field=_field(prefix, "intra_node_link"),
                            fix=(f"did you mean '{near[0]}'? " if near else "")
                            + "use one of: " + ", ".join(INTRA_NODE_LINKS))
    strings["intra_node_link"] = link
    optional: dict[str, Any] = {}
    for key in _EFFICIENCIES:
        if key in data:
            value = _as_number(data[key], file=file, field=_field(prefix, key))
            if not 0 < value <= 1:
                raise BadInputError(f"must be a fraction in (0, 1], got {value:g}",
                                    file=file, field=_field(prefix, key),
                                    fix="give the achieved fraction of peak, e.g. 0.6")
            optional[key] = value
    if "host_bw_gbs" in data:
        optional["host_bw_gbs"] = _positive(data, "host_bw_gbs", file=file, prefix=prefix)
    if "supports_rdma" in data:
        if not isinstance(data["supports_rdma"], bool):
            raise BadInputError(f"expected true or false, got {data['supports_rdma']!r}",
                                file=file, field=_field(prefix, "supports_rdma"),
                                fix="write `supports_rdma: true` or `supports_rdma: false`")
        optional["supports_rdma"] = data["supports_rdma"]
    if "description" in data:
        if not isinstance(data["description"], str):
            raise BadInputError("expected text", file=file,
                                field=_field(prefix, "description"),
                                fix="write the description as a quoted string")
        optional["description"] = " ".join(data["description"].split())
    if "provenance" in data:
        optional["provenance"] = _parse_provenance(data["provenance"], file=file,
                                                   prefix=prefix)
    if "aliases" in data:
        raw = data["aliases"]
        if not isinstance(raw, list):
            raise BadInputError("expected a list of names", file=file,
                                field=_field(prefix, "aliases"),
                                fix="write e.g. `aliases: [H100-SXM, H100SXM]`")
        optional["aliases"] = tuple(
            _check_name(a, file=file, field=f"{_field(prefix, 'aliases')}[{i}]")
            for i, a in enumerate(raw)
        )
    return ChipSpec(name=chip_name, **strings, **numbers, **optional)


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
            raise BadInputError(f"chip directory '{path}' does not exist",
                                field=CHIP_PATH_ENV,
                                fix=f"fix or unset {CHIP_PATH_ENV}")
        dirs.append(path)
    for extra in extra_dirs:
        path = Path(extra).expanduser()
        if not path.is_dir():
            raise BadInputError(f"chip directory '{path}' does not exist", file=str(path),
                                fix="give a directory holding <chip>/chip.yaml folders")
        dirs.append(path)
    return dirs


def _chip_files(directory: Path) -> list[Path]:
    """``chip.yaml`` files of a directory: its own, or one per sub-folder (sorted)."""
    if (directory / CHIP_FILE).is_file():
        return [directory / CHIP_FILE]
    files: list[Path] = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        chip_file = sub / CHIP_FILE
        if chip_file.is_file():
            files.append(chip_file)
        elif (sub / "chip.yml").is_file():
            raise BadInputError("chip file has the wrong name", file=str(sub / "chip.yml"),
                                fix=f"rename it to {CHIP_FILE}")
    return files


def _load_chip_file(path: Path) -> ChipSpec:
    data = read_yaml_mapping(path, what="chip file")
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
