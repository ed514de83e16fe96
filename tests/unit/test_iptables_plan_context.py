"""PlanContext from configuration and Node, and the iptables-save spelling helpers."""

from __future__ import annotations

import pytest

from kproxy.config.record import DetectLocalMode, ProxyConfig
from kproxy.iptables.context import firewall_node_ip, plan_context, primary_node_ip
from kproxy.iptables.localdetect import LocalTrafficDetector, with_source_match
from kproxy.iptables.rulesyntax import comment, probability, quote
from kproxy.model.types import IPFamily, NodeInfo

NODE = NodeInfo(
    "node-a",
    labels=(("kubernetes.io/os", "linux"), ("topology.kubernetes.io/zone", "zone-a")),
    pod_cidrs=("10.244.1.0/24", "fd00:244:1::/64"),
    addresses=(
        ("Hostname", "node-a"),
        ("ExternalIP", "203.0.113.5"),
        ("InternalIP", "fd00::5"),
        ("InternalIP", "192.168.0.5"),
        ("InternalIP", "192.168.0.6"),
    ),
)
BASE = ProxyConfig(hostname="node-a")


def test_node_derived_fields() -> None:
    ipv4 = plan_context(BASE, NODE, IPFamily.IPV4)
    ipv6 = plan_context(BASE, NODE, IPFamily.IPV6)
    assert (ipv4.hostname, ipv4.zone, ipv4.pod_cidrs, ipv4.node_ip) == (
        "node-a", "zone-a", ("10.244.1.0/24",), "192.168.0.5")
    assert (ipv6.pod_cidrs, ipv6.node_ip) == (("fd00:244:1::/64",), "fd00::5")


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        ((("ExternalIP", "203.0.113.5"), ("InternalIP", "192.168.0.5")), "192.168.0.5"),
        ((("ExternalIP", "203.0.113.5"), ("InternalIP", "fd00::5")), "203.0.113.5"),
        ((("Hostname", "node-a"),), None),
        ((), None),
    ],
)
def test_primary_node_ip_prefers_internal_addresses(
    addresses: tuple[tuple[str, str], ...], expected: str | None
) -> None:
    assert primary_node_ip(NodeInfo("n", addresses=addresses), IPFamily.IPV4) == expected


def test_bind_address_replaces_the_node_ip_of_its_family_only() -> None:
    # kube-proxy's --bind-address (bindAddress): despite its name, the node IP of its family.
    config = ProxyConfig(hostname="node-a", bind_address="10.9.9.9",
                         nodeport_addresses=("primary",))
    ipv4 = plan_context(config, NODE, IPFamily.IPV4)
    assert (ipv4.node_ip, ipv4.nodeport_cidrs, firewall_node_ip(ipv4)) == (
        "10.9.9.9", ("10.9.9.9/32",), "10.9.9.9")
    assert plan_context(config, NODE, IPFamily.IPV6).node_ip == "fd00::5"
    assert plan_context(config, None, IPFamily.IPV4).node_ip == "10.9.9.9"
    for unspecified in ("0.0.0.0", "::"):
        config = ProxyConfig(hostname="node-a", bind_address=unspecified)
        assert plan_context(config, NODE, IPFamily.IPV4).node_ip == "192.168.0.5"
        assert plan_context(config, NODE, IPFamily.IPV6).node_ip == "fd00::5"


def test_without_node() -> None:
    context = plan_context(BASE, None, IPFamily.IPV4)
    assert (context.zone, context.pod_cidrs, context.node_ip) == ("", (), None)
    assert firewall_node_ip(context) == "127.0.0.1"
    assert firewall_node_ip(plan_context(BASE, None, IPFamily.IPV6)) == "::1"


@pytest.mark.parametrize(("bit", "mark"), [(14, "0x4000"), (0, "0x1"), (31, "0x80000000")])
def test_masquerade_mark(bit: int, mark: str) -> None:
    config = ProxyConfig(hostname="n", masquerade_bit=bit)
    assert plan_context(config, None, IPFamily.IPV4).masquerade_mark == mark


