"""Model ingestion: turn a user's ``model.py`` into a ``ModelProfile``."""

from autosplit.model.types import LayerProfile, ModelProfile

__all__ = ["LayerProfile", "ModelProfile"]
