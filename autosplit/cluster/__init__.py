"""Cluster description: schema and YAML loader."""

from autosplit.cluster.schema import Cluster, DeviceRef, Link, Node, VendorLink

__all__ = ["Cluster", "DeviceRef", "Link", "Node", "VendorLink"]
