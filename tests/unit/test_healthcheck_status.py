"""Which services get a health check port, how local endpoints are counted, the answer."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest

from kproxy.healthcheck_status import (
    health_check_ports,
    local_ready_endpoint_counts,
    service_health_response,
)
from kproxy.model.types import (
    Endpoint,
    NamespacedName,
    Protocol,
    ServicePort,
    ServicePortName,
    ServiceType,
    TrafficPolicy,
)
from kproxy.state import Snapshot

NODE = "node1"
WEB = NamespacedName("shop", "web")


def port(service: str, name: str, *, health_check_node_port: int | None = None,
         namespace: str = "shop") -> ServicePort:
    local = health_check_node_port is not None
    return ServicePort(
        name=ServicePortName(namespace, service, name, Protocol.TCP),
        type=ServiceType.LOAD_BALANCER if local else ServiceType.CLUSTER_IP,
        cluster_ips=("10.96.0.1",),
        port=80,
        protocol=Protocol.TCP,
        target_port=8080,
        node_port=30080 if local else None,
        external_traffic_policy=TrafficPolicy.LOCAL if local else TrafficPolicy.CLUSTER,
        health_check_node_port=health_check_node_port,
    )


def snapshot(ports: list[ServicePort],
             endpoints: dict[ServicePortName, tuple[Endpoint, ...]] | None = None) -> Snapshot:
    return Snapshot(
        generation=1,
        services=MappingProxyType({p.name: p for p in ports}),
        endpoints=MappingProxyType(endpoints or {}),
        node=None, changed=frozenset(), node_changed=False)


def test_health_check_ports_are_those_of_services_that_have_one() -> None:
    ports = [
        port("web", "http", health_check_node_port=32000),
        port("web", "https", health_check_node_port=32000),
        port("api", "http"),
        port("db", "sql", health_check_node_port=32001, namespace="data"),
    ]
    assert health_check_ports(snapshot(ports)) == {
        WEB: 32000, NamespacedName("data", "db"): 32001}


HTTP = ServicePortName("shop", "web", "http", Protocol.TCP)
HTTPS = ServicePortName("shop", "web", "https", Protocol.TCP)


def local(ip: str, port_number: int = 8080, *, ready: bool = True, serving: bool = True,
          terminating: bool = False) -> Endpoint:
    return Endpoint(ip, port_number, ready=ready, serving=serving, terminating=terminating,
                    node_name=NODE)


# (case, endpoints per port, expected count; None: the service is absent, i.e. 0)
COUNT_CASES: list[tuple[str, dict[ServicePortName, tuple[Endpoint, ...]], int | None]] = [
    ("local-ready", {HTTP: (local("10.244.1.2"),)}, 1),
    ("two-local-ready", {HTTP: (local("10.244.1.2"), local("10.244.1.3"))}, 2),
    ("remote-ready-only", {HTTP: (Endpoint("10.244.2.2", 8080, node_name="node2"),)}, None),
    ("no-node-name", {HTTP: (Endpoint("10.244.1.2", 8080),)}, None),
    ("local-not-ready", {HTTP: (local("10.244.1.2", ready=False, serving=False),)}, None),
    ("local-terminating-still-serving",
     {HTTP: (local("10.244.1.2", ready=False, serving=True, terminating=True),)}, None),
    ("ready-beside-terminating",
     {HTTP: (local("10.244.1.2"),
             local("10.244.1.3", ready=False, serving=True, terminating=True))}, 1),
    ("same-pod-on-two-ports",
     {HTTP: (local("10.244.1.2", 8080),), HTTPS: (local("10.244.1.2", 8443),)}, 1),
    ("different-pods-on-two-ports",
     {HTTP: (local("10.244.1.2", 8080),), HTTPS: (local("10.244.1.3", 8443),)}, 2),
    ("dual-stack-pod",
     {HTTP: (local("10.244.1.2"), local("fd00:10:244:1::2"))}, 1),
    ("no-endpoints", {HTTP: ()}, None),
]


@pytest.mark.parametrize(("endpoints", "expected"), [case[1:] for case in COUNT_CASES],
                         ids=[case[0] for case in COUNT_CASES])
def test_local_ready_endpoint_counts(endpoints: dict[ServicePortName, tuple[Endpoint, ...]],
                                     expected: int | None) -> None:
    counts = local_ready_endpoint_counts(snapshot([], endpoints), NODE)
    assert counts.get(WEB) == expected
    assert set(counts) <= {WEB}


def test_counts_are_per_service() -> None:
    other = ServicePortName("shop", "api", "http", Protocol.TCP)
    counts = local_ready_endpoint_counts(
        snapshot([], {HTTP: (local("10.244.1.2"),), other: (local("10.244.1.2"),
                                                             local("10.244.1.9"))}), NODE)
    assert counts == {WEB: 1, NamespacedName("shop", "api"): 2}


EXPECTED_BODY = (
    b'{\n\t"service": {\n\t\t"namespace": "shop",\n\t\t"name": "web"\n\t},\n'
    b'\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}'
)


def test_healthy_response_is_kube_proxys_byte_for_byte() -> None:
    response = service_health_response(WEB, 2, True)
    assert response.status == 200
    assert response.headers == (
        ("Content-Type", "application/json"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Load-Balancing-Endpoint-Weight", "2"),
    )
    assert response.body == EXPECTED_BODY
    assert json.loads(response.body) == {
        "service": {"namespace": "shop", "name": "web"},
        "localEndpoints": 2, "serviceProxyHealthy": True}


@pytest.mark.parametrize(("count", "proxy_healthy", "status"), [
    (1, True, 200), (3, True, 200), (0, True, 503), (2, False, 503), (0, False, 503)])
def test_status_needs_local_endpoints_and_a_healthy_proxy(
        count: int, proxy_healthy: bool, status: int) -> None:
    response = service_health_response(WEB, count, proxy_healthy)
    assert response.status == status
    assert json.loads(response.body)["localEndpoints"] == count
    assert json.loads(response.body)["serviceProxyHealthy"] is proxy_healthy
    assert dict(response.headers)["X-Load-Balancing-Endpoint-Weight"] == str(count)