@pytest.mark.parametrize(
    ("config", "family", "expected"),
    [
        (BASE, IPFamily.IPV4, LocalTrafficDetector()),
        (ProxyConfig(hostname="n", detect_local_mode=DetectLocalMode.CLUSTER_CIDR,
                     cluster_cidrs=("10.0.0.0/8", "fd00::/48")), IPFamily.IPV6,
         LocalTrafficDetector("-s fd00::/48", "! -s fd00::/48")),
        # No cluster CIDR of the family: nothing is detected.
        (ProxyConfig(hostname="n", detect_local_mode=DetectLocalMode.CLUSTER_CIDR,
                     cluster_cidrs=("10.0.0.0/8",)), IPFamily.IPV6, LocalTrafficDetector()),
        (ProxyConfig(hostname="n", detect_local_mode=DetectLocalMode.NODE_CIDR), IPFamily.IPV4,
         LocalTrafficDetector("-s 10.244.1.0/24", "! -s 10.244.1.0/24")),
        (ProxyConfig(hostname="n", detect_local_mode=DetectLocalMode.BRIDGE_INTERFACE,
                     pod_bridge_interface="cni0"), IPFamily.IPV6,
         LocalTrafficDetector("-i cni0", "! -i cni0")),
        (ProxyConfig(hostname="n", detect_local_mode=DetectLocalMode.INTERFACE_NAME_PREFIX,
                     pod_interface_name_prefix="cali"), IPFamily.IPV4,
         LocalTrafficDetector("-i cali+", "! -i cali+")),
    ],
)
def test_local_detector(config: ProxyConfig, family: IPFamily, expected: object) -> None:
    assert plan_context(config, NODE, family).local_detector == expected


def test_node_cidr_detection_follows_the_node() -> None:
    config = ProxyConfig(hostname="n", detect_local_mode=DetectLocalMode.NODE_CIDR)
    context = plan_context(config, None, IPFamily.IPV4)
    assert not context.local_detector.implemented
    assert context.with_node(NODE).local_detector.if_not_local == "! -s 10.244.1.0/24"
    assert context.with_node(None) is context


@pytest.mark.parametrize(
    ("header", "match", "expected"),
    [
        ("-d 10.96.0.1/32 -p tcp", "! -s 10.0.0.0/8", "! -s 10.0.0.0/8 -d 10.96.0.1/32 -p tcp"),
        ("-d 10.96.0.1/32 -p tcp", "! -i cni0", "-d 10.96.0.1/32 ! -i cni0 -p tcp"),
        ("-d 10.96.0.1/32", "-i cni0", "-d 10.96.0.1/32 -i cni0"),
        ("", "-s 10.0.0.0/8", "-s 10.0.0.0/8"),
        ("", "-i veth+", "-i veth+"),
        ("-d 10.96.0.1/32", "", "-d 10.96.0.1/32"),
    ],
)
def test_detector_matches_go_where_iptables_save_prints_them(
    header: str, match: str, expected: str
) -> None:
    assert with_source_match(header, match) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kubernetes", "kubernetes"),
        ("a_b-C9", "a_b-C9"),
        ("ns1/svc1:p80", '"ns1/svc1:p80"'),
        ("has space", '"has space"'),
        ("", '""'),
        ("a'b\"c\\d", '"a\\\'b\\"c\\\\d"'),
    ],
)
def test_quote_like_iptables_save(text: str, expected: str) -> None:
    assert quote(text) == expected
    assert comment(text) == f"-m comment --comment {expected}"


@pytest.mark.parametrize(
    ("count", "printed"),
    [(2, "0.50000000000"), (3, "0.33333333349"), (4, "0.25000000000"), (5, "0.20000000019"),
     (7, "0.14285714272"), (1000, "0.00100000016")],
)
def test_probability_as_the_kernel_stores_kube_proxys_value(count: int, printed: str) -> None:
    assert probability(count) == printed


def test_node_changes_that_do_not_matter_leave_the_context_equal() -> None:
    context = plan_context(BASE, NODE, IPFamily.IPV4)
    tainted = NodeInfo(NODE.name, (*NODE.labels, ("team", "a")), NODE.pod_cidrs,
                       NODE.addresses, taints=(("dedicated", "NoSchedule"),))
    moved = context.with_node(tainted)
    assert moved == context and moved.node == tainted
    rezoned = NodeInfo(NODE.name, (("topology.kubernetes.io/zone", "zone-b"),), NODE.pod_cidrs,
                       NODE.addresses)
    assert context.with_node(rezoned) != context
