"""Small interfaces that let one part of autosplit be swapped without touching the others."""

from autosplit.protocols.cost import LayerCostProvider, LayerTiming
from autosplit.protocols.schedule import Pass, PassKind, Schedule

__all__ = ["LayerCostProvider", "LayerTiming", "Pass", "PassKind", "Schedule"]
