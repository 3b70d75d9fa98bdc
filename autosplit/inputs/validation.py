"""Turn pydantic's validation errors into one ``BadInputError`` a user can act on.

The file formats (cluster, chip, plan, importers' inputs) are pydantic models or stdlib
dataclasses read through ``TypeAdapter``: pydantic checks types, required fields, unknown keys,
ranges and NaN, and publishes the same rules as a JSON Schema for editors. Its messages are
written for programmers ("Input should be a valid integer"); this module rewrites the first
error into the project's form — the file, the field path as the user writes it
(``nodes[1].devices``), what is wrong in the user's terms, and a fix. A field can carry its own
fix in its ``Annotated`` metadata (``Hint``); everything else is derived from the error type
and the field's declared constraints (choices, bounds), so messages cannot drift from the
rules they explain.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import annotated_types
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from autosplit.errors import BadInputError

__all__ = ["Hint", "validate", "field_path", "reject_unknown_keys", "unknown_key_fix",
           "choice_fix"]

T = TypeVar("T")


@dataclass(frozen=True)
class Hint:
    """``Annotated`` metadata on a file field: the fix a user reads when its value is wrong."""

    fix: str


# ---- shared phrasing -------------------------------------------------------------------


def unknown_key_fix(key: object, allowed: Sequence[str]) -> str:
    """"did you mean 'x'?" or the allowed keys, for an unknown key."""
    near = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
    hint = f"did you mean '{near[0]}'?" if near else "allowed keys: " + ", ".join(allowed)
    return f"{hint} (keys are case-sensitive)"


def choice_fix(value: object, choices: Sequence[str]) -> str:
    """"did you mean 'x'? use one of: ..." for a value outside a fixed set."""
    near = difflib.get_close_matches(str(value).lower(), [str(c) for c in choices], n=1)
    hint = f"did you mean '{near[0]}'? " if near else ""
    return hint + "use one of: " + ", ".join(str(c) for c in choices)


def reject_unknown_keys(data: Mapping[Any, Any], allowed: Iterable[str], *, file: str,
                        field: str = "") -> None:
    """Raise on the first key not in ``allowed``, suggesting the nearest allowed key (for the
    few hand-checked formats left, e.g. the bench suite)."""
    allowed = tuple(allowed)
    for key in data:
        if isinstance(key, str) and key in allowed:
            continue
        raise BadInputError(f"unknown key '{key}'", file=file,
                            field=f"{field}.{key}" if field else str(key),
                            fix=unknown_key_fix(key, allowed))


def field_path(loc: Iterable[object]) -> str:
    """``('nodes', 1, 'devices')`` → ``nodes[1].devices`` (the spelling of docs and messages)."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# ---- walking the declared type to the failing field ----------------------------------


@dataclass
class _Site:
    """What the declaration says about the failing location."""

    annotation: Any = None
    metadata: list[Any] = dataclasses.field(default_factory=list)
    #: The model or dataclass whose key failed (for unknown-key suggestions).
    parent: Any = None


def _strip(tp: Any, metadata: list[Any]) -> Any:
    """Unwrap ``Annotated`` (collecting its metadata) and ``X | None``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            args = typing.get_args(tp)
            metadata.extend(args[1:])
            tp = args[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _fields(tp: Any) -> dict[str, tuple[Any, list[Any]]]:
    """Field name → (annotation, metadata) of a pydantic model or a stdlib dataclass."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {(f.alias or name): (f.annotation, list(f.metadata))
                for name, f in tp.model_fields.items()}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        return {f.name: (hints.get(f.name, Any), []) for f in dataclasses.fields(tp)}
    return {}


