"""What the per-service health check node ports serve, and what they answer (pure).

kube-proxy (``pkg/proxy/healthcheck/service_health.go``) opens, for every service with a
``healthCheckNodePort`` (LoadBalancer with externalTrafficPolicy Local), an HTTP server on
that port. Every request, whatever its method or path, gets ``200`` when the node has at
least one local *ready* endpoint of the service and the proxy itself is healthy, ``503``
otherwise, with a small JSON body and the local endpoint count in a header that load
balancers can use as a weight.

Local endpoints are counted as kube-proxy's ``EndpointsMap.LocalReadyEndpoints`` counts
them (``pkg/proxy/endpoints.go``): endpoints on this node (``nodeName``) that are *ready*
- a terminating endpoint that still serves does not count, so a node whose pods are all
terminating fails the check and load balancers drain it - and distinct by IP across the
service's ports (a pod serving 80 and 443 is one endpoint). kube-proxy counts per IP
family, one proxier each; a dual-stack pod is one endpoint here too (the larger of the
two families' counts).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from kproxy.model.types import IPFamily, NamespacedName
from kproxy.state import Snapshot

CONTENT_TYPE: Final = "application/json"
WEIGHT_HEADER: Final = "X-Load-Balancing-Endpoint-Weight"


@dataclass(frozen=True, slots=True)
class HealthResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def health_check_ports(snapshot: Snapshot) -> dict[NamespacedName, int]:
    """Every service that needs a health check server, with its port."""
    ports: dict[NamespacedName, int] = {}
    for service_port in snapshot.services.values():
        if service_port.health_check_node_port is not None:
            ports[service_port.name.service] = service_port.health_check_node_port
    return ports


def local_ready_endpoint_counts(
    snapshot: Snapshot, node_name: str, only: Collection[NamespacedName] | None = None
) -> dict[NamespacedName, int]:
    """Local ready endpoints per service; services with none are left out (they count 0).

    ``only`` limits the count to those services (the ones with health check ports), so a
    sync does not walk every endpoint of the cluster for the few that need it.
    """
    ips: dict[NamespacedName, dict[IPFamily, set[str]]] = {}
    for port_name, endpoints in snapshot.endpoints.items():
        if only is not None and port_name.service not in only:
            continue
        for endpoint in endpoints:
            if endpoint.ready and endpoint.node_name == node_name:
                by_family = ips.setdefault(port_name.service, {})
                by_family.setdefault(endpoint.family, set()).add(endpoint.ip)
    return {service: max(len(found) for found in by_family.values())
            for service, by_family in ips.items()}


def service_health_response(service: NamespacedName, local_endpoints: int,
                            proxy_healthy: bool) -> HealthResponse:
    """kube-proxy's answer, byte for byte (its body is tab-indented JSON, no final newline)."""
    healthy = local_endpoints != 0 and proxy_healthy
    body = (
        "{\n"
        '\t"service": {\n'
        f'\t\t"namespace": {_quoted(service.namespace)},\n'
        f'\t\t"name": {_quoted(service.name)}\n'
        "\t},\n"
        f'\t"localEndpoints": {local_endpoints},\n'
        f'\t"serviceProxyHealthy": {"true" if proxy_healthy else "false"}\n'
        "}"
    )
    headers = (
        ("Content-Type", CONTENT_TYPE),
        ("X-Content-Type-Options", "nosniff"),
        (WEIGHT_HEADER, str(local_endpoints)),
    )
    return HealthResponse(200 if healthy else 503, headers, body.encode())


def _quoted(text: str) -> str:
    # Go's %q; namespaces and names are DNS labels, for which it equals a JSON string.
    return json.dumps(text)
