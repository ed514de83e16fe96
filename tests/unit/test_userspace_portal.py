"""Portal planning and endpoint selection of userspace mode (pure), with every planned
ruleset loaded into the validating fake kernel."""

from __future__ import annotations

import pytest

from kproxy.config import DetectLocalMode, ProxyConfig
from kproxy.iptables.context import plan_context
from kproxy.iptables.fake import FakeBackend, FakeIptables
from kproxy.iptables.restore import join_payloads, render_full
from kproxy.iptables.ruleset import Ruleset, Table
from kproxy.iptables.serviceview import family_view
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
from kproxy.userspace.chains import (
    NODEPORT_CONTAINER,
    NODEPORT_HOST,
    PORTALS_CONTAINER,
    PORTALS_FILTER,
    PORTALS_HOST,
)
from kproxy.userspace.portal import plan_portals
from kproxy.userspace.selection import ListenerKey, PortSelection, Scope, select_port
from kproxy.userspace.targets import Target

V4, V6 = IPFamily.IPV4, IPFamily.IPV6
CONFIG = ProxyConfig(hostname="node-1", cluster_cidrs=("10.244.0.0/16", "fd00:10:244::/48"),
                     detect_local_mode=DetectLocalMode.CLUSTER_CIDR)
NODE = NodeInfo("node-1", addresses=(("InternalIP", "172.18.0.11"),))
LOCAL = Endpoint("10.244.1.2", 8080, node_name="node-1")
REMOTE = Endpoint("10.244.2.2", 8080, node_name="node-2")
CLUSTER_PORT, LOCAL_PORT = 40001, 40002


def port(protocol: Protocol = Protocol.TCP, **fields: object) -> ServicePort:
    values: dict[str, object] = {
        "name": ServicePortName("default", "web", "http", protocol),
        "type": ServiceType.CLUSTER_IP,
        "cluster_ips": ("10.96.0.10",),
        "port": 80,
        "protocol": protocol,
        "target_port": 8080,
    }
    values.update(fields)
    return ServicePort(**values)  # type: ignore[arg-type]


def select(service_port: ServicePort, *endpoints: Endpoint,
           family: IPFamily = V4) -> PortSelection:
    view = family_view(service_port, family)
    assert view is not None
    return select_port(view, endpoints, node_name="node-1", zone="")


def plan(*selections: PortSelection, family: IPFamily = V4,
         config: ProxyConfig = CONFIG, node: NodeInfo = NODE) -> Ruleset:
    ports = {}
    for selection in selections:
        for scope in selection.scopes():
            ports[selection.key(scope)] = CLUSTER_PORT if scope is Scope.CLUSTER else LOCAL_PORT
    ruleset = plan_portals(selections, ports, plan_context(config, node, family))
    # Whatever is planned must load into a kernel: declared chains, valid jumps.
    kernel = FakeIptables(families=(family,))
    kernel.apply_restore(family, join_payloads(render_full(ruleset)))
    assert FakeBackend(kernel).ensure_jumps(family, ruleset.jumps) == len(ruleset.jumps)
    return ruleset


def rules(ruleset: Ruleset, chain: str) -> tuple[str, ...]:
    table = Table.FILTER if chain == PORTALS_FILTER else Table.NAT
    return ruleset.tables[table].chains[chain].rules


def test_cluster_ip_is_redirected_for_pods_and_the_node() -> None:
    ruleset = plan(select(port(), LOCAL, REMOTE))
    expected = ('-d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" '
                f"-m tcp --dport 80 -j REDIRECT --to-ports {CLUSTER_PORT}")
    assert rules(ruleset, PORTALS_CONTAINER)[0] == expected
    assert rules(ruleset, PORTALS_HOST)[0] == expected
    assert rules(ruleset, PORTALS_FILTER) == ()
    # NodePorts come after every service address, for local destinations only.
    assert rules(ruleset, PORTALS_CONTAINER)[-1].endswith(
        f"-m addrtype --dst-type LOCAL -j {NODEPORT_CONTAINER}")
    assert rules(ruleset, PORTALS_HOST)[-1].endswith(
        f"-m addrtype --dst-type LOCAL -j {NODEPORT_HOST}")


def test_no_endpoints_is_rejected_in_filter_and_not_redirected() -> None:
    selection = select(port())
    assert selection.scopes() == ()
    ruleset = plan(selection)
    assert len(rules(ruleset, PORTALS_CONTAINER)) == 1  # only the NodePort entry
    assert rules(ruleset, PORTALS_FILTER) == (
        '-d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http has no endpoints" '
        "-m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable",)


def test_ipv6_uses_its_own_addresses_and_reject() -> None:
    dual = port(cluster_ips=("10.96.0.10", "fd00:96::10"))
    v6 = Endpoint("fd00:10:244:1::2", 8080, node_name="node-1")
    served = plan(select(dual, v6, family=V6), family=V6)
    assert rules(served, PORTALS_CONTAINER)[0].startswith("-d fd00:96::10/128 -p tcp")
    assert "! -d ::1/128" in rules(served, PORTALS_HOST)[-1]
    unserved = plan(select(dual, family=V6), family=V6)
    assert rules(unserved, PORTALS_FILTER)[0].endswith(
        "-j REJECT --reject-with icmp6-port-unreachable")


