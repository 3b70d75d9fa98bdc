"""The chip library: accelerator specs loaded from ``profiles/<chip>/chip.yaml``."""

from autosplit.chips.library import load_chip_library, resolve_chip
from autosplit.chips.spec import ChipSpec, Provenance

__all__ = ["ChipSpec", "Provenance", "load_chip_library", "resolve_chip"]
