"""Rename the ingested model's modules to the names a runtime uses.

autosplit learns module names from the user's model file (``transformer.h.3``); the runtime's
own model may call the same module ``layers.3``. A name map is a small YAML file of rules,
tried in order, the first match wins:

```yaml
rules:
  - prefix: transformer.wte        # this module and everything under it
    replace: tok_embeddings
  - match: 'transformer\\.h\\.(\\d+)'  # a regex that must match the whole name
    replace: 'layers.\\1'
```

A plain mapping (``{regex: replacement}``) is accepted as a shorthand for regex rules. Names
no rule matches are kept. Several modules of one stage may map to one name (they are listed
once); modules of two different stages must not, or the runtime could not tell which stage
owns the module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autosplit.errors import BadInputError
from autosplit.plan.schema import Plan

__all__ = ["NameRule", "NameMap", "IDENTITY", "load_name_map", "name_map_from_data",
           "stage_module_names"]

_FIX = ("a name map is YAML: `rules:` followed by a list of `{match: REGEX, replace: TEXT}` "
        "or `{prefix: NAME, replace: NAME}` entries; see docs/export.md")


@dataclass(frozen=True)
class NameRule:
    """One rule: a whole-name regex (``kind == "regex"``) or a dotted prefix."""

    kind: str  # "regex" | "prefix"
    pattern: str
    replace: str

    def apply(self, name: str) -> str | None:
        """The renamed module, or ``None`` when the rule does not match."""
        if self.kind == "prefix":
            if name == self.pattern:
                return self.replace
            if name.startswith(self.pattern + "."):
                rest = name[len(self.pattern) + 1:]
                return f"{self.replace}.{rest}" if self.replace else rest
            return None
        m = re.fullmatch(self.pattern, name)
        return m.expand(self.replace) if m else None


@dataclass(frozen=True)
class NameMap:
    """Ordered rules; the first that matches renames a module, none keeps its name."""

    rules: tuple[NameRule, ...] = ()
    source: str = ""

    def apply(self, name: str) -> str:
        for rule in self.rules:
            out = rule.apply(name)
            if out is not None:
                return out
        return name


#: The map that keeps every name.
IDENTITY = NameMap()


def load_name_map(path: str | Path) -> NameMap:
    """Read and validate a name-map YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot read the name map: {exc.strerror or exc}", file=str(p),
                            fix="pass an existing YAML file to --name-map") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInputError(f"not valid YAML: {exc}", file=str(p), fix=_FIX) from exc
    return name_map_from_data(data, source=str(p))


def name_map_from_data(data: Any, *, source: str = "") -> NameMap:
    """Validate already-parsed YAML into a ``NameMap``."""
    file = source or None
    if data is None:
        return NameMap(source=source)
    if isinstance(data, Mapping) and set(data) == {"rules"}:
        entries = data["rules"]
        if not isinstance(entries, Sequence) or isinstance(entries, str):
            raise BadInputError("`rules` must be a list", file=file, field="rules", fix=_FIX)
        rules = tuple(_rule(e, i, file) for i, e in enumerate(entries))
    elif isinstance(data, Mapping):
        rules = tuple(_compile_check(NameRule("regex", str(k), _text(v, f"{k}", file)),
                                     str(k), file) for k, v in data.items())
    else:
        raise BadInputError("a name map must be a mapping", file=file, fix=_FIX)
    return NameMap(rules=rules, source=source)


def stage_module_names(plan: Plan, name_map: NameMap = IDENTITY) -> tuple[tuple[str, ...], ...]:
    """Each stage's module names after renaming, in order, each listed once.

    Raises ``BadInputError`` when the map sends modules of two stages to one name.
    """
    owner: dict[str, int] = {}
    out: list[tuple[str, ...]] = []
    for stage in plan.stages:
        names: list[str] = []
        for original in stage.module_names:
            mapped = name_map.apply(original)
            if not mapped:
                raise BadInputError(f"the name map renames module '{original}' to an empty "
                                    "name", file=name_map.source or None, fix=_FIX)
            prev = owner.get(mapped)
            if prev is not None and prev != stage.index:
                raise BadInputError(
                    f"the name map sends modules of stage {prev} and stage {stage.index} to "
                    f"the same name '{mapped}' (from '{original}')",
                    file=name_map.source or None,
                    fix="make the rules keep each stage's modules apart (e.g. keep the "
                        "layer number in the replacement)")
            if prev is None:
                owner[mapped] = stage.index
                names.append(mapped)
        out.append(tuple(names))
    return tuple(out)


def _rule(entry: Any, i: int, file: str | None) -> NameRule:
    where = f"rules[{i}]"
    if not isinstance(entry, Mapping):
        raise BadInputError("each rule must be a mapping", file=file, field=where, fix=_FIX)
    keys = set(entry)
    if keys == {"match", "replace"}:
        pattern = _text(entry["match"], f"{where}.match", file)
        return _compile_check(NameRule("regex", pattern,
                                       _text(entry["replace"], f"{where}.replace", file)),
                              where, file)
    if keys == {"prefix", "replace"}:
        prefix = _text(entry["prefix"], f"{where}.prefix", file)
        if not prefix:
            raise BadInputError("an empty prefix would match every module", file=file,
                                field=f"{where}.prefix", fix=_FIX)
        return NameRule("prefix", prefix, _text(entry["replace"], f"{where}.replace", file))
    raise BadInputError(f"unexpected keys {sorted(map(str, keys))}", file=file, field=where,
                        fix=_FIX)


def _text(value: Any, where: str, file: str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise BadInputError("must be a string", file=file, field=where, fix=_FIX)


def _compile_check(rule: NameRule, where: str, file: str | None) -> NameRule:
    try:
        compiled = re.compile(rule.pattern)
    except re.error as exc:
        raise BadInputError(f"invalid regular expression '{rule.pattern}': {exc}", file=file,
                            field=where, fix="escape dots as \\. and check the brackets") from exc
    # A replacement naming a group the pattern lacks fails only once it matches; report it
    # now, before any output is written.
    refs = [int(g) for g in re.findall(r"\\(\d+)", rule.replace)]
    if any(g > compiled.groups for g in refs):
        raise BadInputError(f"replacement '{rule.replace}' refers to a group the pattern "
                            f"does not have (it has {compiled.groups})", file=file, field=where,
                            fix="number groups from \\1 up to the count of ( ) in the match")
    return rule
