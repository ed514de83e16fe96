"""Endpoint selection per traffic policy: kube-proxy's CategorizeEndpoints truth table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kproxy.iptables.serviceview import family_view
from kproxy.iptables.topology import TopologyMode, categorize_endpoints, topology_mode
from kproxy.model.types import (
    Endpoint,
    IPFamily,
    Protocol,
    ServicePort,
    ServicePortName,
    ServiceType,
    TrafficPolicy,
)

NODE = "node-1"


def ep(
    ip: str,
    *,
    local: bool = False,
    ready: bool = True,
    serving: bool = True,
    terminating: bool = False,
    zones: tuple[str, ...] | None = None,
    nodes: tuple[str, ...] | None = None,
) -> Endpoint:
    return Endpoint(
        ip, 80, ready, serving, terminating, NODE if local else "node-9", None,
        frozenset(zones) if zones is not None else None,
        frozenset(nodes) if nodes is not None else None,
    )


def service(*, external_local: bool = False, internal_local: bool = False,
            node_port: int | None = None) -> ServicePort:
    return ServicePort(
        name=ServicePortName("ns", "svc", "", Protocol.TCP),
        type=ServiceType.NODE_PORT if node_port else ServiceType.CLUSTER_IP,
        cluster_ips=("10.96.0.1",),
        port=80,
        protocol=Protocol.TCP,
        target_port=80,
        node_port=node_port,
        external_traffic_policy=TrafficPolicy.LOCAL if external_local else TrafficPolicy.CLUSTER,
        internal_traffic_policy=TrafficPolicy.LOCAL if internal_local else TrafficPolicy.CLUSTER,
    )


@dataclass(frozen=True)
class Case:
    name: str
    port: ServicePort
    endpoints: tuple[Endpoint, ...]
    cluster: set[str]
    local: set[str]
    reachable: set[str]
    zone: str = "zone-a"
    node_hints: bool = False


CLUSTER = service()
ITP_LOCAL = service(internal_local=True)
ETP_LOCAL = service(external_local=True, node_port=30080)
BOTH_LOCAL = service(external_local=True, internal_local=True, node_port=30080)
ITP_LOCAL_EXTERNAL = service(internal_local=True, node_port=30080)

A, B, C, D = "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"

CASES = [
    Case("hints for the node's zone narrow cluster endpoints", CLUSTER, (
        ep(A, zones=("zone-a",)), ep(B, zones=("zone-b",)), ep(C, zones=("zone-c",)),
        ep(D, zones=("zone-a",)),
    ), {A, D}, set(), {A, D}),
    Case("eTP Local: topology ignored for Local endpoints", ETP_LOCAL, (
        ep(A, local=True, zones=("zone-a",)), ep(B, local=True, zones=("zone-b",)),
        ep(C, zones=("zone-c",)), ep(D, zones=("zone-a",)),
    ), {A, D}, {A, B}, {A, B, D}),
    Case("iTP Local: topology ignored for Local endpoints", ITP_LOCAL_EXTERNAL, (
        ep(A, local=True, zones=("zone-a",)), ep(B, local=True, zones=("zone-b",)),
        ep(C, zones=("zone-c",)), ep(D, zones=("zone-a",)),
    ), {A, D}, {A, B}, {A, B, D}),
    Case("node without zone: hints ignored", CLUSTER, (ep(A, zones=("zone-a",)),),
         {A}, set(), {A}, zone=""),
    Case("node in a zone without hints: no filtering", CLUSTER, (
        ep(A, zones=("zone-a",)), ep(C, zones=("zone-c",)),
    ), {A, C}, set(), {A, C}, zone="zone-b"),
    Case("unready endpoints are not used", CLUSTER, (
        ep(A, zones=("zone-a",)), ep(B, zones=("zone-b",)), ep(C, zones=("zone-c",)),
        ep(D, ready=False, zones=("zone-a",)),
    ), {A}, set(), {A}),
    Case("only unready endpoints in the zone: no filtering", CLUSTER, (
        ep(A, ready=False, zones=("zone-a",)), ep(B, zones=("zone-b",)),
        ep(C, zones=("zone-c",)), ep(D, ready=False, zones=("zone-a",)),
    ), {B, C}, set(), {B, C}),
    Case("an endpoint without hints: no filtering", CLUSTER, (
        ep(A, zones=("zone-a",)), ep(B, zones=("zone-b",)), ep(C), ep(D, zones=("zone-a",)),
    ), {A, B, C, D}, set(), {A, B, C, D}),
    Case("several hints per endpoint", CLUSTER, (
        ep(A, zones=("zone-a", "zone-b", "zone-c")), ep(B, zones=("zone-b", "zone-c")),
        ep(C, zones=("zone-b", "zone-d")), ep(D, zones=("zone-c",)),
    ), {A, B, D}, set(), {A, B, D}, zone="zone-c"),
    Case("node hints are ignored without the PreferSameNode gate", CLUSTER, (
        ep(A, zones=("zone-a",), nodes=(NODE,)), ep(B, zones=("zone-b",), nodes=("n2",)),
        ep(C, zones=("zone-c",), nodes=("n3",)), ep(D, zones=("zone-a",), nodes=("n4",)),
    ), {A, D}, set(), {A, D}),
    Case("node hints with the gate", CLUSTER, (
        ep(A, zones=("zone-a",), nodes=(NODE,)), ep(B, zones=("zone-b",), nodes=("n2",)),
        ep(C, zones=("zone-c",), nodes=("n3",)), ep(D, zones=("zone-a",), nodes=("n4",)),
    ), {A}, set(), {A}, node_hints=True),
    Case("node hints with the gate, an endpoint unhinted", CLUSTER, (
        ep(A, zones=("zone-a",), nodes=(NODE,)), ep(B),
        ep(C, zones=("zone-c",), nodes=("n3",)), ep(D, zones=("zone-a",), nodes=("n4",)),
    ), {A, B, C, D}, set(), {A, B, C, D}, node_hints=True),
    Case("node hints with the gate, none for this node: zone hints", CLUSTER, (
        ep(A, zones=("zone-a",), nodes=("n0",)), ep(B, zones=("zone-b",), nodes=("n2",)),
        ep(C, zones=("zone-c",), nodes=("n3",)), ep(D, zones=("zone-a",), nodes=("n4",)),
    ), {A, D}, set(), {A, D}, node_hints=True),
    Case("topology and localness disagree: reachable is the union", ITP_LOCAL_EXTERNAL, (
        ep("10.0.0.0", local=True, zones=("zone-a",)), ep("10.0.0.1", local=True,
                                                           zones=("zone-b",)),
        ep("10.0.0.2", zones=("zone-a",)), ep("10.0.0.3", zones=("zone-b",)),
    ), {"10.0.0.0", "10.0.0.2"}, {"10.0.0.0", "10.0.0.1"},
        {"10.0.0.0", "10.0.0.1", "10.0.0.2"}),
    Case("iTP Local without endpoints", ITP_LOCAL, (), set(), set(), set()),
    Case("iTP Local, all endpoints remote", ITP_LOCAL, (ep(A), ep(B)), set(), set(), set()),
    Case("iTP Local, all endpoints local", ITP_LOCAL, (ep(A, local=True), ep(B, local=True)),
         set(), {A, B}, {A, B}),
    Case("iTP Local, some endpoints local", ITP_LOCAL, (ep(A, local=True), ep(B)),
         set(), {A}, {A}),
    Case("Cluster, no endpoint ready", CLUSTER, (ep(A, ready=False), ep(B, ready=False)),
         set(), set(), set()),
    Case("Cluster, some endpoints ready", CLUSTER, (ep(A, ready=False), ep(B)),
         {B}, set(), {B}),
    Case("Cluster, all endpoints terminating", CLUSTER, (
        ep(A, ready=False, terminating=True), ep(B, ready=False, terminating=True),
    ), {A, B}, set(), {A, B}),
    Case("terminating but not serving is never used", CLUSTER, (
        ep(A, ready=False, serving=False, terminating=True),
    ), set(), set(), set()),
    Case("iTP Local, eTP Cluster, some local", ITP_LOCAL_EXTERNAL, (ep(A, local=True), ep(B)),
         {A, B}, {A}, {A, B}),
    Case("iTP Cluster, eTP Local, some local", ETP_LOCAL, (ep(A, local=True), ep(B)),
         {A, B}, {A}, {A, B}),
    Case("both Local, some local", BOTH_LOCAL, (ep(A, local=True), ep(B)), {A, B}, {A}, {A, B}),
    Case("both Local, all remote", BOTH_LOCAL, (ep(A), ep(B)), {A, B}, set(), {A, B}),
    Case("both Local, all remote and terminating", BOTH_LOCAL, (
        ep(A, ready=False, terminating=True), ep(B, ready=False, terminating=True),
    ), {A, B}, set(), {A, B}),
    Case("eTP Local: local terminating endpoints when none is ready locally", ETP_LOCAL, (
        ep("10.0.0.0"), ep("10.0.0.1", local=True, ready=False, serving=False),
        ep("10.0.0.2", local=True, ready=False, terminating=True),
        ep("10.0.0.3", ready=False, terminating=True),
    ), {"10.0.0.0"}, {"10.0.0.2"}, {"10.0.0.0", "10.0.0.2"}),
    Case("eTP ignored when not externally accessible", service(external_local=True),
         (ep(A), ep(B, local=True)), {A, B}, set(), {A, B}),
    Case("eTP Local without endpoints", ETP_LOCAL, (), set(), set(), set()),
    Case("eTP Local, all remote", ETP_LOCAL, (ep(A), ep(B)), {A, B}, set(), {A, B}),
    Case("eTP Local, all local", ETP_LOCAL, (ep(A, local=True), ep(B, local=True)),
         {A, B}, {A, B}, {A, B}),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_categorize_endpoints(case: Case) -> None:
    view = family_view(case.port, IPFamily.IPV4)
    assert view is not None
    categories = categorize_endpoints(
        case.endpoints,
        uses_cluster=view.uses_cluster_endpoints,
        uses_local=view.uses_local_endpoints,
        node_name=NODE,
        zone=case.zone,
        prefer_same_node_hints=case.node_hints,
    )
    assert {e.ip for e in categories.cluster} == case.cluster
    assert {e.ip for e in categories.local} == case.local
    assert {e.ip for e in categories.reachable} == case.reachable
    # Reachable endpoints keep the input order and appear once.
    order = [e.ip for e in case.endpoints if e.ip in case.reachable]
    assert [e.ip for e in categories.reachable] == order


@pytest.mark.parametrize(
    ("endpoints", "has_any"),
    [
        ((), False),
        ((ep(A, ready=False, serving=False),), False),
        ((ep(A, ready=False, terminating=True),), True),
        ((ep(A),), True),
    ],
)
@pytest.mark.parametrize("port", [CLUSTER, ITP_LOCAL, ETP_LOCAL])
def test_has_any_counts_usable_endpoints_anywhere(
    endpoints: tuple[Endpoint, ...], has_any: bool, port: ServicePort
) -> None:
    view = family_view(port, IPFamily.IPV4)
    assert view is not None
    categories = categorize_endpoints(
        endpoints, uses_cluster=view.uses_cluster_endpoints,
        uses_local=view.uses_local_endpoints, node_name=NODE, zone="",
    )
    assert categories.has_any is has_any


def test_topology_mode_needs_every_ready_endpoint_hinted() -> None:
    hinted = ep(A, zones=("zone-a",))
    assert topology_mode((hinted,), NODE, "zone-a", False) is TopologyMode.PREFER_SAME_ZONE
    assert topology_mode((hinted, ep(B)), NODE, "zone-a", False) is TopologyMode.NONE
    # Unready endpoints do not count, hinted or not.
    assert topology_mode((hinted, ep(B, ready=False)), NODE, "zone-a", False) is (
        TopologyMode.PREFER_SAME_ZONE
    )
    assert topology_mode((ep(B, ready=False),), NODE, "zone-a", False) is TopologyMode.NONE
