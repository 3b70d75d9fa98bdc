"""The chip library: accelerator specs loaded from ``profiles/<chip>/chip.yaml``."""

from autosplit.chips.spec import ChipSpec, Provenance

__all__ = ["ChipSpec", "Provenance"]
