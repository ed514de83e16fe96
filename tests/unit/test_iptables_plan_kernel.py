"""Planned rules are exactly what iptables-save prints back after iptables-restore took them.

The ruleset keeps every rule in iptables-save form, so that a plan compares equal to the
kernel's copy. Each test loads a plan (then a delta) into a throwaway network namespace with
the host's iptables (the nft and, when present, the legacy variant) and reads it back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from types import MappingProxyType

import pytest

from kproxy.config.record import DetectLocalMode, ProxyConfig
from kproxy.iptables.plan import IncrementalPlanner, plan_context
from kproxy.iptables.restore import join_payloads, parse_save, render_delta, render_full
from kproxy.iptables.ruleset import Ruleset, Table
from kproxy.iptables.rulesyntax import probability
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

pytestmark = pytest.mark.kernel

NODE = NodeInfo(
    "node-a",
    labels=(("topology.kubernetes.io/zone", "zone-a"),),
    pod_cidrs=("10.244.1.0/24", "fd00:244:1::/64"),
    addresses=(("InternalIP", "192.168.0.5"), ("InternalIP", "fd00::5")),
)


def name(service: str, port: str = "http", protocol: Protocol = Protocol.TCP) -> ServicePortName:
    return ServicePortName("default", service, port, protocol)


def services() -> dict[ServicePortName, ServicePort]:
    """One of each feature, dual-stack where it can be."""
    ports = [
        ServicePort(name("web"), ServiceType.CLUSTER_IP, ("10.96.0.10", "fd00:96::10"), 80,
                    Protocol.TCP, 8080, session_affinity=SessionAffinity.CLIENT_IP),
        ServicePort(name("dns", "dns", Protocol.UDP), ServiceType.NODE_PORT,
                    ("10.96.0.53", "fd00:96::53"), 53, Protocol.UDP, 53, node_port=30053),
        ServicePort(name("sctp", "s", Protocol.SCTP), ServiceType.CLUSTER_IP, ("10.96.0.7",),
                    7, Protocol.SCTP, 7),
        ServicePort(name("lb"), ServiceType.LOAD_BALANCER, ("10.96.0.20", "fd00:96::20"), 443,
                    Protocol.TCP, 8443, node_port=30443,
                    external_ips=("198.51.100.1", "fd00:51::1"),
                    load_balancer_ips=("203.0.113.1", "fd00:113::1"),
                    load_balancer_source_ranges=("192.168.0.0/16", "fd00::/16"),
                    external_traffic_policy=TrafficPolicy.LOCAL, health_check_node_port=32000),
        ServicePort(name("empty"), ServiceType.NODE_PORT, ("10.96.0.30", "fd00:96::30"), 80,
                    Protocol.TCP, 80, node_port=30080, external_ips=("198.51.100.2",)),
        ServicePort(name("local"), ServiceType.CLUSTER_IP, ("10.96.0.40",), 80, Protocol.TCP, 80,
                    internal_traffic_policy=TrafficPolicy.LOCAL),
    ]
    return {port.name: port for port in ports}


def endpoints(extra: bool = False) -> dict[ServicePortName, tuple[Endpoint, ...]]:
    pods: tuple[Endpoint, ...] = (
        Endpoint("10.244.1.2", 8080, node_name="node-a"),
        Endpoint("10.244.2.2", 8080, node_name="node-b"),
        Endpoint("fd00:244:1::2", 8080, node_name="node-a"),
    )
    if extra:
        pods += (Endpoint("10.244.2.3", 8080, node_name="node-b"),
                 Endpoint("fd00:244:2::3", 8080, node_name="node-b"))
    return {
        name("web"): pods,
        name("dns", "dns", Protocol.UDP): (Endpoint("10.244.2.9", 53), Endpoint("fd00::9", 53)),
        name("sctp", "s", Protocol.SCTP): (Endpoint("10.244.2.7", 7),),
        name("lb"): pods,
        name("local"): (Endpoint("10.244.2.4", 80, node_name="node-b"),),
    }


def snapshot(extra: bool = False) -> Snapshot:
    return Snapshot(1, MappingProxyType(services()), MappingProxyType(endpoints(extra)), NODE,
                    frozenset(), False)


def variants() -> list[str]:
    found = [variant for variant in ("nft", "legacy") if shutil.which(f"iptables-{variant}")]
    return found or [""]


@pytest.fixture
def namespace() -> Iterator[str]:
    netns = f"kp-plan-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
    try:
        yield netns
    finally:
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True)


def program(variant: str, family: IPFamily, tool: str) -> str:
    base = "iptables" if family is IPFamily.IPV4 else "ip6tables"
    return f"{base}-{variant}-{tool}" if variant else f"{base}-{tool}"


def restore(netns: str, variant: str, family: IPFamily, text: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns, program(variant, family, "restore"), "--noflush"],
        input=text, text=True, check=True, capture_output=True,
    )


def saved(netns: str, variant: str, family: IPFamily) -> dict[Table, dict[str, tuple[str, ...]]]:
    output = subprocess.run(
        ["ip", "netns", "exec", netns, program(variant, family, "save")],
        text=True, check=True, capture_output=True,
    ).stdout
    return {
        table: {name: parsed.chains[name].rules for name in parsed.kproxy_chains()}
        for table, parsed in parse_save(output).items()
    }


def planned(ruleset: Ruleset) -> dict[Table, dict[str, tuple[str, ...]]]:
    return {
        table: {name: chain.rules for name, chain in rules.chains.items()}
        for table, rules in ruleset.tables.items()
    }


@pytest.mark.parametrize("variant", variants())
@pytest.mark.parametrize("family", list(IPFamily))
def test_kernel_prints_back_exactly_the_planned_rules(
    namespace: str, variant: str, family: IPFamily
) -> None:
    config = ProxyConfig(hostname="node-a", detect_local_mode=DetectLocalMode.NODE_CIDR)
    planner = IncrementalPlanner(plan_context(config, NODE, family))
    ruleset = planner.full(snapshot())
    restore(namespace, variant, family, join_payloads(render_full(ruleset)))
    assert saved(namespace, variant, family) == planned(ruleset)

    delta = planner.partial(
        Snapshot(2, MappingProxyType(services()), MappingProxyType(endpoints(extra=True)), NODE,
                 frozenset(endpoints()), False)
    )
    assert not delta.empty
    restore(namespace, variant, family, join_payloads(render_delta(delta)))
    fresh = IncrementalPlanner(plan_context(config, NODE, family)).full(snapshot(extra=True))
    assert saved(namespace, variant, family) == planned(fresh)


def test_probabilities_print_back_as_planned(namespace: str) -> None:
    counts = range(2, 1500)
    rules = [f"-m statistic --mode random --probability {probability(n)} -j RETURN"
             for n in counts]
    written = [f"-A KPROXY-P -m statistic --mode random --probability {1.0 / n:0.10f} -j RETURN"
               for n in counts]
    restore(namespace, "", IPFamily.IPV4, "*nat\n:KPROXY-P - [0:0]\n" + "\n".join(written)
            + "\nCOMMIT\n")
    assert saved(namespace, "", IPFamily.IPV4)[Table.NAT]["KPROXY-P"] == tuple(rules)
