"""The forwarding flow tables of iptables mode (tests/kernel/test_iptables_flows.py, and the
dual-stack one of tests/kernel/test_iptables_ipv6.py), run in each proxy mode: the same
objects, the same rows, real packets from pods, nodes and an outside client through the lab
nodes' kproxy.

iptables mode programs once (``--once``); userspace mode keeps running (its relays forward),
with ``--from-file`` as a static source. One documented difference: in userspace mode the
relay connects to the endpoint from the node, so every endpoint sees the address of the
node that relayed the connection, never the client's (as with kube-proxy's userspace mode).
Rows that check the source address expect that node's addresses there.

The three iptables backends are covered by test_iptables_flows.py; here iptables mode runs on
the default backend, as the reference the userspace run is compared with.

Beside those rows, loadBalancerSourceRanges with the load-balancer IP local to the node (as a
VIP-style load balancer makes it): the node's own connection to such an IP leaves with the IP
itself as source, and kube-proxy lets that source through when one of the ranges holds the
node's IP of the same family. Two such services, their IPs local to node2 (where the network
routes them): ``lb-node`` open to the nodes' subnet, ``lb-outside`` open to the outside client
only; and in the dual-stack lab ``lb-dual``, open to the nodes in IPv6 only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flows import TIMEOUT, Flow, addresses_of, check_flow, flow_target, host_named
from kproxy_nodes import KproxyOnNode
from test_iptables_flows import (
    CLUSTER_CIDR,
    EXTERNAL_IP,
    FLOWS,
    LB_IP,
    WEB_PORT,
    cluster_objects,
    endpoint_slice,
    port,
    service,
)
from test_iptables_ipv6 import CLUSTER_CIDRS as DUAL_STACK_CIDRS
from test_iptables_ipv6 import FLOWS as DUAL_STACK_FLOWS
from test_iptables_ipv6 import NO_ICMP_RATE_LIMIT, dual_stack_slices, ipv6_of
from test_iptables_ipv6 import cluster_objects as dual_stack_objects
from test_iptables_ipv6 import service as dual_stack_service

from kproxy.devcluster.lab import Lab, Pod

pytestmark = pytest.mark.kernel

MODES = ("iptables", "userspace")
# The network routes external and load-balancer IPs to node2 (see the fixture).
EXTERNAL_ROUTE_NODE = 1


# Load-balancer IPs local to node2 (the node the network routes them to).
VIP_NODE = EXTERNAL_ROUTE_NODE
VIP_NODE_ALLOWED = "203.0.113.21"  # lb-node: the ranges hold the node IPs
VIP_NODE_DENIED = "203.0.113.22"  # lb-outside: the ranges hold only the outside client
NODES_SUBNET = "172.18.0.0/28"  # node1 172.18.0.11, node2 .12; not the outside client (.100)
OUTSIDE_ONLY = "172.18.0.100/32"


def load_balancer(name: str, cluster_ip: str, node_port: int, vip: str, ranges: list[str],
                  lab: Lab) -> list[dict[str, Any]]:
    return [
        {**service(name, [port("http", 80, node_port=node_port)], clusterIP=cluster_ip,
                   type="LoadBalancer", loadBalancerSourceRanges=ranges),
         "status": {"loadBalancer": {"ingress": [{"ip": vip}]}}},
        endpoint_slice(name, lab, ["web-1", "web-2"]),
    ]


def vip_objects(lab: Lab) -> list[dict[str, Any]]:
    return [*load_balancer("lb-node", "10.96.0.80", 30090, VIP_NODE_ALLOWED, [NODES_SUBNET], lab),
            *load_balancer("lb-outside", "10.96.0.81", 30091, VIP_NODE_DENIED, [OUTSIDE_ONLY],
                           lab)]


def vip_flows() -> list[Flow]:
    node = f"node{VIP_NODE + 1}"
    both = frozenset({"web-1", "web-2"})
    return [
        Flow("local LB IP from its node, source the LB IP, node IP in the ranges: answered",
             node, "http", VIP_NODE_ALLOWED, 80, both, source_seen=addresses_of(node),
             source_ip=VIP_NODE_ALLOWED),
        Flow("local LB IP from its node, source its pod-bridge address (not in the ranges): "
             "dropped", node, "tcp", VIP_NODE_ALLOWED, 80, outcome=TIMEOUT, attempts=1,
             source_ip=f"10.244.{VIP_NODE + 1}.1"),
        Flow("local LB IP from outside, source not in the ranges: dropped", "outside", "tcp",
             VIP_NODE_ALLOWED, 80, outcome=TIMEOUT, attempts=1),
        Flow("local LB IP from its node, source the LB IP, node IP not in the ranges: dropped",
             node, "tcp", VIP_NODE_DENIED, 80, outcome=TIMEOUT, attempts=1,
             source_ip=VIP_NODE_DENIED),
        Flow("local LB IP from outside, source in the ranges: answered", "outside", "http",
             VIP_NODE_DENIED, 80, both, source_seen=addresses_of(node)),
    ]


MODE_FLOWS = [*FLOWS, *vip_flows()]

# Dual-stack: one service, both LB IPs local to node2; its IPv6 range holds the nodes' IPv6
# node IPs (…::11, …::12, not the outside client's …::100), its IPv4 range not the IPv4 ones.
# Each family checks its own node IP, as kube-proxy's proxier per family does.
DUAL_VIPS = ("203.0.113.23", "fd00:203::23")
DUAL_RANGES = [OUTSIDE_ONLY, "fc00:f853:ccd:e793::/120"]


def dual_stack_vip_objects(lab: Lab) -> list[dict[str, Any]]:
    return [
        {**dual_stack_service("lb-dual", ("10.96.0.82", "fd00:10:96::82"), node_port=30092,
                              type="LoadBalancer", loadBalancerSourceRanges=DUAL_RANGES),
         "status": {"loadBalancer": {"ingress": [{"ip": vip} for vip in DUAL_VIPS]}}},
        *dual_stack_slices("lb-dual", lab, ["web-1", "web-2"]),
    ]


def dual_stack_vip_flows() -> list[Flow]:
    node = f"node{VIP_NODE + 1}"
    return [
        Flow("local LB IP over ipv6 from its node, source the LB IP, ipv6 node IP in the "
             "ranges: answered", node, "http", DUAL_VIPS[1], 80, frozenset({"web-1", "web-2"}),
             source_seen=ipv6_of(node), source_ip=DUAL_VIPS[1]),
        Flow("local LB IP over ipv4 from its node, source the LB IP, ipv4 node IP not in the "
             "ranges: dropped", node, "tcp", DUAL_VIPS[0], 80, outcome=TIMEOUT, attempts=1,
             source_ip=DUAL_VIPS[0]),
    ]


DUAL_STACK_MODE_FLOWS = [*DUAL_STACK_FLOWS, *dual_stack_vip_flows()]


def relaying_node(lab: Lab, flow: Flow) -> str:
    """The node whose kproxy handles ``flow``: the source's own node for pods and nodes,
    the node the destination is routed to for the outside client."""
    source = host_named(lab, flow.source)
    if isinstance(source, Pod):
        return source.node.name
    if flow.source != "outside":
        return flow.source
    destination, _ = flow_target(lab, flow)
    for node in lab.nodes:
        if destination in node.ips:
            return node.name
    return lab.nodes[EXTERNAL_ROUTE_NODE].name


def in_mode(flow: Flow, mode: str) -> Flow:
    """The row as ``mode`` must satisfy it."""
    if mode == "iptables" or flow.source_seen is None:
        return flow

    def node_addresses(lab: Lab) -> frozenset[str]:
        node = lab.node(relaying_node(lab, flow))
        return addresses_of(node.name)(lab) | {node.ip6, node.gateway6} - {None}

    return dataclasses.replace(flow, source_seen=node_addresses)


def run_kproxy(lab: Lab, mode: str, objects: Path, cluster_cidrs: str,
               workdir: Path) -> list[KproxyOnNode]:
    """kproxy on every node: programmed once (iptables), or running (userspace)."""
    common = [f"--proxy-mode={mode}", f"--from-file={objects}",
              f"--cluster-cidr={cluster_cidrs}", "--v=2"]
    running: list[KproxyOnNode] = []
    try:
        for node in lab.nodes:
            args = [*common, f"--hostname-override={node.name}"]
            if mode == "iptables":
                done = node.ns.run_python("kproxy.cli", "run", *args, "--once",
                                          check=False, timeout=60)
                if done.returncode != 0:
                    pytest.fail(f"kproxy --once failed on {node.name}:\n"
                                f"{done.stdout}\n{done.stderr}")
                continue
            kproxy = KproxyOnNode(node, args, workdir / f"{node.name}.log")
            kproxy.start()
            running.append(kproxy)
        for kproxy in running:
            kproxy.wait_synced()
    except BaseException:
        for kproxy in running:
            kproxy.stop()
        raise
    return running


def write_objects(workdir: Path, items: list[dict[str, Any]]) -> Path:
    objects = workdir / "objects.json"
    objects.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return objects


@pytest.fixture(scope="module", params=MODES)
def mode_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[str, Lab]]:
    mode: str = request.param
    workdir: Path = tmp_path_factory.mktemp(f"flows-{mode}")
    with Lab(nodes=2, outside=True) as lab:
        for node in lab.nodes:
            lab.add_pod(node, f"web-{node.index}")
            lab.add_pod(node, f"client-{node.index}")
        lab.start_servers([lab.pod("web-1"), lab.pod("web-2")], tcp=(WEB_PORT,),
                          udp=(WEB_PORT,))
        assert lab.outside is not None
        for address in (EXTERNAL_IP, LB_IP, VIP_NODE_ALLOWED, VIP_NODE_DENIED):
            lab.outside.ns.ip("route", "add", f"{address}/32", "via",
                              lab.nodes[EXTERNAL_ROUTE_NODE].ip)
        lab.nodes[VIP_NODE].add_local_addresses(VIP_NODE_ALLOWED, VIP_NODE_DENIED)
        objects = write_objects(workdir, [*cluster_objects(lab), *vip_objects(lab)])
        running = run_kproxy(lab, mode, objects, CLUSTER_CIDR, workdir)
        try:
            yield mode, lab
            for kproxy in running:
                kproxy.assert_running()
        finally:
            for kproxy in running:
                kproxy.stop()


@pytest.fixture(scope="module", params=MODES)
def dual_stack_mode_lab(request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Lab]]:
    mode: str = request.param
    workdir: Path = tmp_path_factory.mktemp(f"dual-stack-flows-{mode}")
    with Lab(nodes=2, outside=True, ipv6=True) as lab:
        for node in lab.nodes:
            node.ns.sysctls(NO_ICMP_RATE_LIMIT)
            lab.add_pod(node, f"web-{node.index}")
            lab.add_pod(node, f"client-{node.index}")
        lab.start_servers([lab.pod("web-1"), lab.pod("web-2")], tcp=(WEB_PORT,),
                          udp=(WEB_PORT,))
        lab.nodes[VIP_NODE].add_local_addresses(*DUAL_VIPS)
        objects = write_objects(workdir, [*dual_stack_objects(lab), *dual_stack_vip_objects(lab)])
        running = run_kproxy(lab, mode, objects, DUAL_STACK_CIDRS, workdir)
        try:
            yield mode, lab
            for kproxy in running:
                kproxy.assert_running()
        finally:
            for kproxy in running:
                kproxy.stop()


@pytest.mark.parametrize("flow", MODE_FLOWS, ids=[flow.name for flow in MODE_FLOWS])
def test_flow(mode_lab: tuple[str, Lab], flow: Flow) -> None:
    mode, lab = mode_lab
    problems = check_flow(lab, in_mode(flow, mode))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("flow", DUAL_STACK_MODE_FLOWS,
                         ids=[flow.name for flow in DUAL_STACK_MODE_FLOWS])
def test_dual_stack_flow(dual_stack_mode_lab: tuple[str, Lab], flow: Flow) -> None:
    mode, lab = dual_stack_mode_lab
    problems = check_flow(lab, in_mode(flow, mode))
    assert not problems, "\n".join(problems)
