"""The partition units a profile is mapped onto: their names and layer kinds.

The measured provider matches rows by ``layer_kind``. Given the model file the profile was
taken of, an importer uses ingestion's kinds unit by unit; without it, kinds are named
``<model>:pre``, ``<model>:block`` and ``<model>:post`` (usable once a model with those kinds
exists, or for inspection with pandas).
"""

from __future__ import annotations

from dataclasses import dataclass

from autosplit.errors import BadInputError

__all__ = ["UnitKinds"]


@dataclass(frozen=True)
class UnitKinds:
    """The partition units of the model the profile belongs to: names and layer kinds."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    #: Structure keys of the units (``structure.UnitStructure.key``) when the model file was
    #: given: rows carrying them are found from any checkout and survive edits of the file.
    structures: tuple[str, ...] = ()

    def structure(self, index: int) -> str:
        """The structure key of unit ``index`` (empty for generic kinds)."""
        return self.structures[index] if index < len(self.structures) else ""

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
        # Cached, and ingested in a child process: a model file that exits or hangs at
        # import is reported (exit 2), not the end of the command with exit 0.
        from autosplit.model.cache import ingest_model_cached
        from autosplit.profiler.structure import unit_structure

        profile = ingest_model_cached(path, model_args=model_args, seq_len=seq_len,
                                      dtype=dtype)
        return UnitKinds(names=tuple(u.name for u in profile.layers),
                         kinds=tuple(u.layer_kind or u.name for u in profile.layers),
                         structures=tuple(unit_structure(u).key for u in profile.layers))

    def check(self, count: int, *, file: str) -> None:
        if count != len(self.names):
            raise BadInputError(f"the profile has {count} layers but the model has "
                                f"{len(self.names)} partition units", file=file,
                                fix="import with the model file the profile was taken of "
                                    "(embedding + blocks + head), or without --model")
