"""The planned rules, rule for rule, for small cases (kube-proxy 1.33's proxier_test.go cases
translated to KPROXY- names and to iptables-save form where they exist)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from kproxy.config.record import DetectLocalMode, ProxyConfig
from kproxy.iptables.names import hashed_chain_name
from kproxy.iptables.plan import PlanContext, plan_context, plan_ruleset
from kproxy.iptables.ruleset import Ruleset, Table
from kproxy.model.types import (
    Endpoint,
    IPFamily,
    NodeInfo,
    Protocol,
    ServicePort,
    ServicePortName,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from kproxy.state import Snapshot

NODE = "test-node"
NODE_INFO = NodeInfo(NODE, addresses=(("InternalIP", "192.168.0.2"), ("InternalIP", "fd00::2")))
CONFIG = ProxyConfig(
    hostname=NODE, cluster_cidrs=("10.0.0.0/8",), detect_local_mode=DetectLocalMode.CLUSTER_CIDR
)


def port(
    namespace: str, name: str, *cluster_ips: str, port_name: str = "p80", number: int = 80,
    protocol: Protocol = Protocol.TCP, **fields: Any,
) -> ServicePort:
    service_type = ServiceType.CLUSTER_IP
    if fields.get("node_port") is not None:
        service_type = ServiceType.NODE_PORT
    if fields.get("load_balancer_ips"):
        service_type = ServiceType.LOAD_BALANCER
    return ServicePort(
        name=ServicePortName(namespace, name, port_name, protocol),
        type=fields.pop("type", service_type),
        cluster_ips=cluster_ips,
        port=number,
        protocol=protocol,
        target_port=number,
        **fields,
    )


def snapshot(
    ports: Iterable[ServicePort],
    endpoints: Mapping[str, tuple[Endpoint, ...]] | None = None,
    node: NodeInfo | None = NODE_INFO,
) -> Snapshot:
    """Endpoints are given per service name (``"svc1"``)."""
    services = {sp.name: sp for sp in ports}
    by_name = endpoints or {}
    return Snapshot(
        generation=1,
        services=MappingProxyType(services),
        endpoints=MappingProxyType(
            {name: by_name[name.name] for name in services if name.name in by_name}
        ),
        node=node,
        changed=frozenset(),
        node_changed=False,
    )


def context(
    family: IPFamily = IPFamily.IPV4, config: ProxyConfig = CONFIG, **overrides: Any
) -> PlanContext:
    base = plan_context(config, NODE_INFO, family, random_fully=False)
    return replace(base, **overrides) if overrides else base


def dump(ruleset: Ruleset, table: Table) -> dict[str, tuple[str, ...]]:
    return {name: chain.rules for name, chain in ruleset.tables[table].chains.items()}


def parse_dump(text: str) -> dict[Table, dict[str, tuple[str, ...]]]:
    """``*table`` headers, ``:CHAIN`` declarations and ``-A CHAIN rule`` lines."""
    tables: dict[Table, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in (raw.strip() for raw in text.splitlines()):
        if not line:
            continue
        if line.startswith("*"):
            current = tables.setdefault(Table(line[1:]), {})
        elif line.startswith(":"):
            current.setdefault(line[1:].split()[0], [])
        else:
            _, chain, rule = line.split(" ", 2)
            current.setdefault(chain, []).append(rule)
    return {t: {c: tuple(r) for c, r in chains.items()} for t, chains in tables.items()}


def assert_ruleset(ruleset: Ruleset, expected_text: str) -> None:
    expected = parse_dump(expected_text)
    for table, chains in expected.items():
        actual = dump(ruleset, table)
        assert sorted(actual) == sorted(chains), f"chains of {table.value}"
        for name, rules in chains.items():
            assert actual[name] == rules, f"{table.value} {name}"


def nat(ruleset: Ruleset, chain: str) -> tuple[str, ...]:
    return ruleset.tables[Table.NAT].chains[chain].rules


def filter_rules(ruleset: Ruleset, chain: str) -> tuple[str, ...]:
    return ruleset.tables[Table.FILTER].chains[chain].rules


# kube-proxy's chain hashes for ns1/svc1:p80/tcp and its endpoint 10.180.0.1:80.
SVC1 = "KPROXY-SVC-XPGD46QRK7WJZT7O"
SEP1 = "KPROXY-SEP-SXIVWICOYRO3J4NJ"
SVC1_COMMENT = '-m comment --comment "ns1/svc1:p80 cluster IP"'
NODEPORTS_JUMP = (
    '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
    'this chain" -m addrtype --dst-type LOCAL -j KPROXY-NODEPORTS'
)

STATIC_NAT = """
    -A KPROXY-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
    -A KPROXY-POSTROUTING -j MARK --set-xmark 0x4000/0x0
    -A KPROXY-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
    -A KPROXY-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
    :KPROXY-PROXY-CANARY
"""  # noqa: E501
STATIC_FILTER = """
    -A KPROXY-FORWARD -m conntrack --ctstate INVALID -j DROP
    -A KPROXY-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
    -A KPROXY-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
    -A KPROXY-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
    :KPROXY-PROXY-CANARY