def test_udp_gets_its_own_rules() -> None:
    ruleset = plan(select(port(Protocol.UDP), REMOTE))
    assert rules(ruleset, PORTALS_CONTAINER)[0] == (
        '-d 10.96.0.10/32 -p udp -m comment --comment "default/web:http cluster IP" '
        f"-m udp --dport 80 -j REDIRECT --to-ports {CLUSTER_PORT}")


def test_node_port_with_cluster_policy() -> None:
    ruleset = plan(select(port(type=ServiceType.NODE_PORT, node_port=30080), REMOTE))
    nodeport = ('-p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 '
                f"-j REDIRECT --to-ports {CLUSTER_PORT}")
    assert rules(ruleset, NODEPORT_CONTAINER) == (nodeport,)
    assert rules(ruleset, NODEPORT_HOST) == (nodeport,)


def test_etp_local_without_local_endpoints_drops_outside_traffic_only() -> None:
    selection = select(port(type=ServiceType.NODE_PORT, node_port=30081,
                            external_ips=("203.0.113.10",),
                            external_traffic_policy=TrafficPolicy.LOCAL), REMOTE)
    assert (selection.internal, selection.external, selection.external_from_node) == (
        Scope.CLUSTER, None, Scope.CLUSTER)
    ruleset = plan(selection)
    redirect = f"-j REDIRECT --to-ports {CLUSTER_PORT}"
    # Pods (by the cluster CIDR) and the node still reach every endpoint.
    assert rules(ruleset, NODEPORT_CONTAINER) == (
        "-s 10.244.0.0/16 -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 30081 "
        f"{redirect}",)
    assert rules(ruleset, NODEPORT_HOST)[0].endswith(redirect)
    assert any(rule.startswith("-s 10.244.0.0/16 -d 203.0.113.10/32") and rule.endswith(redirect)
               for rule in rules(ruleset, PORTALS_CONTAINER))
    # The rest is dropped, as iptables mode does.
    assert rules(ruleset, PORTALS_FILTER) == (
        '-d 203.0.113.10/32 -p tcp -m comment --comment "default/web:http has no local '
        'endpoints" -m tcp --dport 80 -j DROP',
        '-p tcp -m comment --comment "default/web:http has no local endpoints" '
        "-m addrtype --dst-type LOCAL -m tcp --dport 30081 -j DROP",
    )


def test_etp_local_with_a_local_endpoint_uses_two_listeners() -> None:
    selection = select(port(type=ServiceType.NODE_PORT, node_port=30081,
                            external_traffic_policy=TrafficPolicy.LOCAL), LOCAL, REMOTE)
    assert selection.scopes() == (Scope.CLUSTER, Scope.LOCAL)
    assert selection.targets(Scope.LOCAL) == (Target("10.244.1.2", 8080),)
    assert selection.targets(Scope.CLUSTER) == (Target("10.244.1.2", 8080),
                                                Target("10.244.2.2", 8080))
    ruleset = plan(selection)
    container = rules(ruleset, NODEPORT_CONTAINER)
    assert container[0].startswith("-s 10.244.0.0/16") and container[0].endswith(
        str(CLUSTER_PORT))
    assert container[1].endswith(f"--to-ports {LOCAL_PORT}")
    assert rules(ruleset, NODEPORT_HOST)[0].endswith(f"--to-ports {CLUSTER_PORT}")


def test_itp_local_without_local_endpoints_drops_cluster_ip() -> None:
    selection = select(port(internal_traffic_policy=TrafficPolicy.LOCAL), REMOTE)
    assert selection.scopes() == ()
    assert rules(plan(selection), PORTALS_FILTER)[0].endswith("--dport 80 -j DROP")


def test_itp_local_uses_only_local_endpoints() -> None:
    selection = select(port(internal_traffic_policy=TrafficPolicy.LOCAL), LOCAL, REMOTE)
    assert selection.scopes() == (Scope.LOCAL,)
    assert selection.targets(Scope.LOCAL) == (Target("10.244.1.2", 8080),)
    assert rules(plan(selection), PORTALS_HOST)[0].endswith(f"--to-ports {LOCAL_PORT}")


def test_terminating_fallback_and_affinity() -> None:
    terminating = Endpoint("10.244.2.3", 8080, ready=False, serving=True, terminating=True)
    gone = Endpoint("10.244.2.4", 8080, ready=False, serving=False, terminating=True)
    selection = select(port(session_affinity=SessionAffinity.CLIENT_IP,
                            affinity_timeout_seconds=600), terminating, gone)
    assert selection.targets(Scope.CLUSTER) == (Target("10.244.2.3", 8080),)
    assert selection.affinity_timeout == 600.0
    ready = select(port(), REMOTE, terminating)
    assert ready.targets(Scope.CLUSTER) == (Target("10.244.2.2", 8080),)
    assert ready.affinity_timeout is None


