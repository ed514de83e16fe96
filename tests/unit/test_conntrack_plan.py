"""Stale UDP flow detection: kube-proxy 1.33's reconciler rules, and conntrack output parsing."""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

import pytest

from kproxy.conntrack_plan import ConntrackEntry, parse_entry, parse_listing, stale_udp_flows
from kproxy.model.types import (
    Endpoint,
    IPFamily,
    Protocol,
    ServicePort,
    ServicePortName,
    ServiceType,
)
from kproxy.state import Snapshot

NODE_IP = "172.18.0.11"
CLIENT = "10.244.1.2"
CLIENT6 = "fd00:10:244:1::2"


def udp_port(name: str, cluster_ips: tuple[str, ...], port: int, *,
             protocol: Protocol = Protocol.UDP, node_port: int | None = None,
             external_ips: tuple[str, ...] = (),
             load_balancer_ips: tuple[str, ...] = ()) -> ServicePort:
    return ServicePort(
        name=ServicePortName("ns", name, "p", protocol),
        type=ServiceType.LOAD_BALANCER if node_port else ServiceType.CLUSTER_IP,
        cluster_ips=cluster_ips,
        port=port,
        protocol=protocol,
        target_port=port,
        node_port=node_port,
        external_ips=external_ips,
        load_balancer_ips=load_balancer_ips,
    )


DNS = udp_port("dns", ("10.96.0.10",), 53)
GAME = udp_port("game", ("10.96.5.5",), 7777, node_port=30777,
                external_ips=("192.0.2.10",), load_balancer_ips=("198.51.100.7",))
ZERO = udp_port("zero", ("10.96.9.9",), 9999)
WEB = udp_port("web", ("10.96.0.80",), 80, protocol=Protocol.TCP)
DUAL = udp_port("dual", ("10.96.6.6", "fd00:96::6"), 53)
GONE = udp_port("gone", ("10.96.8.8",), 53)  # not in the snapshot: a deleted service

ENDPOINTS: dict[ServicePort, tuple[Endpoint, ...]] = {
    DNS: (
        Endpoint("10.244.1.5", 5353),
        Endpoint("10.244.2.7", 5353),
        Endpoint("10.244.1.9", 5353, ready=False, serving=False),
        Endpoint("10.244.2.8", 5353, ready=False, serving=True, terminating=True),
    ),
    GAME: (Endpoint("10.244.1.20", 7000),),
    ZERO: (Endpoint("10.244.1.40", 9999, ready=False, serving=False),),
    WEB: (Endpoint("10.244.1.30", 8080),),
    DUAL: (Endpoint("fd00:10:244:1::5", 53),),
}


def snapshot_of(ports: Iterable[ServicePort],
                endpoints: dict[ServicePort, tuple[Endpoint, ...]]) -> Snapshot:
    ports = list(ports)
    return Snapshot(
        generation=1,
        services=MappingProxyType({port.name: port for port in ports}),
        endpoints=MappingProxyType({port.name: endpoints[port] for port in ports
                                    if port in endpoints}),
        node=None,
        changed=frozenset(),
        node_changed=False,
    )


SNAPSHOT = snapshot_of([DNS, GAME, ZERO, WEB, DUAL], ENDPOINTS)


def flow(dst: str, dport: int, reply_src: str, reply_sport: int, *, src: str = CLIENT,
         sport: int = 40000, protocol: str = "udp") -> ConntrackEntry:
    family = IPFamily.IPV6 if ":" in dst else IPFamily.IPV4
    return ConntrackEntry(family, protocol, src, dst, sport, dport,
                          reply_src, src, reply_sport, sport)