"""  # noqa: E501


def test_overall_rules_match_kube_proxy() -> None:
    """kube-proxy's TestOverallIPTablesRules: six services covering every chain type."""
    ports = [
        port("ns1", "svc1", "172.30.0.41"),
        port(
            "ns2", "svc2", "172.30.0.42", node_port=3001, load_balancer_ips=("1.2.3.4",),
            external_ips=("192.168.99.22",), external_traffic_policy=TrafficPolicy.LOCAL,
            health_check_node_port=30000,
        ),
        port("ns3", "svc3", "172.30.0.43", node_port=3003),
        port("ns4", "svc4", "172.30.0.44", external_ips=("192.168.99.33",)),
        port(
            "ns5", "svc5", "172.30.0.45", node_port=3002, load_balancer_ips=("5.6.7.8",),
            load_balancer_source_ranges=("203.0.113.0/25",),
            session_affinity=SessionAffinity.CLIENT_IP,
        ),
        port("ns6", "svc6", "172.30.0.46"),
    ]
    endpoints = {
        "svc1": (Endpoint("10.180.0.1", 80),),
        # Without a node name this endpoint is not local: svc2 has no local endpoints.
        "svc2": (Endpoint("10.180.0.2", 80),),
        "svc3": (Endpoint("10.180.0.3", 80),),
        "svc4": (Endpoint("10.180.0.4", 80), Endpoint("10.180.0.5", 80, node_name=NODE)),
        "svc5": (Endpoint("10.180.0.3", 80),),
    }
    ruleset = plan_ruleset(snapshot(ports, endpoints), context())
    assert_ruleset(ruleset, """
        *filter
        -A KPROXY-NODEPORTS -p tcp -m comment --comment "ns2/svc2:p80 health check node port" -m tcp --dport 30000 -j ACCEPT
        -A KPROXY-SERVICES -d 172.30.0.46/32 -p tcp -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
        -A KPROXY-EXTERNAL-SERVICES -d 1.2.3.4/32 -p tcp -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp --dport 80 -j DROP
        -A KPROXY-EXTERNAL-SERVICES -d 192.168.99.22/32 -p tcp -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp --dport 80 -j DROP
        -A KPROXY-EXTERNAL-SERVICES -p tcp -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 3001 -j DROP
        -A KPROXY-FORWARD -m conntrack --ctstate INVALID -j DROP
        -A KPROXY-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
        -A KPROXY-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        -A KPROXY-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
        -A KPROXY-PROXY-FIREWALL -d 5.6.7.8/32 -p tcp -m comment --comment "ns5/svc5:p80 traffic not accepted by KPROXY-FW-NUKIZ6OKUXPJNT4C" -m tcp --dport 80 -j DROP
        :KPROXY-PROXY-CANARY
        *nat
        -A KPROXY-NODEPORTS -p tcp -m comment --comment "ns2/svc2:p80" -m tcp --dport 3001 -j KPROXY-EXT-GNZBNJ2PO5MGZ6GT
        -A KPROXY-NODEPORTS -p tcp -m comment --comment "ns5/svc5:p80" -m tcp --dport 3002 -j KPROXY-EXT-NUKIZ6OKUXPJNT4C
        -A KPROXY-NODEPORTS -p tcp -m comment --comment "ns3/svc3:p80" -m tcp --dport 3003 -j KPROXY-EXT-X27LE4BHSL4DOUIK
        -A KPROXY-SERVICES -d 1.2.3.4/32 -p tcp -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp --dport 80 -j KPROXY-EXT-GNZBNJ2PO5MGZ6GT
        -A KPROXY-SERVICES -d 5.6.7.8/32 -p tcp -m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp --dport 80 -j KPROXY-FW-NUKIZ6OKUXPJNT4C
        -A KPROXY-SERVICES -d 172.30.0.41/32 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KPROXY-SVC-XPGD46QRK7WJZT7O
        -A KPROXY-SERVICES -d 172.30.0.42/32 -p tcp -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp --dport 80 -j KPROXY-SVC-GNZBNJ2PO5MGZ6GT
        -A KPROXY-SERVICES -d 172.30.0.43/32 -p tcp -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp --dport 80 -j KPROXY-SVC-X27LE4BHSL4DOUIK
        -A KPROXY-SERVICES -d 172.30.0.44/32 -p tcp -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp --dport 80 -j KPROXY-SVC-4SW47YFZTEDKD3PK
        -A KPROXY-SERVICES -d 172.30.0.45/32 -p tcp -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp --dport 80 -j KPROXY-SVC-NUKIZ6OKUXPJNT4C
        -A KPROXY-SERVICES -d 192.168.99.22/32 -p tcp -m comment --comment "ns2/svc2:p80 external IP" -m tcp --dport 80 -j KPROXY-EXT-GNZBNJ2PO5MGZ6GT
        -A KPROXY-SERVICES -d 192.168.99.33/32 -p tcp -m comment --comment "ns4/svc4:p80 external IP" -m tcp --dport 80 -j KPROXY-EXT-4SW47YFZTEDKD3PK
        -A KPROXY-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KPROXY-NODEPORTS
        -A KPROXY-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KPROXY-MARK-MASQ
        -A KPROXY-EXT-4SW47YFZTEDKD3PK -j KPROXY-SVC-4SW47YFZTEDKD3PK
        -A KPROXY-EXT-GNZBNJ2PO5MGZ6GT -s 10.0.0.0/8 -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -j KPROXY-SVC-GNZBNJ2PO5MGZ6GT
        -A KPROXY-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KPROXY-MARK-MASQ
        -A KPROXY-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KPROXY-SVC-GNZBNJ2PO5MGZ6GT
        -A KPROXY-EXT-NUKIZ6OKUXPJNT4C -m comment --comment "masquerade traffic for ns5/svc5:p80 external destinations" -j KPROXY-MARK-MASQ
        -A KPROXY-EXT-NUKIZ6OKUXPJNT4C -j KPROXY-SVC-NUKIZ6OKUXPJNT4C
        -A KPROXY-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KPROXY-MARK-MASQ
        -A KPROXY-EXT-X27LE4BHSL4DOUIK -j KPROXY-SVC-X27LE4BHSL4DOUIK
        -A KPROXY-FW-NUKIZ6OKUXPJNT4C -s 203.0.113.0/25 -m comment --comment "ns5/svc5:p80 loadbalancer IP" -j KPROXY-EXT-NUKIZ6OKUXPJNT4C
        -A KPROXY-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by KPROXY-PROXY-FIREWALL"
        -A KPROXY-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
        -A KPROXY-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
        -A KPROXY-POSTROUTING -j MARK --set-xmark 0x4000/0x0
        -A KPROXY-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
        :KPROXY-PROXY-CANARY
        -A KPROXY-SEP-C6EBXVWJJZMIWKLZ -s 10.180.0.5/32 -m comment --comment "ns4/svc4:p80" -j KPROXY-MARK-MASQ
        -A KPROXY-SEP-C6EBXVWJJZMIWKLZ -p tcp -m comment --comment "ns4/svc4:p80" -m tcp -j DNAT --to-destination 10.180.0.5:80
        -A KPROXY-SEP-I77PXRDZVX7PMWMN -s 10.180.0.3/32 -m comment --comment "ns5/svc5:p80" -j KPROXY-MARK-MASQ
        -A KPROXY-SEP-I77PXRDZVX7PMWMN -p tcp -m comment --comment "ns5/svc5:p80" -m recent --set --name KPROXY-SEP-I77PXRDZVX7PMWMN --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.180.0.3:80
        -A KPROXY-SEP-OYPFS5VJICHGATKP -s 10.180.0.3/32 -m comment --comment "ns3/svc3:p80" -j KPROXY-MARK-MASQ
        -A KPROXY-SEP-OYPFS5VJICHGATKP -p tcp -m comment --comment "ns3/svc3:p80" -m tcp -j DNAT --to-destination 10.180.0.3:80
        -A KPROXY-SEP-RS4RBKLTHTF2IUXJ -s 10.180.0.2/32 -m comment --comment "ns2/svc2:p80" -j KPROXY-MARK-MASQ
        -A KPROXY-SEP-RS4RBKLTHTF2IUXJ -p tcp -m comment --comment "ns2/svc2:p80" -m tcp -j DNAT --to-destination 10.180.0.2:80
        -A KPROXY-SEP-SXIVWICOYRO3J4NJ -s 10.180.0.1/32 -m comment --comment "ns1/svc1:p80" -j KPROXY-MARK-MASQ
        -A KPROXY-SEP-SXIVWICOYRO3J4NJ -p tcp -m comment --comment "ns1/svc1:p80" -m tcp -j DNAT --to-destination 10.180.0.1:80
        -A KPROXY-SEP-UKSFD7AGPMPPLUHC -s 10.180.0.4/32 -m comment --comment "ns4/svc4:p80" -j KPROXY-MARK-MASQ
        -A KPROXY-SEP-UKSFD7AGPMPPLUHC -p tcp -m comment --comment "ns4/svc4:p80" -m tcp -j DNAT --to-destination 10.180.0.4:80
        -A KPROXY-SVC-4SW47YFZTEDKD3PK ! -s 10.0.0.0/8 -d 172.30.0.44/32 -p tcp -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp --dport 80 -j KPROXY-MARK-MASQ
        -A KPROXY-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.50000000000 -j KPROXY-SEP-UKSFD7AGPMPPLUHC
        -A KPROXY-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KPROXY-SEP-C6EBXVWJJZMIWKLZ
        -A KPROXY-SVC-GNZBNJ2PO5MGZ6GT ! -s 10.0.0.0/8 -d 172.30.0.42/32 -p tcp -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp --dport 80 -j KPROXY-MARK-MASQ
        -A KPROXY-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KPROXY-SEP-RS4RBKLTHTF2IUXJ
        -A KPROXY-SVC-NUKIZ6OKUXPJNT4C ! -s 10.0.0.0/8 -d 172.30.0.45/32 -p tcp -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp --dport 80 -j KPROXY-MARK-MASQ
        -A KPROXY-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -m recent --rcheck --seconds 10800 --reap --name KPROXY-SEP-I77PXRDZVX7PMWMN --mask 255.255.255.255 --rsource -j KPROXY-SEP-I77PXRDZVX7PMWMN
        -A KPROXY-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KPROXY-SEP-I77PXRDZVX7PMWMN
        -A KPROXY-SVC-X27LE4BHSL4DOUIK ! -s 10.0.0.0/8 -d 172.30.0.43/32 -p tcp -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp --dport 80 -j KPROXY-MARK-MASQ
        -A KPROXY-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KPROXY-SEP-OYPFS5VJICHGATKP
        -A KPROXY-SVC-XPGD46QRK7WJZT7O ! -s 10.0.0.0/8 -d 172.30.0.41/32 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KPROXY-MARK-MASQ
        -A KPROXY-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KPROXY-SEP-SXIVWICOYRO3J4NJ
        *mangle
        :KPROXY-PROXY-CANARY
    """)  # noqa: E501


