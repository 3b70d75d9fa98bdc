"""Cluster description: schema and YAML loader."""

from autosplit.cluster.load import load_cluster
from autosplit.cluster.schema import Cluster, DeviceRef, Link, Node, VendorLink

__all__ = ["Cluster", "DeviceRef", "Link", "Node", "VendorLink", "load_cluster"]
