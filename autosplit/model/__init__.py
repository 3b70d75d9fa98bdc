"""Model ingestion: turn a user's ``model.py`` into a ``ModelProfile``.

``LayerProfile``/``ModelProfile`` are plain dataclasses and import instantly; the entry points
that need PyTorch (``ingest_model``, ``load_model_source``, ``build_on_meta``,
``find_partition``) are imported on first use so that ``import autosplit.model.types`` (and
the CLI's ``--help``) never pays for importing torch.
"""

from __future__ import annotations

from typing import Any

from autosplit.model.types import LayerProfile, ModelProfile

__all__ = ["LayerProfile", "ModelProfile", "ingest_model", "load_model_source",
           "build_on_meta", "find_partition", "ModelSource", "Partition"]

_LAZY = {
    "ingest_model": "autosplit.model.ingest",
    "load_model_source": "autosplit.model.loader",
    "build_on_meta": "autosplit.model.loader",
    "find_partition": "autosplit.model.loader",
    "ModelSource": "autosplit.model.loader",
    "Partition": "autosplit.model.loader",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'autosplit.model' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
