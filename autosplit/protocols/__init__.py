"""Small interfaces that let one part of autosplit be swapped without touching the others."""

from autosplit.protocols.cost import LayerCostProvider, LayerTiming

__all__ = ["LayerCostProvider", "LayerTiming"]