def _site(root: Any, loc: Sequence[object]) -> _Site:
    # pydantic locates a bad mapping key as (..., key, "[key]"): the key names no field.
    loc = [p for k, p in enumerate(loc) if not (k + 1 < len(loc) and loc[k + 1] == "[key]")]
    root_metadata: list[Any] = []
    site = _Site(annotation=_strip(root, root_metadata), metadata=root_metadata)
    for part in loc:
        tp = site.annotation
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        metadata: list[Any] = []
        fields = _fields(tp)
        if fields:
            site.parent = tp
            if part not in fields:
                return _Site(parent=tp)
            nxt, metadata = fields[part]  # type: ignore[index]
        elif origin in (list, tuple, set, frozenset, Sequence) and args:
            nxt = args[0]
        elif origin in (dict, Mapping) and len(args) == 2:
            nxt = args[0] if part == "[key]" else args[1]
        else:
            return _Site(parent=site.parent)
        site = _Site(annotation=_strip(nxt, metadata), metadata=metadata, parent=site.parent)
    return site


# ---- wording -----------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    if len(text) > 60:
        text = text[:59] + "…"
    return f"{type(value).__name__} {text}"


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return repr(x)
    return str(x) if isinstance(x, int) else f"{x:g}"


def _flat(metadata: list[Any]) -> list[Any]:
    """Metadata with nested ``Field(...)`` objects opened up into their constraints."""
    out: list[Any] = []
    for m in metadata:
        out.extend(_flat(m.metadata) if isinstance(m, FieldInfo) else [m])
    return out


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in _flat(metadata):
        for key in ("gt", "ge", "lt", "le"):
            value = getattr(m, key, None)
            if value is not None and isinstance(m, annotated_types.BaseMetadata):
                out[key] = value
    return out


def _range(b: dict[str, Any]) -> str:
    """Interval notation of the bounds, e.g. ``(0, 1]`` or ``[1, 1024]``; "" if one-sided."""
    low = ("(", b["gt"]) if "gt" in b else ("[", b["ge"]) if "ge" in b else None
    high = (")", b["lt"]) if "lt" in b else ("]", b["le"]) if "le" in b else None
    if low is None or high is None:
        return ""
    return f"{low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"


def _bound_message(kind: str, value: Any, b: dict[str, Any]) -> str:
    if kind == "greater_than":
        text = f"must be greater than {_num(b.get('gt'))}"
    elif kind == "greater_than_equal":
        ge = b.get("ge")
        text = "must be 0 or more" if ge == 0 else f"must be at least {_num(ge)}"
    elif kind == "less_than":
        text = f"must be less than {_num(b.get('lt'))}"
    else:
        text = f"must be at most {_num(b.get('le'))}"
    allowed = _range(b)
    return f"{text}, got {_num(value)}" + (f" (allowed range {allowed})" if allowed else "")


def _choices(annotation: Any) -> list[str]:
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return []


_MAPPING_TYPES = {"dict_type", "model_type", "model_attributes_type", "dataclass_type",
                  "dataclass_exact_type"}