def test_load_balancer_source_ranges() -> None:
    selection = select(port(type=ServiceType.LOAD_BALANCER, node_port=30090,
                            load_balancer_ips=("203.0.113.20",),
                            load_balancer_source_ranges=("192.0.2.0/24",)), REMOTE)
    ruleset = plan(selection)
    lb = [rule for rule in rules(ruleset, PORTALS_CONTAINER) if "203.0.113.20" in rule]
    assert lb == ['-s 192.0.2.0/24 -d 203.0.113.20/32 -p tcp -m comment --comment '
                  '"default/web:http loadbalancer IP" -m tcp --dport 80 '
                  f"-j REDIRECT --to-ports {CLUSTER_PORT}"]
    # The node's own connections pass by the same sources; its IP is not in the ranges, so
    # the load-balancer IP as a source does not pass.
    assert [rule for rule in rules(ruleset, PORTALS_HOST) if "203.0.113.20" in rule] == lb
    assert rules(ruleset, PORTALS_FILTER)[0].endswith("--dport 80 -j DROP")


LB_TEXT = '-m comment --comment "default/web:http loadbalancer IP" -m tcp --dport 80'


def lb_rules(ruleset: Ruleset, chain: str, lb_ip: str) -> list[str]:
    return [rule for rule in rules(ruleset, chain) if f"-d {lb_ip}" in rule]


def test_source_ranges_holding_the_node_ip_let_the_load_balancer_ips_through() -> None:
    """kube-proxy's firewall chain: when a range holds the node's IP, sources equal to a
    load-balancer IP pass too (a VIP local to the node is the source of the node's own
    requests to it), from pods and outside clients as from the node."""
    selection = select(port(type=ServiceType.LOAD_BALANCER, node_port=30090,
                            load_balancer_ips=("203.0.113.20", "203.0.113.21"),
                            load_balancer_source_ranges=("172.18.0.0/28",)), REMOTE)
    ruleset = plan(selection)
    redirect = f"-j REDIRECT --to-ports {CLUSTER_PORT}"
    for lb_ip in ("203.0.113.20", "203.0.113.21"):
        expected = [f"-s {source} -d {lb_ip}/32 -p tcp {LB_TEXT} {redirect}"
                    for source in ("172.18.0.0/28", "203.0.113.20/32", "203.0.113.21/32")]
        assert lb_rules(ruleset, PORTALS_CONTAINER, lb_ip) == expected
        assert lb_rules(ruleset, PORTALS_HOST, lb_ip) == expected


@pytest.mark.parametrize(("family", "lb_ip", "sources"), [
    (V4, "203.0.113.20", ("172.18.0.0/28", "203.0.113.20/32")),
    (V6, "fd00:203::20", ("fd00:99::/64",)),  # the IPv6 node IP is outside fd00:99::/64
])
def test_each_family_checks_its_own_node_ip(family: IPFamily, lb_ip: str,
                                            sources: tuple[str, ...]) -> None:
    node = NodeInfo("node-1", addresses=(("InternalIP", "172.18.0.11"),
                                         ("InternalIP", "fc00::11")))
    selection = select(port(type=ServiceType.LOAD_BALANCER, node_port=30090,
                            cluster_ips=("10.96.0.10", "fd00:96::10"),
                            load_balancer_ips=("203.0.113.20", "fd00:203::20"),
                            load_balancer_source_ranges=("172.18.0.0/28", "fd00:99::/64")),
                       REMOTE, Endpoint("fd00:10:244:2::2", 8080, node_name="node-2"),
                       family=family)
    ruleset = plan(selection, family=family, node=node)
    lb = f"{lb_ip}/{32 if family is V4 else 128}"
    expected = [f"-s {source} -d {lb} -p tcp {LB_TEXT} -j REDIRECT --to-ports {CLUSTER_PORT}"
                for source in sources]
    assert lb_rules(ruleset, PORTALS_HOST, lb) == expected
    assert lb_rules(ruleset, PORTALS_CONTAINER, lb) == expected


@pytest.mark.parametrize(("localhost", "entry"), [
    (True, "-m comment --comment \"kproxy userspace nodeports\" -m addrtype --dst-type LOCAL"),
    (False, "! -d 127.0.0.0/8 -m comment --comment \"kproxy userspace nodeports\" "
            "-m addrtype --dst-type LOCAL"),
])
def test_localhost_node_ports_follow_the_flag(localhost: bool, entry: str) -> None:
    config = ProxyConfig(hostname="node-1", localhost_nodeports=localhost)
    ruleset = plan(select(port(), REMOTE), config=config)
    assert rules(ruleset, PORTALS_HOST)[-1] == f"{entry} -j {NODEPORT_HOST}"


def test_missing_listener_is_not_redirected() -> None:
    selection = select(port(), REMOTE)
    ruleset = plan_portals([selection], {}, plan_context(CONFIG, NODE, V4))
    assert not any("REDIRECT" in rule for rule in rules(ruleset, PORTALS_CONTAINER))


def test_listener_keys_name_port_family_and_scope() -> None:
    key = ListenerKey(port().name, V6, Scope.LOCAL)
    assert str(key) == "default/web:http/TCP/IPv6/local"
