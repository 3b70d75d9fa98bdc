"""JSON Schemas of the cluster, chip and plan files, for editors (``docs/schemas/``).

The schemas are generated from the same pydantic models and dataclasses that validate the
files, so they cannot drift from what autosplit accepts (tests/test_formats.py checks the
committed files are current). Regenerate after changing a format::

    python -m autosplit.inputs.json_schema docs/schemas

An editor that reads JSON Schema (VS Code with the YAML extension, JetBrains IDEs) then
completes keys and flags wrong types while the file is written, e.g. with a first line
``# yaml-language-server: $schema=../../docs/schemas/cluster.schema.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from autosplit.atomic import atomic_write_text

__all__ = ["SCHEMA_FILES", "schema_text", "write_schemas", "main"]

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _roots() -> dict[str, tuple[Any, str]]:
    from autosplit.chips.chip_file import ChipYaml
    from autosplit.cluster.file_format import ClusterFile
    from autosplit.plan.schema import Plan

    return {
        "cluster.schema.json": (ClusterFile, "autosplit cluster file (docs/cluster-format.md)"),
        "chip.schema.json": (ChipYaml, "autosplit chip file, profiles/<chip>/chip.yaml "
                                       "(docs/chips.md)"),
        "plan.schema.json": (Plan, "autosplit plan JSON (docs/plan-schema.md)"),
    }


#: The schema files, in docs/schemas/.
SCHEMA_FILES: tuple[str, ...] = ("cluster.schema.json", "chip.schema.json", "plan.schema.json")


def _with_derived_plan_fields(schema: dict[str, Any]) -> None:
    """``Plan.to_dict`` writes two derived fields that reading ignores; declare them so that an
    editor does not flag every plan autosplit writes."""
    schema["properties"]["micro_batch_samples"] = {
        "type": "integer", "readOnly": True,
        "description": "global_batch / micro_batch_count (derived; ignored on read)."}
    stage = schema["$defs"]["StagePlan"]
    stage["properties"]["dp"] = {
        "type": "integer", "readOnly": True,
        "description": "Number of replicas (derived; ignored on read)."}


def schema_text(name: str) -> str:
    """The JSON Schema ``name`` (one of ``SCHEMA_FILES``) as the committed file holds it."""
    root, title = _roots()[name]
    schema: dict[str, Any] = {"$schema": _DIALECT,
                              **TypeAdapter(root).json_schema(mode="validation")}
    schema["title"] = title
    if name == "plan.schema.json":
        _with_derived_plan_fields(schema)
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_schemas(folder: str | Path) -> list[Path]:
    """Write every schema into ``folder``; the paths written."""
    out = []
    for name in SCHEMA_FILES:
        path = Path(folder) / name
        atomic_write_text(path, schema_text(name))
        out.append(path)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autosplit.inputs.json_schema",
                                     description="Write the file formats' JSON Schemas.")
    parser.add_argument("folder", nargs="?", default="docs/schemas",
                        help="where to write them (default: docs/schemas)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a file there differs from the generated schema")
    args = parser.parse_args(argv)
    if args.check:
        stale = [name for name in SCHEMA_FILES
                 if not (Path(args.folder) / name).is_file()
                 or (Path(args.folder) / name).read_text(encoding="utf-8") != schema_text(name)]
        for name in stale:
            print(f"{Path(args.folder) / name} is out of date", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schemas(args.folder):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