_LIST_TYPES = {"list_type", "tuple_type", "set_type", "frozen_set_type", "iterable_type"}
_INT_TYPES = {"int_type", "int_parsing", "int_from_float", "int_parsing_size"}
_FLOAT_TYPES = {"float_type", "float_parsing"}
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _describe(err: dict[str, Any], site: _Site, *, doc: str, json: bool) -> tuple[str, str]:
    """(message, fix) for one pydantic error."""
    kind = err["type"]
    loc = err["loc"]
    value = err.get("input")
    key = loc[-1] if loc else ""
    hint = next((m.fix for m in site.metadata if isinstance(m, Hint)), "")
    mapping, sequence = ("a JSON object", "a JSON array") if json else ("a mapping", "a list")
    if kind in ("missing", "missing_argument"):
        if json:
            return "missing required field", f'add the missing field "{key}" (see {doc})'
        return "missing required field", (f"add `{key}:` ({hint})" if hint else
                                          f"add `{key}: ...` (see {doc})")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        allowed = list(_fields(site.parent)) if site.parent is not None else []
        return f"unknown key '{key}'", unknown_key_fix(key, allowed)
    if kind == "invalid_key":
        return f"{value!r} cannot be a key", "keys are plain names, e.g. `devices:`"
    if kind == "literal_error":
        choices = _choices(site.annotation)
        if loc and loc[-1] == "[key]":
            return f"unknown key '{value}'", unknown_key_fix(value, choices)
        return f"unknown value {value!r}", choice_fix(value, choices)
    if kind in _INT_TYPES:
        return (f"expected a whole number, got {_kind(value)}",
                hint or "write a whole number, e.g. 8")
    if kind in _FLOAT_TYPES:
        return (f"expected a number, got {_kind(value)}",
                hint or "write a plain number, e.g. 989 or 1.0e3")
    if kind == "finite_number":
        return (f"expected a finite number, got {_num(value)}",
                hint or "write a plain number (NaN and infinity are not figures)")
    if kind in ("bool_type", "bool_parsing"):
        return (f"expected true or false, got {_kind(value)}",
                hint or f"write `{key}: true` or `{key}: false`")
    if kind in ("string_type", "string_too_short"):
        return f"expected text, got {_kind(value)}", hint or "write it as text"
    if kind == "string_pattern_mismatch":
        return (f"invalid name {value!r}",
                hint or "use letters, digits, '.', '_' or '-', starting with a letter or digit")
    if kind in _BOUNDS:
        b = {**_bounds(site.metadata), **(err.get("ctx") or {})}
        allowed = _range(_bounds(site.metadata))
        return _bound_message(kind, value, b), hint or (
            f"give a value in {allowed}" if allowed else "give a value in the allowed range")
    if kind in _MAPPING_TYPES:
        return f"expected {mapping}, got {_kind(value)}", hint or f"see {doc}"
    if kind in _LIST_TYPES:
        return f"expected {sequence}, got {_kind(value)}", hint or f"see {doc}"
    if kind in ("too_short", "too_long"):
        ctx = err.get("ctx") or {}
        flat = _flat(site.metadata)
        lo = next((m.min_length for m in flat if isinstance(m, annotated_types.MinLen)), None)
        hi = next((m.max_length for m in flat if isinstance(m, annotated_types.MaxLen)), None)
        got = ctx.get("actual_length", "?")
        if lo is not None and lo == hi:
            text = f"expected exactly {lo} entries, got {got}"
        elif kind == "too_short":
            text = f"expected at least {ctx.get('min_length', lo)} entries, got {got}"
        else:
            text = f"expected at most {ctx.get('max_length', hi)} entries, got {got}"
        return text, hint or f"see {doc}"
    return str(err.get("msg", "invalid value")), hint or f"see {doc}"


def _priority(err: dict[str, Any]) -> int:
    # A misspelt key usually explains a "missing" one next to it: report the spelling first.
    return 0 if err["type"] in ("extra_forbidden", "unexpected_keyword_argument",
                                "invalid_key") else 1


@functools.cache
def _adapter(root: Any) -> TypeAdapter[Any]:
    return TypeAdapter(root)


def validate(root: type[T], data: Any, *, file: str | None, doc: str, field_prefix: str = "",
             from_json: bool = False) -> T:
    """``data`` (Python objects, or JSON text with ``from_json``) validated as ``root``.

    JSON text is validated in strict mode (JSON has exact types); Python data from YAML in
    lax mode, so fields must declare their own strictness (``StrictInt``, ``StrictBool``).
    The first problem raises ``BadInputError`` with ``file``, the field path (under
    ``field_prefix``) and a fix; ``doc`` names where the format is documented.
    """
    try:
        if from_json:
            return _adapter(root).validate_json(data, strict=True)
        if isinstance(root, type) and issubclass(root, BaseModel):
            return root.model_validate(data)
        return _adapter(root).validate_python(data)
    except ValidationError as exc:
        errors = sorted(exc.errors(include_url=False), key=_priority)
        err = errors[0]
        message, fix = _describe(err, _site(root, err["loc"]), doc=doc, json=from_json)
        loc = err["loc"]
        path = field_path(loc)
        if err["type"] == "invalid_key" and loc:  # the key itself, as the user wrote it
            parent = field_path(loc[:-1])
            path = f"{parent}.{loc[-1]}" if parent else str(loc[-1])
        if field_prefix:
            path = f"{field_prefix}.{path}" if path else field_prefix
        raise BadInputError(message, file=file, field=path or None, fix=fix) from None