# --- helpers for the smaller cases -----------------------------------------------------------


def svc_chain(kind: str, text: str = "ns1/svc1:p80", protocol: str = "tcp") -> str:
    return hashed_chain_name(f"KPROXY-{kind}-", text, protocol)


def sep_chain(address: str, text: str = "ns1/svc1:p80", protocol: str = "tcp") -> str:
    return hashed_chain_name("KPROXY-SEP-", text, protocol, address)


def service_chains(ruleset: Ruleset) -> set[str]:
    return {
        name for name in ruleset.tables[Table.NAT].chains
        if name.split("-")[1] in ("SVC", "SVL", "EXT", "FW", "SEP")
    }


def test_chain_names_are_kube_proxys_hashes() -> None:
    assert svc_chain("SVC") == SVC1
    assert sep_chain("10.180.0.1:80") == SEP1


@pytest.mark.parametrize("protocol", [Protocol.TCP, Protocol.UDP, Protocol.SCTP])
def test_cluster_ip_rules_per_protocol(protocol: Protocol) -> None:
    name = protocol.value.lower()
    ports = [port("ns1", "svc1", "172.30.0.41", protocol=protocol)]
    ruleset = plan_ruleset(snapshot(ports, {"svc1": (Endpoint("10.180.0.1", 8080),)}), context())
    svc, sep = svc_chain("SVC", protocol=name), sep_chain("10.180.0.1:8080", protocol=name)
    services = nat(ruleset, "KPROXY-SERVICES")
    assert services == (
        f'-d 172.30.0.41/32 -p {name} {SVC1_COMMENT} -m {name} --dport 80 -j {svc}',
        NODEPORTS_JUMP,
    )
    assert nat(ruleset, svc) == (
        f"! -s 10.0.0.0/8 -d 172.30.0.41/32 -p {name} {SVC1_COMMENT} -m {name} --dport 80 "
        "-j KPROXY-MARK-MASQ",
        f'-m comment --comment "ns1/svc1:p80 -> 10.180.0.1:8080" -j {sep}',
    )
    assert nat(ruleset, sep) == (
        '-s 10.180.0.1/32 -m comment --comment "ns1/svc1:p80" -j KPROXY-MARK-MASQ',
        f'-p {name} -m comment --comment "ns1/svc1:p80" -m {name} -j DNAT '
        "--to-destination 10.180.0.1:8080",
    )


