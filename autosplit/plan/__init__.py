"""The plan: schema, JSON I/O, validation and re-costing."""

from autosplit.plan.schema import SCHEMA_VERSION, Plan, Replica, StagePlan

__all__ = ["SCHEMA_VERSION", "Plan", "Replica", "StagePlan"]
