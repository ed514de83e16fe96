"""An in-memory, protocol-faithful Kubernetes API server for tests, demos and local runs.

Serves v1 Services, Nodes and Namespaces and discovery.k8s.io/v1 EndpointSlices over HTTP
with real list/watch semantics, so the client library and kubectl work against it unchanged.
"""

from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.objects import StoredObject
from kproxy.devcluster.apiserver.resources import (
    ENDPOINT_SLICES,
    NAMESPACES,
    NODES,
    SERVICES,
    ResourceType,
)
from kproxy.devcluster.apiserver.server import DevApiServer
from kproxy.devcluster.apiserver.store import Store

__all__ = [
    "ENDPOINT_SLICES",
    "NAMESPACES",
    "NODES",
    "SERVICES",
    "ApiError",
    "DevApiServer",
    "ResourceType",
    "Store",
    "StoredObject",
]
