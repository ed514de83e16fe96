"""A synthetic cluster for the iptables benches: N ClusterIP services x E endpoints (IPv4).

Objects are raw API dicts, fed through the same handlers the informers call
(:class:`~kproxy.feed.ServiceFeed`, :class:`~kproxy.feed.EndpointSliceFeed`), so the state a
bench plans from is exactly what ``kproxy run`` would hold after listing such a cluster.

Addresses: cluster IPs are drawn (seeded) from 10.96.0.0/12, as an allocator scatters them;
endpoints of synthetic services live in 10.128.0.0/10, which no lab address uses, so only the
services a bench points at real pods (``real_endpoints``) can ever answer.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping, Sequence
from typing import Any

from kproxy.config.record import DetectLocalMode, IptablesBackend, ProxyConfig
from kproxy.feed import EndpointSliceFeed, NodeFeed, ServiceFeed
from kproxy.rejections import RejectionLog
from kproxy.state import ResourceKind, StateTracker

SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
ENDPOINT_BASE = int(ipaddress.IPv4Address("10.128.0.0"))
CLUSTER_CIDR = "10.244.0.0/16"  # the lab's pod network
SERVICE_PORT = 80
TARGET_PORT = 8080
NAMESPACES = 50
NODES = 100
SEED = 20240611


def cluster_ips(count: int, seed: int = SEED) -> list[str]:
    """``count`` distinct cluster IPs scattered over the service CIDR (index i: service i)."""
    first = int(SERVICE_CIDR.network_address) + 1
    numbers = random.Random(seed).sample(range(first, first + SERVICE_CIDR.num_addresses - 2),
                                         count)
    return [str(ipaddress.IPv4Address(number)) for number in numbers]


def service_name(index: int) -> tuple[str, str]:
    """(namespace, name) of service ``index``."""
    return f"ns-{index % NAMESPACES}", f"svc-{index}"


def endpoint_ip(index: int, offset: int, generation: int = 0) -> str:
    """Endpoint ``offset`` of service ``index``; each generation gets fresh addresses."""
    number = ENDPOINT_BASE + (generation * 1_000_003 + index * 16 + offset) % (1 << 22)
    return str(ipaddress.IPv4Address(number))


def service_object(index: int, cluster_ip: str) -> dict[str, Any]:
    namespace, name = service_name(index)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "spec": {
            "type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"],
            "ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP",
                       "targetPort": TARGET_PORT}],
        },
    }


def endpoint_slice_object(index: int, addresses: Sequence[str],
                          version: int = 1) -> dict[str, Any]:
    namespace, name = service_name(index)
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-abcde", "namespace": namespace,
                     "resourceVersion": str(version),
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [address], "conditions": {"ready": True},
             "nodeName": f"node-{(index + offset) % NODES}"}
            for offset, address in enumerate(addresses)
        ],
    }


def node_object(name: str, ip: str, pod_cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": "1"},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


def bench_config(hostname: str, *, backend: IptablesBackend = IptablesBackend.AUTO,
                 min_sync_period: float = 1.0, sync_period: float = 30.0) -> ProxyConfig:
    """kube-proxy's defaults, with the lab's cluster CIDR for local-traffic detection."""
    return ProxyConfig(
        hostname=hostname,
        cluster_cidrs=(CLUSTER_CIDR,),
        detect_local_mode=DetectLocalMode.CLUSTER_CIDR,
        iptables_backend=backend,
        min_sync_period=min_sync_period,
        sync_period=sync_period,
    )


class World:
    """The cluster's objects and the handlers that feed them to a tracker."""

    def __init__(self, services: int, endpoints: int, *, node_name: str, node_ip: str,
                 pod_cidr: str, real_endpoints: Mapping[int, Sequence[str]] | None = None,
                 service_indices: Sequence[int] | None = None) -> None:
        """``service_indices`` picks which of the ``services`` exist (default: all), so a
        small world can share its services' addresses with a large one."""
        self.ips = cluster_ips(services)
        self.indices = list(range(services) if service_indices is None else service_indices)
        self.endpoints = endpoints
        self.node_name = node_name
        self.node = node_object(node_name, node_ip, pod_cidr)
        self.real_endpoints = dict(real_endpoints or {})
        self.versions: dict[int, int] = {}

    def addresses(self, index: int, generation: int = 0) -> list[str]:
        real = self.real_endpoints.get(index)
        if real is not None:
            return list(real)
        return [endpoint_ip(index, offset, generation) for offset in range(self.endpoints)]

    def fill(self, tracker: StateTracker, *, mark_listed: bool = True) -> EndpointSliceFeed:
        """Feed every object as one complete list of each kind; returns the slice handler
        (for later endpoint changes)."""
        rejections = RejectionLog()
        services = ServiceFeed(tracker, rejections, "")
        slices = EndpointSliceFeed(tracker, rejections, "")
        NodeFeed(tracker, rejections, self.node_name).on_upsert(self.node)
        for index in self.indices:
            services.on_upsert(service_object(index, self.ips[index]))
        for index in self.indices:
            slices.on_upsert(self.slice(index))
        if mark_listed:
            tracker.mark_listed(ResourceKind.SERVICES)
            tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)
        return slices

    def slice(self, index: int, generation: int = 0) -> dict[str, Any]:
        version = self.versions.get(index, 0) + 1
        self.versions[index] = version
        return endpoint_slice_object(index, self.addresses(index, generation), version)

    def changed_slice(self, index: int, generation: int) -> dict[str, Any]:
        """Service ``index``'s slice with its last endpoint replaced (one endpoint change)."""
        addresses = self.addresses(index)
        addresses[-1] = endpoint_ip(index, self.endpoints - 1, generation)
        version = self.versions.get(index, 0) + 1
        self.versions[index] = version
        return endpoint_slice_object(index, addresses, version)

    def last_in_flat_order(self) -> int:
        """The service a flat KUBE-SERVICES list (ordered by address) would put last."""
        return max(self.indices, key=lambda index: ipaddress.IPv4Address(self.ips[index]))

    def first_in_flat_order(self) -> int:
        return min(self.indices, key=lambda index: ipaddress.IPv4Address(self.ips[index]))
