"""Plan JSON on disk: the only place plans are serialised and parsed.

Parsing is strict and explains itself, because people hand-edit plans: the plan dataclasses
(``autosplit.plan.schema``) are the schema, pydantic validates the JSON into them (a wrong
type, a missing or unknown field, NaN or infinity names the JSON path and the fix), and
``check_plan_structure`` then checks the plan against itself. ``load_plan`` is the one reader
every command uses, so they all accept and refuse the same plans.

Paths: on disk (schema 1.1) a plan's ``source_file`` and ``chip_dirs`` are relative to the
plan file's folder, so a plan moved together with its model and cluster — or read from another
folder, or on another machine — still finds them; a plan printed to stdout carries absolute
paths. 1.0 plans wrote paths as typed; they are looked up in the working directory, then next
to the plan. ``load_plan`` keeps the paths as the file writes them (what the plan says, and
what the runtime's plan fingerprint hashes); ``plan_sources`` resolves them. A plan built in
memory (by the search, or by ``with_sources``) holds paths valid from the working directory,
which ``save_plan`` rewrites relative to the file it writes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autosplit.atomic import atomic_write_text
from autosplit.errors import BadInputError
from autosplit.inputs.files import read_input_text
from autosplit.inputs.validation import validate
from autosplit.plan.check import check_plan_structure
from autosplit.plan.schema import SCHEMA_VERSION, Plan, Prediction

__all__ = ["PLAN_DOC", "PlanSources", "load_plan", "save_plan", "plan_from_dict",
           "plan_to_json", "plan_sources", "atomic_write_text"]

PLAN_DOC = "docs/plan-schema.md"

#: Fields ``Plan.to_dict`` adds for readers' convenience; recomputed, so ignored on read.
_DERIVED_TOP = ("micro_batch_samples",)
_DERIVED_STAGE = ("dp",)


# ---- writing ---------------------------------------------------------------------------


def _on_disk(path: str, base: Path | None) -> str:
    """``path`` as a plan file records it: relative to ``base`` (the plan's folder), or
    absolute without one. Placeholders such as ``<synthetic>`` are kept."""
    if not path or path.startswith("<"):
        return path
    absolute = os.path.abspath(path)
    if base is None:
        return absolute
    try:
        return os.path.relpath(absolute, base)
    except ValueError:  # another drive (Windows): only an absolute path works
        return absolute


def plan_to_json(plan: Plan, *, relative_to: str | Path | None = None) -> str:
    """The plan as JSON text; paths relative to the folder ``relative_to``, else absolute."""
    base = Path(os.path.abspath(relative_to)) if relative_to is not None else None
    data = plan.to_dict()
    data["model"]["source_file"] = _on_disk(plan.model.source_file, base)
    data["cluster"]["source_file"] = _on_disk(plan.cluster.source_file, base)
    data["cluster"]["chip_dirs"] = [_on_disk(d, base) for d in plan.cluster.chip_dirs]
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def save_plan(plan: Plan, path: str | Path) -> None:
    """Write ``plan`` atomically, its paths relative to the file's folder."""
    atomic_write_text(path, plan_to_json(plan, relative_to=Path(path).parent))


# ---- reading ---------------------------------------------------------------------------


def load_plan(path: str | Path) -> Plan:
    """Read, validate and check the plan file at ``path`` (the one reader of plan files): the
    schema (``plan_from_dict``), then the plan's consistency with itself
    (``check_plan_structure``)."""
    p = Path(path)
    text = read_input_text(p, what="plan file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"not valid JSON ({exc.msg} at line {exc.lineno}, column "
                            f"{exc.colno})", file=str(p), fix="fix the JSON syntax") from None
    except RecursionError:
        raise BadInputError("the JSON nests too deeply", file=str(p),
                            fix="pass the JSON written by `autosplit search -o FILE`") from None
    plan = plan_from_dict(data, source=str(p))
    check_plan_structure(plan, source=str(p))
    return plan


def plan_from_dict(data: Any, *, source: str = "") -> Plan:
    """Parse a plan dict (as written by ``Plan.to_dict``) with precise error messages.

    Only the schema is checked (types, required and unknown fields, finite numbers), so tests
    and tools can build deliberately inconsistent plans; ``load_plan`` checks the rest."""
    src = source or None
    if not isinstance(data, dict):
        raise BadInputError("a plan must be a JSON object", file=src,
                            fix="pass the JSON written by `autosplit search -o FILE`")
    version = data.get("schema_version")
    if not isinstance(version, str):
        raise BadInputError("missing required field" if version is None else
                            f"expected text, got {type(version).__name__}", file=src,
                            field="schema_version",
                            fix=f'add "schema_version": "{SCHEMA_VERSION}" (see {PLAN_DOC})')
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise BadInputError(f"unsupported plan schema {version!r} (this autosplit reads "
                            f"{SCHEMA_VERSION})", file=src, field="schema_version",
                            fix="re-run `autosplit search` to regenerate it")
    data = _upgraded(data)
    raw_prediction = data.pop("prediction", None)
    plan = validate(Plan, json.dumps(data), file=src, doc=PLAN_DOC, from_json=True)
    return replace(plan, prediction=_prediction(raw_prediction))


def _upgraded(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with what earlier writers left out filled in, and the derived fields
    (``micro_batch_samples``, a stage's ``dp``) dropped."""
    data = {k: v for k, v in data.items() if k not in _DERIVED_TOP}
    model = data.get("model")
    if isinstance(model, dict):
        model = {"fingerprint": "", "block_list": "", **model}
        if isinstance(model.get("model_args"), dict):  # hand-written plans give numbers
            model["model_args"] = {str(k): v if isinstance(v, str) else json.dumps(v)
                                   for k, v in model["model_args"].items()}
        data["model"] = model
    stages = data.get("stages")
    if isinstance(stages, list):
        data["stages"] = [
            {"index": k, "layer_names": [], "module_names": [], "recompute": False,
             **{key: v for key, v in st.items() if key not in _DERIVED_STAGE}}
            if isinstance(st, dict) else st for k, st in enumerate(stages)]
    if data.get("search") is None:
        data.pop("search", None)
    return data


def _prediction(raw: Any) -> Prediction | None:
    """A prediction is derived data: a hand-edited, stale or malformed one is dropped (and
    re-costed by whatever needs it) rather than refusing the plan."""
    if raw is None:
        return None
    try:
        return validate(Prediction, json.dumps(raw), file=None, doc=PLAN_DOC, from_json=True)
    except (BadInputError, TypeError, ValueError):
        return None


def _minor(version: str) -> int:
    parts = version.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


@dataclass(frozen=True)
class PlanSources:
    """The files a plan was made from, as absolute paths ("" where the plan records none)."""

    model_file: str
    cluster_file: str
    chip_dirs: tuple[str, ...]


def plan_sources(plan: Plan, plan_file: str | Path | None) -> PlanSources:
    """Where ``plan`` (read from ``plan_file``; ``None`` for a plan built in memory) says its
    model, cluster and chip directories are, by the rule of its schema version."""
    folder = Path(os.path.abspath(plan_file)).parent if plan_file is not None else None
    as_typed = folder is None or _minor(plan.schema_version) < 1  # 1.0 recorded paths as typed

    def where(path: str) -> str:
        if not path or path.startswith("<") or os.path.isabs(path):
            return path
        if as_typed and (folder is None or Path(path).exists()):
            return os.path.abspath(path)  # from the working directory first, as 1.0 did
        return os.path.normpath(folder / path)

    return PlanSources(model_file=where(plan.model.source_file),
                       cluster_file=where(plan.cluster.source_file),
                       chip_dirs=tuple(where(d) for d in plan.cluster.chip_dirs))