def test_random_choice_gives_each_endpoint_an_equal_share() -> None:
    endpoints = tuple(Endpoint(f"10.180.0.{i}", 80) for i in (1, 2, 3, 4))
    ruleset = plan_ruleset(
        snapshot([port("ns1", "svc1", "172.30.0.41")], {"svc1": endpoints}), context()
    )
    rules = nat(ruleset, SVC1)[1:]
    probabilities = [rule.split("--probability ")[1].split()[0] for rule in rules[:-1]]
    # 1/4, 1/3, 1/2 as kube-proxy writes them, printed as the kernel stores them.
    assert probabilities == ["0.25000000000", "0.33333333349", "0.50000000000"]
    assert rules[-1] == (
        f'-m comment --comment "ns1/svc1:p80 -> 10.180.0.4:80" -j {sep_chain("10.180.0.4:80")}'
    )
    assert [rule.rsplit("-j ", 1)[1] for rule in rules] == [
        sep_chain(f"{e.ip}:80") for e in endpoints
    ]


def test_session_affinity_checks_recent_lists_before_choosing() -> None:
    endpoints = (Endpoint("10.180.0.1", 80), Endpoint("10.180.0.2", 80))
    ports = [
        port("ns1", "svc1", "172.30.0.41", session_affinity=SessionAffinity.CLIENT_IP,
             affinity_timeout_seconds=300)
    ]
    ruleset = plan_ruleset(snapshot(ports, {"svc1": endpoints}), context())
    sep_a, sep_b = sep_chain("10.180.0.1:80"), sep_chain("10.180.0.2:80")
    mask = "--mask 255.255.255.255 --rsource"
    assert nat(ruleset, SVC1)[1:] == (
        f'-m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m recent --rcheck --seconds 300 '
        f"--reap --name {sep_a} {mask} -j {sep_a}",
        f'-m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -m recent --rcheck --seconds 300 '
        f"--reap --name {sep_b} {mask} -j {sep_b}",
        f'-m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random '
        f"--probability 0.50000000000 -j {sep_a}",
        f'-m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -j {sep_b}',
    )
    assert nat(ruleset, sep_b)[1] == (
        f'-p tcp -m comment --comment "ns1/svc1:p80" -m recent --set --name {sep_b} {mask} '
        "-m tcp -j DNAT --to-destination 10.180.0.2:80"
    )


def test_ipv6_rules() -> None:
    ports = [
        port("ns1", "svc1", "172.30.0.41", "fd00:30::41", node_port=3001),
        port("ns2", "svc2", "fd00:30::42"),
    ]
    endpoints = {"svc1": (Endpoint("10.180.0.1", 80), Endpoint("fd00:180::1", 80))}
    ruleset = plan_ruleset(snapshot(ports, endpoints), context(IPFamily.IPV6))
    sep = sep_chain("[fd00:180::1]:80")
    assert nat(ruleset, "KPROXY-SERVICES") == (
        f"-d fd00:30::41/128 -p tcp {SVC1_COMMENT} -m tcp --dport 80 -j {SVC1}",
        "! -d ::1/128 " + NODEPORTS_JUMP,
    )
    # No cluster-CIDR of this family was configured: no local detection, no masquerade rule.
    assert nat(ruleset, SVC1) == (
        f'-m comment --comment "ns1/svc1:p80 -> [fd00:180::1]:80" -j {sep}',
    )
    assert nat(ruleset, sep) == (
        '-s fd00:180::1/128 -m comment --comment "ns1/svc1:p80" -j KPROXY-MARK-MASQ',
        '-p tcp -m comment --comment "ns1/svc1:p80" -m tcp -j DNAT '
        "--to-destination [fd00:180::1]:80",
    )
    assert filter_rules(ruleset, "KPROXY-SERVICES") == (
        '-d fd00:30::42/128 -p tcp -m comment --comment "ns2/svc2:p80 has no endpoints" '
        "-m tcp --dport 80 -j REJECT --reject-with icmp6-port-unreachable",
    )
    assert filter_rules(ruleset, "KPROXY-FIREWALL") == ()


def test_each_family_sees_only_its_own_addresses() -> None:
    dual = port(
        "ns1", "svc1", "172.30.0.41", "fd00:30::41",
        external_ips=("192.168.99.1", "fd00:99::1"),
        load_balancer_ips=("1.2.3.4", "fd00:1::4"),
        load_balancer_source_ranges=("203.0.113.0/25", "fd00:203::/64"),
    )
    ipv4_only = port("ns2", "svc2", "172.30.0.42")
    endpoints = {
        "svc1": (Endpoint("10.180.0.1", 80), Endpoint("fd00:180::1", 80)),
        "svc2": (Endpoint("10.180.0.2", 80),),
    }
    state = snapshot([dual, ipv4_only], endpoints)
    ipv4 = plan_ruleset(state, context(IPFamily.IPV4))
    ipv6 = plan_ruleset(state, context(IPFamily.IPV6))
    ipv4_text, ipv6_text = all_rules(ipv4), all_rules(ipv6)
    assert "fd00" not in ipv4_text
    assert re.search(r"\d+\.\d+\.\d+\.\d+", ipv6_text) is None
    for text, addresses in (
        (ipv4_text, ("172.30.0.41/32", "192.168.99.1/32", "1.2.3.4/32", "203.0.113.0/25",
                     "10.180.0.1:80", "172.30.0.42/32")),
        (ipv6_text, ("fd00:30::41/128", "fd00:99::1/128", "fd00:1::4/128", "fd00:203::/64",
                     "[fd00:180::1]:80")),
    ):
        for address in addresses:
            assert address in text
    assert "ns2/svc2" not in ipv6_text


def all_rules(ruleset: Ruleset) -> str:
    return "\n".join(
        rule for table in ruleset.tables.values() for chain in table.chains.values()
        for rule in chain.rules
    )