# (case id, flow, whether kube-proxy 1.33 deletes it)
CASES: list[tuple[str, ConntrackEntry, bool]] = [
    ("clusterip-to-serving-endpoint",
     flow("10.96.0.10", 53, "10.244.1.5", 5353), False),
    ("clusterip-to-removed-endpoint",
     flow("10.96.0.10", 53, "10.244.3.3", 5353), True),
    ("target-port-changed",
     flow("10.96.0.10", 53, "10.244.1.5", 53), True),
    ("endpoint-not-serving",
     flow("10.96.0.10", 53, "10.244.1.9", 5353), True),
    ("terminating-but-serving-endpoint-kept",
     flow("10.96.0.10", 53, "10.244.2.8", 5353), False),
    ("other-port-of-service-ip",
     flow("10.96.0.10", 54, "10.244.3.3", 5353), False),
    ("nodeport-to-removed-endpoint",
     flow(NODE_IP, 30777, "10.244.1.99", 7000, src="172.18.0.100"), True),
    ("nodeport-to-serving-endpoint",
     flow(NODE_IP, 30777, "10.244.1.20", 7000, src="172.18.0.100"), False),
    ("external-ip-to-removed-endpoint",
     flow("192.0.2.10", 7777, "10.244.1.99", 7000), True),
    ("load-balancer-ip-to-removed-endpoint",
     flow("198.51.100.7", 7777, "10.244.1.99", 7000), True),
    ("load-balancer-ip-to-serving-endpoint",
     flow("198.51.100.7", 7777, "10.244.1.20", 7000), False),
    ("service-scaled-to-zero-untouched",
     flow("10.96.9.9", 9999, "10.244.1.40", 9999), False),
    ("deleted-service-untouched",
     flow("10.96.8.8", 53, "10.244.1.50", 53), False),
    ("non-service-flow",
     flow("8.8.8.8", 53, "8.8.8.8", 53), False),
    ("tcp-flow-to-udp-frontend",
     flow("10.96.0.10", 53, "10.244.3.3", 5353, protocol="tcp"), False),
    ("tcp-service",
     flow("10.96.0.80", 80, "10.244.3.3", 8080, protocol="tcp"), False),
    ("ipv6-to-removed-endpoint",
     flow("fd00:96::6", 53, "fd00:10:244:1::99", 53, src=CLIENT6), True),
    ("ipv6-to-serving-endpoint",
     flow("fd00:96::6", 53, "fd00:10:244:1::5", 53, src=CLIENT6), False),
    # The IPv4 side of the dual-stack service has no endpoints of its family: kube-proxy's
    # IPv4 proxier skips it, whatever the IPv6 side has.
    ("family-without-endpoints-untouched",
     flow("10.96.6.6", 53, "10.244.1.77", 53), False),
    # kube-proxy matches NodePorts on the port alone, whatever the destination.
    ("nodeport-number-to-any-destination",
     flow("203.0.113.1", 30777, "203.0.113.1", 30777), True),
]


