"""Objects from a file (``--from-file``) into the tracker, as one complete list of each kind.

Apart from kproxy.sources (the API server's informers) so that the file's path imports no
Kubernetes client library: a one-shot run from a file pays no start-up for it.
"""

from __future__ import annotations

from kproxy.feed import EndpointSliceFeed, NodeFeed, ServiceFeed
from kproxy.objectfile import ClusterObjects
from kproxy.rejections import RejectionLog
from kproxy.state import StateTracker


def feed_objects(
    objects: ClusterObjects,
    tracker: StateTracker,
    rejections: RejectionLog,
    *,
    node_name: str,
    proxy_name: str,
) -> None:
    """Apply a file's objects as one complete list of each resource."""
    service_feed = ServiceFeed(tracker, rejections, proxy_name)
    slice_feed = EndpointSliceFeed(tracker, rejections, proxy_name)
    node_feed = NodeFeed(tracker, rejections, node_name)
    for service in objects.services:
        service_feed.on_upsert(service)
    for endpoint_slice in objects.endpoint_slices:
        slice_feed.on_upsert(endpoint_slice)
    for node in objects.nodes:
        node_feed.on_upsert(node)
    service_feed.on_listed()
    slice_feed.on_listed()
    node_feed.on_listed()