def test_masquerade_all_marks_every_cluster_ip_packet() -> None:
    ports = [port("ns1", "svc1", "172.30.0.41")]
    state = snapshot(ports, {"svc1": (Endpoint("10.180.0.1", 80),)})
    ruleset = plan_ruleset(state, context(config=replace(CONFIG, masquerade_all=True)))
    assert nat(ruleset, SVC1)[0] == (
        f"-d 172.30.0.41/32 -p tcp {SVC1_COMMENT} -m tcp --dport 80 -j KPROXY-MARK-MASQ"
    )


@pytest.mark.parametrize(
    ("config", "masquerade_header", "pod_match"),
    [
        (CONFIG, "! -s 10.0.0.0/8 -d 172.30.0.41/32", "-s 10.0.0.0/8"),
        (
            replace(CONFIG, detect_local_mode=DetectLocalMode.NODE_CIDR),
            "! -s 10.244.1.0/24 -d 172.30.0.41/32",
            "-s 10.244.1.0/24",
        ),
        (
            replace(CONFIG, detect_local_mode=DetectLocalMode.BRIDGE_INTERFACE,
                    pod_bridge_interface="cbr0"),
            "-d 172.30.0.41/32 ! -i cbr0",
            "-i cbr0",
        ),
        (
            replace(CONFIG, detect_local_mode=DetectLocalMode.INTERFACE_NAME_PREFIX,
                    pod_interface_name_prefix="veth"),
            "-d 172.30.0.41/32 ! -i veth+",
            "-i veth+",
        ),
        (replace(CONFIG, detect_local_mode=None), None, None),
    ],
)
def test_local_traffic_detection(
    config: ProxyConfig, masquerade_header: str | None, pod_match: str | None
) -> None:
    node = replace(NODE_INFO, pod_cidrs=("10.244.1.0/24", "fd00:244:1::/64"))
    ports = [
        port("ns1", "svc1", "172.30.0.41", node_port=3001,
             external_traffic_policy=TrafficPolicy.LOCAL)
    ]
    endpoints = {"svc1": (Endpoint("10.180.0.1", 80, node_name=NODE),)}
    plan = plan_context(config, node, IPFamily.IPV4)
    ruleset = plan_ruleset(snapshot(ports, endpoints, node), plan)
    svc, ext = nat(ruleset, SVC1), nat(ruleset, svc_chain("EXT"))
    if masquerade_header is None:
        assert not any("KPROXY-MARK-MASQ" in rule for rule in svc)
        assert not any("pod traffic" in rule for rule in ext)
    else:
        assert svc[0] == (
            f"{masquerade_header} -p tcp {SVC1_COMMENT} -m tcp --dport 80 -j KPROXY-MARK-MASQ"
        )
        assert ext[0] == (
            f'{pod_match} -m comment --comment "pod traffic for ns1/svc1:p80 external '
            f'destinations" -j {SVC1}'
        )


# --- services without (usable, local) endpoints ------------------------------------------------