@pytest.mark.parametrize(("entry", "stale"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_kube_proxy_rules(entry: ConntrackEntry, stale: bool) -> None:
    assert stale_udp_flows(SNAPSHOT, [entry]) == ([entry] if stale else [])


def test_a_whole_table_keeps_its_order() -> None:
    entries = [case[1] for case in CASES]
    assert stale_udp_flows(SNAPSHOT, entries) == [case[1] for case in CASES if case[2]]


def test_frontend_port_that_is_also_a_nodeport() -> None:
    # A ClusterIP port equal to another service's NodePort: both kube-proxy checks apply,
    # and either one makes the flow stale.
    odd = udp_port("odd", ("10.96.7.7",), 30777)
    snapshot = snapshot_of([odd, GAME], {odd: (Endpoint("10.244.1.60", 30777),), **ENDPOINTS})
    served_by_odd = flow("10.96.7.7", 30777, "10.244.1.60", 30777)
    served_by_neither = flow("10.96.7.7", 30777, "10.244.1.61", 30777, sport=40001)
    assert stale_udp_flows(snapshot, [served_by_odd, served_by_neither]) == [
        served_by_odd, served_by_neither]


def test_shared_frontend_keeps_flows_any_owner_serves() -> None:
    first = udp_port("first", ("10.96.1.1",), 53, external_ips=("192.0.2.50",))
    second = udp_port("second", ("10.96.1.2",), 53, external_ips=("192.0.2.50",))
    snapshot = snapshot_of([first, second], {first: (Endpoint("10.244.1.71", 53),),
                                             second: (Endpoint("10.244.1.72", 53),)})
    kept = [flow("192.0.2.50", 53, "10.244.1.71", 53), flow("192.0.2.50", 53, "10.244.1.72", 53)]
    dead = flow("192.0.2.50", 53, "10.244.1.73", 53)
    assert stale_udp_flows(snapshot, [*kept, dead]) == [dead]


def test_node_ips_restrict_nodeport_matching_to_those_destinations() -> None:
    to_node = flow(NODE_IP, 30777, "10.244.1.99", 7000, src="172.18.0.100")
    elsewhere = flow("203.0.113.1", 30777, "203.0.113.1", 30777)
    assert stale_udp_flows(SNAPSHOT, [to_node, elsewhere], node_ips=[NODE_IP]) == [to_node]


def test_opt_in_clears_services_scaled_to_zero_and_deleted() -> None:
    to_zero = flow("10.96.9.9", 9999, "10.244.1.40", 9999)
    to_deleted = flow("10.96.8.8", 53, "10.244.1.50", 53)
    healthy = flow("10.96.0.10", 53, "10.244.1.5", 5353)
    assert stale_udp_flows(SNAPSHOT, [to_zero, to_deleted, healthy],
                           clear_services_without_endpoints=True,
                           deleted_services=[GONE]) == [to_zero, to_deleted]


def test_deleted_services_are_ignored_without_the_opt_in() -> None:
    to_deleted = flow("10.96.8.8", 53, "10.244.1.50", 53)
    assert stale_udp_flows(SNAPSHOT, [to_deleted], deleted_services=[GONE]) == []


def test_recreated_frontend_keeps_its_new_endpoints() -> None:
    # A deleted service whose ClusterIP went to a new service: the new one's endpoints count.
    reused = udp_port("reused", ("10.96.8.8",), 53)
    snapshot = snapshot_of([reused], {reused: (Endpoint("10.244.1.51", 53),)})
    new_flow = flow("10.96.8.8", 53, "10.244.1.51", 53)
    old_flow = flow("10.96.8.8", 53, "10.244.1.50", 53, sport=40001)
    assert stale_udp_flows(snapshot, [new_flow, old_flow], clear_services_without_endpoints=True,
                           deleted_services=[GONE]) == [old_flow]


# --- parsing ---------------------------------------------------------------------------------

EXTENDED_V4 = ("ipv4     2 udp      17 29 src=10.1.0.1 dst=10.96.0.10 sport=40001 dport=53 "
               "[UNREPLIED] src=10.1.0.2 dst=10.1.0.1 sport=5353 dport=40001 mark=0 use=1")
EXTENDED_V6 = ("ipv6     10 udp      17 29 src=fd00::1 dst=fd00::10 sport=36900 dport=53 "
               "[UNREPLIED] src=fd00:0:0:0::2 dst=fd00::1 sport=5353 dport=36900 mark=0 use=1")
ASSURED_WITH_EXTRAS = ("ipv4     2 udp      17 117 src=10.1.0.1 dst=10.96.0.10 sport=40001 "
                       "dport=53 packets=2 bytes=58 src=10.1.0.2 dst=10.1.0.1 sport=5353 "
                       "dport=40001 packets=2 bytes=120 [ASSURED] mark=0 zone=3 use=2 id=7")
TCP_PLAIN = ("tcp      6 431999 ESTABLISHED src=10.1.0.1 dst=10.1.0.2 sport=51000 dport=80 "
             "src=10.1.0.2 dst=10.1.0.1 sport=80 dport=51000 [ASSURED] mark=0 use=1")
ICMP = ("ipv4     2 icmp     1 29 src=10.1.0.1 dst=10.1.0.2 type=8 code=0 id=7 "
        "src=10.1.0.2 dst=10.1.0.1 type=0 code=0 id=7 mark=0 use=1")


def test_parse_extended_ipv4() -> None:
    assert parse_entry(EXTENDED_V4) == ConntrackEntry(
        IPFamily.IPV4, "udp", "10.1.0.1", "10.96.0.10", 40001, 53,
        "10.1.0.2", "10.1.0.1", 5353, 40001)


def test_parse_extended_ipv6_normalises_addresses() -> None:
    entry = parse_entry(EXTENDED_V6)
    assert entry is not None
    assert (entry.family, entry.orig_dst, entry.reply_src) == (
        IPFamily.IPV6, "fd00::10", "fd00::2")


def test_parse_reads_the_zone_and_skips_accounting_and_flags() -> None:
    entry = parse_entry(ASSURED_WITH_EXTRAS)
    assert entry is not None
    assert (entry.orig_dport, entry.reply_src, entry.reply_sport, entry.reply_dport) == (
        53, "10.1.0.2", 5353, 40001)
    assert entry.zone == 3
    plain = parse_entry(EXTENDED_V4)
    assert plain is not None and plain.zone == 0


def test_parse_plain_output_infers_the_family() -> None:
    entry = parse_entry(TCP_PLAIN)
    assert entry is not None
    assert (entry.family, entry.protocol, entry.orig_dport, entry.reply_sport) == (
        IPFamily.IPV4, "tcp", 80, 80)


@pytest.mark.parametrize("line", [
    ICMP, "", "ipv4 2", "garbage", "conntrack v1.4.7 (conntrack-tools): 3 flow entries",
    EXTENDED_V4.replace("dst=10.96.0.10", "dst=10.96.0.300"),
    EXTENDED_V4.replace("sport=5353", "sport=99999"),
    EXTENDED_V4.replace("sport=5353 ", ""),
])
def test_parse_rejects_what_is_not_a_ported_flow(line: str) -> None:
    assert parse_entry(line) is None


def test_parse_listing_counts_unparsed_lines() -> None:
    entries, unparsed = parse_listing("\n".join([EXTENDED_V4, "", ICMP, EXTENDED_V6, ""]))
    assert [entry.family for entry in entries] == [IPFamily.IPV4, IPFamily.IPV6]
    assert unparsed == 1
