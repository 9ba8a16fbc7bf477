"""Several workers on one database and a Redis broker: see node.py and docs/deploy.md."""

from app.cluster.node import Cluster

__all__ = ["Cluster"]