def no_endpoints_rules(reason: str, target: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = f'-m comment --comment "ns1/svc1:p80 {reason}"'
    return (
        (f"-d 172.30.0.41/32 -p tcp {text} -m tcp --dport 80 -j {target}",),
        (
            f"-d 1.2.3.4/32 -p tcp {text} -m tcp --dport 80 -j {target}",
            f"-d 192.168.99.11/32 -p tcp {text} -m tcp --dport 80 -j {target}",
            f"-p tcp {text} -m addrtype --dst-type LOCAL -m tcp --dport 3001 -j {target}",
        ),
    )


LB_PORT = port(
    "ns1", "svc1", "172.30.0.41", node_port=3001, external_ips=("192.168.99.11",),
    load_balancer_ips=("1.2.3.4",),
)
REJECT = "REJECT --reject-with icmp-port-unreachable"


@pytest.mark.parametrize(
    "endpoints",
    [
        (),
        (Endpoint("10.180.0.1", 80, ready=False, serving=False),),
        # Serving but not terminating: not ready, and not a terminating fallback either.
        (Endpoint("10.180.0.1", 80, ready=False, serving=True),),
        (Endpoint("10.180.0.1", 80, ready=False, serving=False, terminating=True),),
    ],
)
def test_no_usable_endpoints_rejects_every_address(endpoints: tuple[Endpoint, ...]) -> None:
    """kube-proxy's TestNoEndpointsReject, plus endpoints that cannot be used."""
    ruleset = plan_ruleset(snapshot([LB_PORT], {"svc1": endpoints}), context())
    internal, external = no_endpoints_rules("has no endpoints", REJECT)
    assert filter_rules(ruleset, "KPROXY-SERVICES") == internal
    assert filter_rules(ruleset, "KPROXY-EXTERNAL-SERVICES") == external
    assert nat(ruleset, "KPROXY-SERVICES") == (NODEPORTS_JUMP,)
    assert nat(ruleset, "KPROXY-NODEPORTS") == ()
    assert service_chains(ruleset) == set()


def test_terminating_endpoints_are_used_when_none_is_ready() -> None:
    endpoints = (
        Endpoint("10.180.0.1", 80, ready=False, serving=True, terminating=True),
        Endpoint("10.180.0.2", 80, ready=False, serving=False, terminating=True),
    )
    ruleset = plan_ruleset(
        snapshot([port("ns1", "svc1", "172.30.0.41")], {"svc1": endpoints}), context()
    )
    assert nat(ruleset, SVC1)[1:] == (
        f'-m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j {sep_chain("10.180.0.1:80")}',
    )
    assert service_chains(ruleset) == {SVC1, sep_chain("10.180.0.1:80")}


def test_external_policy_local_without_local_endpoints_drops_external_traffic() -> None:
    local_lb = replace(LB_PORT, external_traffic_policy=TrafficPolicy.LOCAL)
    endpoints = {"svc1": (Endpoint("10.180.0.1", 80, node_name="other-node"),)}
    ruleset = plan_ruleset(snapshot([local_lb], endpoints), context())
    _, external = no_endpoints_rules("has no local endpoints", "DROP")
    assert filter_rules(ruleset, "KPROXY-EXTERNAL-SERVICES") == external
    assert filter_rules(ruleset, "KPROXY-SERVICES") == ()
    ext = svc_chain("EXT")
    # Pods and the node itself still reach the service through every endpoint; the rest
    # falls off the EXT chain and is dropped in filter.
    assert nat(ruleset, ext) == (
        f'-s 10.0.0.0/8 -m comment --comment "pod traffic for ns1/svc1:p80 external '
        f'destinations" -j {SVC1}',
        '-m comment --comment "masquerade LOCAL traffic for ns1/svc1:p80 external destinations" '
        "-m addrtype --src-type LOCAL -j KPROXY-MARK-MASQ",
        '-m comment --comment "route LOCAL traffic for ns1/svc1:p80 external destinations" '
        f"-m addrtype --src-type LOCAL -j {SVC1}",
    )
    assert svc_chain("SVL") not in service_chains(ruleset)


def test_external_policy_local_sends_outside_traffic_to_local_endpoints() -> None:
    local_lb = replace(LB_PORT, external_traffic_policy=TrafficPolicy.LOCAL,
                       health_check_node_port=30000)
    endpoints = {"svc1": (
        Endpoint("10.180.0.1", 80, node_name="other-node"),
        Endpoint("10.180.0.2", 80, node_name=NODE),
    )}
    ruleset = plan_ruleset(snapshot([local_lb], endpoints), context())
    svl = svc_chain("SVL")
    assert nat(ruleset, svc_chain("EXT"))[-1] == f"-j {svl}"
    assert nat(ruleset, svl) == (
        f'-m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -j {sep_chain("10.180.0.2:80")}',
    )
    assert len(nat(ruleset, SVC1)) == 3  # masquerade rule + both endpoints
    assert filter_rules(ruleset, "KPROXY-EXTERNAL-SERVICES") == ()
    assert filter_rules(ruleset, "KPROXY-NODEPORTS") == (
        '-p tcp -m comment --comment "ns1/svc1:p80 health check node port" -m tcp '
        "--dport 30000 -j ACCEPT",
    )


def test_internal_policy_local() -> None:
    local = port("ns1", "svc1", "172.30.0.41", internal_traffic_policy=TrafficPolicy.LOCAL)
    remote_only = {"svc1": (Endpoint("10.180.0.1", 80, node_name="other-node"),)}
    ruleset = plan_ruleset(snapshot([local], remote_only), context())
    assert filter_rules(ruleset, "KPROXY-SERVICES") == (
        '-d 172.30.0.41/32 -p tcp -m comment --comment "ns1/svc1:p80 has no local endpoints" '
        "-m tcp --dport 80 -j DROP",
    )
    assert service_chains(ruleset) == set()

    with_local = {"svc1": (*remote_only["svc1"], Endpoint("10.180.0.2", 80, node_name=NODE))}
    ruleset = plan_ruleset(snapshot([local], with_local), context())
    svl = svc_chain("SVL")
    assert nat(ruleset, "KPROXY-SERVICES")[0].endswith(f"-j {svl}")
    assert nat(ruleset, svl) == (
        f"! -s 10.0.0.0/8 -d 172.30.0.41/32 -p tcp {SVC1_COMMENT} -m tcp --dport 80 "
        "-j KPROXY-MARK-MASQ",
        f'-m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -j {sep_chain("10.180.0.2:80")}',
    )
    assert service_chains(ruleset) == {svl, sep_chain("10.180.0.2:80")}


def test_topology_hints_narrow_cluster_endpoints_to_the_zone() -> None:
    node = replace(NODE_INFO, labels=(("topology.kubernetes.io/zone", "zone-a"),))
    endpoints = {"svc1": (
        Endpoint("10.180.0.1", 80, zone_hints=frozenset({"zone-a"})),
        Endpoint("10.180.0.2", 80, zone_hints=frozenset({"zone-b"})),
    )}
    plan = plan_context(CONFIG, node, IPFamily.IPV4)
    ruleset = plan_ruleset(snapshot([port("ns1", "svc1", "172.30.0.41")], endpoints, node), plan)
    assert nat(ruleset, SVC1)[1:] == (
        f'-m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j {sep_chain("10.180.0.1:80")}',
    )


# --- load balancer source ranges ------------------------------------------------------------


def test_source_ranges_allow_the_node_to_reach_its_own_load_balancer_ip() -> None:
    """kube-proxy's TestLoadBalancer: the node's IP is within a source range."""
    ports = [port("ns1", "svc1", "172.30.0.41", node_port=3001, load_balancer_ips=("1.2.3.4",),
                  load_balancer_source_ranges=("192.168.0.0/24", "1.2.3.0/28"))]
    ruleset = plan_ruleset(snapshot(ports, {"svc1": (Endpoint("10.180.0.1", 80),)}), context())
    fw, ext = svc_chain("FW"), svc_chain("EXT")
    text = '-m comment --comment "ns1/svc1:p80 loadbalancer IP"'
    assert nat(ruleset, fw) == (
        f"-s 192.168.0.0/24 {text} -j {ext}",
        f"-s 1.2.3.0/28 {text} -j {ext}",
        f"-s 1.2.3.4/32 {text} -j {ext}",
        '-m comment --comment "other traffic to ns1/svc1:p80 will be dropped by '
        'KPROXY-PROXY-FIREWALL"',
    )
    assert nat(ruleset, "KPROXY-SERVICES")[0] == (
        f"-d 1.2.3.4/32 -p tcp {text} -m tcp --dport 80 -j {fw}"
    )
    assert filter_rules(ruleset, "KPROXY-PROXY-FIREWALL") == (
        "-d 1.2.3.4/32 -p tcp -m comment --comment "
        f'"ns1/svc1:p80 traffic not accepted by {fw}" -m tcp --dport 80 -j DROP',
    )


def fw_rules(sources: Iterable[str]) -> tuple[str, ...]:
    """The FW chain of ns1/svc1:p80 that lets ``sources`` (in order) through."""
    text = '-m comment --comment "ns1/svc1:p80 loadbalancer IP"'
    return (
        *(f"-s {source} {text} -j {svc_chain('EXT')}" for source in sources),
        '-m comment --comment "other traffic to ns1/svc1:p80 will be dropped by '
        'KPROXY-PROXY-FIREWALL"',
    )


@pytest.mark.parametrize(
    ("ranges", "v4_sources", "v6_sources"),
    [
        # Only the IPv4 node IP (192.168.0.2) is in a range: the IPv4 LB IPs pass.
        (("192.168.0.0/24", "fd00:203::/64"),
         ("192.168.0.0/24", "1.2.3.4/32", "1.2.3.5/32"), ("fd00:203::/64",)),
        # Only the IPv6 node IP (fd00::2) is: the IPv6 LB IP passes, in IPv6 only.
        (("203.0.113.0/25", "fd00::/64"),
         ("203.0.113.0/25",), ("fd00::/64", "fd00:1::4/128")),
        # Neither: each family lets its ranges through and nothing else.
        (("203.0.113.0/25", "fd00:203::/64"), ("203.0.113.0/25",), ("fd00:203::/64",)),
    ],
)
def test_each_family_allows_its_load_balancer_ips_when_its_node_ip_is_in_a_range(
    ranges: tuple[str, ...], v4_sources: tuple[str, ...], v6_sources: tuple[str, ...]
) -> None:
    """kube-proxy runs one proxier per family, each with that family's node IP."""
    dual = port("ns1", "svc1", "172.30.0.41", "fd00:30::41",
                load_balancer_ips=("1.2.3.4", "fd00:1::4", "1.2.3.5"),
                load_balancer_source_ranges=ranges)
    state = snapshot([dual], {"svc1": (Endpoint("10.180.0.1", 80), Endpoint("fd00:180::1", 80))})
    for family, sources in ((IPFamily.IPV4, v4_sources), (IPFamily.IPV6, v6_sources)):
        ruleset = plan_ruleset(state, context(family))
        assert nat(ruleset, svc_chain("FW")) == fw_rules(sources), family


def test_an_unknown_node_is_checked_as_loopback() -> None:
    """Without the node's IP, kube-proxy checks the ranges against 127.0.0.1 (and ::1)."""
    ports = [port("ns1", "svc1", "172.30.0.41", load_balancer_ips=("1.2.3.4",),
                  load_balancer_source_ranges=("127.0.0.0/8",))]
    state = snapshot(ports, {"svc1": (Endpoint("10.180.0.1", 80),)}, node=None)
    ruleset = plan_ruleset(state, plan_context(CONFIG, None, IPFamily.IPV4, random_fully=False))
    assert nat(ruleset, svc_chain("FW")) == fw_rules(("127.0.0.0/8", "1.2.3.4/32"))


@pytest.mark.parametrize(
    "ranges", [("0.0.0.0/0",), ("fd00::/64",), ("0.0.0.0/0", "10.0.0.0/8")]
)
def test_source_ranges_that_allow_everything_need_no_firewall(ranges: tuple[str, ...]) -> None:
    ports = [port("ns1", "svc1", "172.30.0.41", load_balancer_ips=("1.2.3.4",),
                  load_balancer_source_ranges=ranges)]
    ruleset = plan_ruleset(snapshot(ports, {"svc1": (Endpoint("10.180.0.1", 80),)}), context())
    assert svc_chain("FW") not in service_chains(ruleset)
    assert filter_rules(ruleset, "KPROXY-PROXY-FIREWALL") == ()
    assert nat(ruleset, "KPROXY-SERVICES")[0].endswith(f"-j {svc_chain('EXT')}")


# --- NodePorts and localhost ---------------------------------------------------------------

NODEPORTS_COMMENT = (
    '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
    'this chain"'
)


@pytest.mark.parametrize(
    ("family", "addresses", "localhost", "tail", "route_localnet", "martian"),
    [
        (IPFamily.IPV4, (), True,
         (f"{NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL -j KPROXY-NODEPORTS",), True, True),
        (IPFamily.IPV4, (), False,
         (f"! -d 127.0.0.0/8 {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL "
          "-j KPROXY-NODEPORTS",), False, False),
        (IPFamily.IPV6, (), True,
         (f"! -d ::1/128 {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL "
          "-j KPROXY-NODEPORTS",), False, False),
        (IPFamily.IPV4, ("0.0.0.0/0", "192.168.0.0/16"), False,
         (f"! -d 127.0.0.0/8 {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL "
          "-j KPROXY-NODEPORTS",), False, False),
        (IPFamily.IPV4, ("192.168.0.0/16", "fd00::/64"), True,
         (f"-d 192.168.0.0/16 {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL "
          "-j KPROXY-NODEPORTS",), False, False),
        (IPFamily.IPV4, ("192.168.0.0/16", "127.0.0.0/8"), True,
         (f"-d 127.0.0.0/8 {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL "
          "-j KPROXY-NODEPORTS",
          f"-d 192.168.0.0/16 {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL "
          "-j KPROXY-NODEPORTS"), True, True),
        (IPFamily.IPV4, ("0.0.0.0/1",), False,
         ('-d 127.0.0.0/8 -m comment --comment "localhost nodeports are disabled" -j RETURN',
          f"-d 0.0.0.0/1 {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL "
          "-j KPROXY-NODEPORTS"), False, False),
        (IPFamily.IPV6, ("::/1",), True,
         ('-d ::1/128 -m comment --comment "localhost nodeports are disabled" -j RETURN',
          f"-d ::/1 {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL "
          "-j KPROXY-NODEPORTS"), False, False),
        (IPFamily.IPV4, ("primary",), True,
         (f"-d 192.168.0.2/32 {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL "
          "-j KPROXY-NODEPORTS",), False, False),
        (IPFamily.IPV6, ("primary",), True,
         (f"-d fd00::2/128 {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL "
          "-j KPROXY-NODEPORTS",), False, False),
    ],
)
def test_nodeport_destinations(
    family: IPFamily,
    addresses: tuple[str, ...],
    localhost: bool,
    tail: tuple[str, ...],
    route_localnet: bool,
    martian: bool,
) -> None:
    config = replace(CONFIG, nodeport_addresses=addresses, localhost_nodeports=localhost)
    plan = plan_context(config, NODE_INFO, family)
    assert plan.needs_route_localnet is route_localnet
    ruleset = plan_ruleset(snapshot([]), plan)
    assert nat(ruleset, "KPROXY-SERVICES") == tail
    assert bool(filter_rules(ruleset, "KPROXY-FIREWALL")) is martian


def test_primary_nodeport_addresses_without_a_node_ip_match_every_address() -> None:
    config = replace(CONFIG, nodeport_addresses=("primary",))
    plan = plan_context(config, NodeInfo(NODE), IPFamily.IPV4)
    assert plan.nodeports_on_all_addresses


def test_nodeport_rules() -> None:
    ports = [port("ns1", "svc1", "172.30.0.41", node_port=30080, protocol=Protocol.UDP,
                  number=53)]
    ruleset = plan_ruleset(snapshot(ports, {"svc1": (Endpoint("10.180.0.1", 53),)}), context())
    ext = svc_chain("EXT", protocol="udp")
    assert nat(ruleset, "KPROXY-NODEPORTS") == (
        f'-p udp -m comment --comment "ns1/svc1:p80" -m udp --dport 30080 -j {ext}',
    )
    assert nat(ruleset, ext) == (
        '-m comment --comment "masquerade traffic for ns1/svc1:p80 external destinations" '
        "-j KPROXY-MARK-MASQ",
        f"-j {svc_chain('SVC', protocol='udp')}",
    )


# --- fixed chains and options -----------------------------------------------------------------


def test_fixed_chains_follow_the_options() -> None:
    config = replace(CONFIG, masquerade_bit=10)
    plan = plan_context(config, NODE_INFO, IPFamily.IPV4, random_fully=True, tcp_be_liberal=True)
    ruleset = plan_ruleset(snapshot([]), plan)
    assert nat(ruleset, "KPROXY-POSTROUTING") == (
        "-m mark ! --mark 0x400/0x400 -j RETURN",
        "-j MARK --set-xmark 0x400/0x0",
        '-m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    )
    assert nat(ruleset, "KPROXY-MARK-MASQ") == ("-j MARK --set-xmark 0x400/0x400",)
    assert filter_rules(ruleset, "KPROXY-FORWARD") == (
        '-m comment --comment "kubernetes forwarding rules" -m mark --mark 0x400/0x400 -j ACCEPT',
        '-m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
        "RELATED,ESTABLISHED -j ACCEPT",
    )
    assert ruleset.tables[Table.MANGLE].chains["KPROXY-PROXY-CANARY"].rules == ()


def test_empty_cluster_has_exactly_the_fixed_chains() -> None:
    ruleset = plan_ruleset(snapshot([]), context())
    assert_ruleset(ruleset, f"""
        *nat
        :KPROXY-SERVICES
        -A KPROXY-SERVICES {NODEPORTS_JUMP}
        :KPROXY-NODEPORTS
        {STATIC_NAT}
        *filter
        :KPROXY-SERVICES
        :KPROXY-EXTERNAL-SERVICES
        :KPROXY-NODEPORTS
        :KPROXY-PROXY-FIREWALL
        {STATIC_FILTER}
        *mangle
        :KPROXY-PROXY-CANARY
    """)


def test_builtin_jumps_are_kube_proxys() -> None:
    ruleset = plan_ruleset(snapshot([]), context())
    jumps = [(jump.table.value, jump.chain, jump.args) for jump in ruleset.jumps]
    new = "-m conntrack --ctstate NEW "
    assert jumps == [
        ("filter", "INPUT", f'{new}-m comment --comment "kproxy externally-visible service '
         'portals" -j KPROXY-EXTERNAL-SERVICES'),
        ("filter", "FORWARD", f'{new}-m comment --comment "kproxy externally-visible service '
         'portals" -j KPROXY-EXTERNAL-SERVICES'),
        ("filter", "INPUT", '-m comment --comment "kproxy health check service ports" '
         "-j KPROXY-NODEPORTS"),
        ("filter", "FORWARD", f'{new}-m comment --comment "kproxy service portals" '
         "-j KPROXY-SERVICES"),
        ("filter", "OUTPUT", f'{new}-m comment --comment "kproxy service portals" '
         "-j KPROXY-SERVICES"),
        ("filter", "FORWARD", '-m comment --comment "kproxy forwarding rules" -j KPROXY-FORWARD'),
        ("filter", "INPUT", f'{new}-m comment --comment "kproxy load balancer firewall" '
         "-j KPROXY-PROXY-FIREWALL"),
        ("filter", "OUTPUT", f'{new}-m comment --comment "kproxy load balancer firewall" '
         "-j KPROXY-PROXY-FIREWALL"),
        ("filter", "FORWARD", f'{new}-m comment --comment "kproxy load balancer firewall" '
         "-j KPROXY-PROXY-FIREWALL"),
        ("nat", "OUTPUT", '-m comment --comment "kproxy service portals" -j KPROXY-SERVICES'),
        ("nat", "PREROUTING", '-m comment --comment "kproxy service portals" -j KPROXY-SERVICES'),
        ("nat", "POSTROUTING", '-m comment --comment "kproxy postrouting rules" '
         "-j KPROXY-POSTROUTING"),
        ("filter", "INPUT", '-m comment --comment "kproxy firewall" -j KPROXY-FIREWALL'),
        ("filter", "OUTPUT", '-m comment --comment "kproxy firewall" -j KPROXY-FIREWALL'),
    ]
    assert all(jump.first for jump in ruleset.jumps)


def test_large_clusters_leave_comments_out_of_endpoint_rules() -> None:
    """kube-proxy's large-cluster mode: more than 1000 endpoints in the family."""
    big = tuple(Endpoint(f"10.180.{i // 256}.{i % 256}", 80) for i in range(1001))
    ports = [port("ns1", "svc1", "172.30.0.41"), port("ns2", "svc2", "172.30.0.42")]
    ruleset = plan_ruleset(
        snapshot(ports, {"svc1": (Endpoint("10.180.9.1", 80),), "svc2": big}), context()
    )
    sep = sep_chain("10.180.9.1:80")
    assert nat(ruleset, SVC1) == (
        f"! -s 10.0.0.0/8 -d 172.30.0.41/32 -p tcp {SVC1_COMMENT} -m tcp --dport 80 "
        "-j KPROXY-MARK-MASQ",
        f"-j {sep}",
    )
    assert nat(ruleset, sep) == (
        "-s 10.180.9.1/32 -j KPROXY-MARK-MASQ",
        "-p tcp -m tcp -j DNAT --to-destination 10.180.9.1:80",
    )
