"""`autosplit chips` (not written yet)."""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add this command to the app."""
