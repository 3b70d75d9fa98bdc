"""What the Sailor and Metis importers share: reading their JSON safely, and naming chips.

Other planners name GPUs their own way (Sailor: ``A100-40``, ``V100-16``, ``GH-96``; Metis:
``A100``). Rows stored under a name that is no chip or alias of the library are never used by
a search — it silently falls back to the analytic model — so every name is mapped to a library
chip here, and a name that cannot be mapped is refused with the fix (an alias in the chip file,
or ``--chip``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autosplit.chips.library import load_chip_library, resolve_chip
from autosplit.chips.spec import ChipSpec
from autosplit.errors import BadInputError
from autosplit.inputs.files import read_input_text

__all__ = ["ChipNames", "read_json"]

#: ``A100-40``, ``V100-16``, ``GH-96``, ``A100-80GB``: a GPU name and its memory in GB.
_WITH_MEMORY = re.compile(r"^(?P<base>.+?)[-_](?P<gb>\d+)(?:\s*GB)?$", re.IGNORECASE)


def read_json(path: Path, *, what: str, fix: str) -> Any:
    """The JSON content of ``path``; a binary, malformed or non-regular file is refused."""
    text = read_input_text(path, what=what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"not valid JSON: {exc.msg} at line {exc.lineno}",
                            file=str(path), fix=fix) from None
    except RecursionError:
        raise BadInputError("the JSON nests too deeply", file=str(path), fix=fix) from None


@dataclass
class ChipNames:
    """Maps another tool's GPU names to library chips, remembering what it did."""

    library: Mapping[str, ChipSpec]
    #: Source name → chip name, for every name mapped so far.
    mapped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def load(extra_dirs: Sequence[Path] = ()) -> ChipNames:
        return ChipNames(library=load_chip_library(extra_dirs=[d for d in extra_dirs
                                                               if d.is_dir()]))

    def chip_option(self, name: str) -> str:
        """The canonical name of a chip given with ``--chip``."""
        return resolve_chip(name, self.library, field="--chip").name

    def chip_for(self, gpu: str, *, tool: str, file: str) -> str:
        """The library chip that ``tool``'s GPU name ``gpu`` is."""
        if gpu in self.mapped:
            return self.mapped[gpu]
        chip = self._exact(gpu) or self._without_memory(gpu, tool=tool)
        if chip is None:
            raise BadInputError(
                f"{tool} GPU '{gpu}' is no chip or alias of the chip library, so a search "
                "would never use these rows", file=file,
                fix=f"add '{gpu}' to `aliases:` in the chip file of the chip it is (see "
                    "docs/chips.md), or pass --chip NAME; known chips: "
                    + ", ".join(self.library))
        self.mapped[gpu] = chip
        return chip

    def _exact(self, gpu: str) -> str | None:
        try:
            return resolve_chip(gpu, self.library).name
        except BadInputError:
            return None

    def _without_memory(self, gpu: str, *, tool: str) -> str | None:
        match = _WITH_MEMORY.match(gpu)
        if match is None:
            return None
        base = self._exact(match["base"])
        if base is None:
            return None
        gb, spec = int(match["gb"]), self.library[base]
        if abs(spec.memory_gb - gb) > 0.5:
            self.notes.append(
                f"{tool} GPU '{gpu}' is stored as chip '{base}': the library's {base} has "
                f"{spec.memory_gb:g} GB, this one {gb} GB. A search uses these times for every "
                f"{base} node; give nodes of the {gb} GB model `memory_gb: {gb}`, or pass "
                "--chip to store the rows under another chip.")
        else:
            self.notes.append(f"{tool} GPU '{gpu}' is stored as chip '{base}'.")
        return base
