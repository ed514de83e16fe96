"""The API server's objects into the tracker, through informers (a file's: kproxy.filesource)."""

from __future__ import annotations

import asyncio
import logging

from kproxy.clock import Clock
from kproxy.feed import EndpointSliceFeed, NodeFeed, ServiceFeed
from kproxy.kube.informer import Informer, ResourceSpec
from kproxy.kube.transport import KubeTransport
from kproxy.model.labels import label_selector
from kproxy.rejections import RejectionLog
from kproxy.state import StateTracker

log = logging.getLogger(__name__)


def resource_specs(node_name: str, proxy_name: str) -> tuple[ResourceSpec, ...]:
    """What kproxy watches, with kube-proxy's server-side selectors.

    The EndpointSlice controller copies a Service's labels onto its slices, so the same
    label selector filters both; the Node is watched by name.
    """
    selector = label_selector(proxy_name)
    return (
        ResourceSpec("Service", "/api/v1/services", label_selector=selector),
        ResourceSpec(
            "EndpointSlice", "/apis/discovery.k8s.io/v1/endpointslices", label_selector=selector
        ),
        ResourceSpec("Node", "/api/v1/nodes", field_selector=f"metadata.name={node_name}"),
    )


class ApiSource:
    """Three informers (Services, EndpointSlices, this Node) feeding one tracker."""

    def __init__(
        self,
        transport: KubeTransport,
        tracker: StateTracker,
        rejections: RejectionLog,
        *,
        node_name: str,
        proxy_name: str,
        clock: Clock,
    ) -> None:
        services, slices, node = resource_specs(node_name, proxy_name)
        self.informers = (
            Informer(transport, services, ServiceFeed(tracker, rejections, proxy_name),
                     clock=clock),
            Informer(transport, slices, EndpointSliceFeed(tracker, rejections, proxy_name),
                     clock=clock),
            Informer(transport, node, NodeFeed(tracker, rejections, node_name), clock=clock),
        )

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for informer in self.informers:
                group.create_task(informer.run())

