"""Strict, bounded YAML reading for every YAML input (cluster, chip, suite files).

PyYAML's safe loader silently keeps the last of two equal keys and happily builds a document
whose aliases expand to billions of values (an "anchor bomb"): the document itself is small,
but anything that walks it — validation included — never finishes. This loader refuses both,
names the line, and reads the file through ``read_input_text`` so size and file-type limits
apply first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autosplit.errors import BadInputError
from autosplit.inputs.files import read_input_text

__all__ = ["MAX_YAML_BYTES", "MAX_ALIAS_EXPANSION", "read_yaml_mapping", "parse_yaml_mapping"]

#: YAML inputs are hand-written descriptions: 1 MiB holds some 15,000 node entries written out
#: one by one (``count:`` describes equal nodes in one line), and parses in a few seconds.
MAX_YAML_BYTES = 2**20
#: How many values aliases may add to a document once expanded. Anchors used for shared
#: defaults (``<<: *defaults``) add a handful; an anchor bomb adds billions.
MAX_ALIAS_EXPANSION = 100_000

_Base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when built
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKeyError(Exception):
    def __init__(self, key: object, line: int, *, unhashable: bool = False) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key
        self.line = line
        self.unhashable = unhashable


class _AliasError(Exception):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class _StrictLoader(_Base):  # type: ignore[misc, valid-type]
    """Safe loader that refuses a key given twice in one mapping and alias blow-ups."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node, self.text)
        return self.construct_document(node)


def _check_expansion(root: yaml.Node, text: str) -> None:
    """Refuse a document whose aliases expand it by more than ``MAX_ALIAS_EXPANSION`` values
    or refer to themselves; linear in the composed document (sizes are memoised per node)."""
    if "*" not in text:  # no alias at all: nothing can expand
        return
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        known = sizes.get(key)
        if known is not None:
            return known
        if key in active:
            raise _AliasError("a YAML alias refers to a value that contains it",
                              node.start_mark.line + 1)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
        active.discard(key)
        sizes[key] = total
        return total

    expanded = size(root)
    if expanded - len(sizes) > MAX_ALIAS_EXPANSION:
        raise _AliasError(f"YAML aliases expand the document to {expanded:,} values "
                          f"(more than {MAX_ALIAS_EXPANSION:,} beyond the {len(sizes):,} "
                          "written)")


def _construct_strict_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """A mapping in which no key is written twice; keys merged in from ``<<: *defaults`` may
    be overridden by the mapping's own keys, as YAML's merge key means."""
    explicit = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)  # merged pairs first, then the mapping's own
    merged = len(node.value) - explicit
    result: dict[Any, Any] = {}
    own: set[Any] = set()
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in own
        except TypeError:  # an unhashable key such as a list
            raise _DuplicateKeyError(key, key_node.start_mark.line + 1,
                                     unhashable=True) from None
        if i >= merged:
            if duplicate:
                raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
            own.add(key)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_strict_mapping
)


def read_yaml_mapping(path: str | Path, *, what: str, fix: str = "",
                      limit: int = MAX_YAML_BYTES) -> dict[Any, Any]:
    """Read ``path`` as a YAML mapping; any problem is a ``BadInputError`` naming the line.

    ``what`` names the kind of file in messages ("chip file", "cluster file"); ``fix`` is the
    advice for a file that is not a mapping (where its format is documented).
    """
    text = read_input_text(path, what=what, limit=limit)
    return parse_yaml_mapping(text, file=str(path), what=what, fix=fix)


def parse_yaml_mapping(text: str, *, file: str, what: str, fix: str = "") -> dict[Any, Any]:
    """``text`` (the content of ``file``) as a YAML mapping, read strictly."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKeyError as exc:
        if exc.unhashable:
            raise BadInputError(f"line {exc.line}: {_short(exc.key)} cannot be a key", file=file,
                                fix="keys are plain names, e.g. `devices:`") from None
        raise BadInputError(f"line {exc.line}: key {_short(exc.key)} is given twice", file=file,
                            fix="keep one entry per key") from None
    except _AliasError as exc:
        where = f"line {exc.line}: " if exc.line else ""
        raise BadInputError(f"{where}{exc}", file=file,
                            fix="write the values out, or use anchors (&name / *name) only for "
                                "shared defaults") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInputError(f"{line}YAML syntax error: {problem}", file=file,
                            fix="fix the YAML syntax (indentation, ':' after each key, "
                                "closing brackets)") from None
    except RecursionError:
        raise BadInputError("the YAML nests too deeply", file=file,
                            fix="flatten the structure (a cluster file nests a few levels)"
                            ) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise BadInputError(f"{what} must be a YAML mapping of keys to values, but it is "
                            f"{kind}", file=file, fix=fix or "see the file format in docs/")
    return data


def _short(value: object, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"
