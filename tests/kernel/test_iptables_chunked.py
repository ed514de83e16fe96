"""A full sync into iptables-nft in several transactions, through the kernel.

The proxier runs in the test process with an nft restore backend whose chunk threshold is
forced low, so that 200 services (about 700 chains) load in steps as 100,000 chains would.
Real packets from a pod then reach the services' endpoints; a resync in chunks over the loaded
rules (services deleted, endpoints moved) is followed just as faithfully; cleanup in chunks
leaves no kproxy chain or jump behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from flows import Flow, check_flow

from kproxy.clock import SystemClock
from kproxy.config.record import IptablesBackend, ProxyConfig
from kproxy.devcluster.lab import Lab, Node
from kproxy.feed import EndpointSliceFeed, NodeFeed, ServiceFeed
from kproxy.iptables.chunks import ChunkPolicy
from kproxy.iptables.cleanup import cleanup
from kproxy.iptables.kernelstate import parse_nft_chains
from kproxy.iptables.proxier import IptablesProxier, Sysctls
from kproxy.iptables.restore import TableText
from kproxy.iptables.restore_backend import RestoreBackend
from kproxy.iptables.ruleset import Table
from kproxy.model.types import IPFamily
from kproxy.rejections import RejectionLog
from kproxy.state import ResourceKind, StateTracker

pytestmark = pytest.mark.kernel

V4 = IPFamily.IPV4
SERVICES = 200
WEB_PORT = 8080
CHUNKS = ChunkPolicy(threshold_chains=100, chunk_chains=150)
GONE = ("timeout", "unreachable")


def cluster_ip(index: int) -> str:
    return f"10.96.{index // 200 + 1}.{index % 200 + 10}"


def service_object(index: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"svc-{index}", "namespace": "default",
                         "resourceVersion": "1"},
            "spec": {"clusterIP": cluster_ip(index), "clusterIPs": [cluster_ip(index)],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                                "targetPort": WEB_PORT}]}}


def slice_object(index: int, lab: Lab, pod: str, version: int = 1) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{index}-abc", "namespace": "default",
                         "resourceVersion": str(version),
                         "labels": {"kubernetes.io/service-name": f"svc-{index}"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": WEB_PORT, "protocol": "TCP"}],
            "endpoints": [{"addresses": [lab.pod(pod).ip], "nodeName": lab.pod(pod).node.name,
                           "conditions": {"ready": True}}]}


def node_object(node: Node) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "resourceVersion": "1"},
            "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": node.ip}]}}


class RecordedSysctls(Sysctls):
    """The proxier runs in the host's namespace: it must not touch its sysctls."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def read(self, key: str) -> str | None:
        return self.values.get(key)

    def write(self, key: str, value: str) -> None:
        self.values[key] = value


class CountingBackend(RestoreBackend):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.restores = 0

    def restore_all(self, family: IPFamily, payloads: Mapping[Table, TableText]) -> None:
        self.restores += 1
        super().restore_all(family, payloads)


class Node1:
    """node1 of a lab, its state, and a proxier programming it through iptables-nft."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.node = lab.nodes[0]
        self.tracker = StateTracker()
        rejections = RejectionLog()
        self.services = ServiceFeed(self.tracker, rejections, "")
        self.slices = EndpointSliceFeed(self.tracker, rejections, "")
        NodeFeed(self.tracker, rejections, self.node.name).on_upsert(node_object(self.node))
        self.backend = CountingBackend(
            IptablesBackend.NFT, command_prefix=self.node.ns.exec_argv([]), chunking=CHUNKS)
        config = ProxyConfig(hostname=self.node.name, cluster_cidrs=("10.244.0.0/16",),
                             localhost_nodeports=False)
        self.proxier = IptablesProxier(config, self.backend, clock=SystemClock(),
                                       families=(V4,), sysctls=RecordedSysctls())

    def full_sync(self) -> None:
        self.proxier.force_full_sync("test")
        snapshot = self.tracker.snapshot()
        result = asyncio.run(self.proxier.sync(snapshot))
        assert result.ok and result.full, result.error
        self.tracker.sync_succeeded(snapshot)

    def kproxy_chains(self) -> set[str]:
        listed = self.node.ns.run(["nft", "list", "chains", "ip"]).stdout
        return {name for names in parse_nft_chains(listed).values() for name in names
                if name.startswith("KPROXY-")}

    def nat_builtin_rules(self) -> str:
        return "".join(self.node.ns.run(["iptables-nft", "-t", "nat", "-S", chain]).stdout
                       for chain in ("PREROUTING", "OUTPUT", "POSTROUTING"))


@pytest.fixture(scope="module")
def node1() -> Iterator[Node1]:
    with Lab(nodes=2) as lab:
        for node in lab.nodes:
            lab.add_pod(node, f"web-{node.index}")
        lab.add_pod(lab.nodes[0], "client-1")
        lab.start_servers([lab.pod("web-1"), lab.pod("web-2")], tcp=(WEB_PORT,))
        yield Node1(lab)


def web_of(index: int) -> str:
    return f"web-{index % 2 + 1}"


def reaches(index: int, pods: frozenset[str]) -> Flow:
    return Flow(f"svc-{index}", "client-1", "http", cluster_ip(index), 80, pods, attempts=2)


def test_a_chunked_full_sync_forwards_every_service(node1: Node1) -> None:
    for index in range(SERVICES):
        node1.services.on_upsert(service_object(index))
        node1.slices.on_upsert(slice_object(index, node1.lab, web_of(index)))
    node1.tracker.mark_listed(ResourceKind.SERVICES)
    node1.tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)
    node1.full_sync()
    nat_chains = len(node1.kproxy_chains())
    assert nat_chains > CHUNKS.chunk_chains * 2
    # The declarations, then each group of chains (the small tables come on top).
    assert node1.backend.restores >= 1 + -(-nat_chains // CHUNKS.chunk_chains)
    assert "kproxy service portals" in node1.nat_builtin_rules()
    problems: list[str] = []
    for index in (0, 1, 99, 150, SERVICES - 1):
        problems += check_flow(node1.lab, reaches(index, frozenset({web_of(index)})))
    assert not problems, "\n".join(problems)


def test_a_chunked_resync_follows_deletions_and_moved_endpoints(node1: Node1) -> None:
    before = node1.kproxy_chains()
    for index in range(50):
        node1.services.on_delete("default", f"svc-{index}")
        node1.slices.on_delete("default", f"svc-{index}-abc")
    moved = 120
    node1.slices.on_upsert(slice_object(moved, node1.lab, web_of(moved + 1), version=2))
    restores = node1.backend.restores
    node1.full_sync()
    assert node1.backend.restores - restores > 3
    after = node1.kproxy_chains()
    assert len(before - after) >= 50 * 2  # their SVC and SEP chains (and a moved SEP)
    rules = node1.nat_builtin_rules()
    assert rules.count("kproxy service portals") == 2  # PREROUTING and OUTPUT, once each
    problems = check_flow(node1.lab, reaches(moved, frozenset({web_of(moved + 1)})))
    problems += check_flow(node1.lab, reaches(SERVICES - 1, frozenset({web_of(SERVICES - 1)})))
    # A deleted service's address is forwarded nowhere (nothing answers, nothing rejects).
    results = node1.lab.pod("client-1").probe("tcp", cluster_ip(3), 80, count=1, timeout=0.7)
    problems += [f"deleted svc-3 answered: {result.pod or result.error}"
                 for result in results if result.ok or result.error not in GONE]
    assert not problems, "\n".join(problems)


def test_a_chunked_cleanup_leaves_no_kproxy_chain_or_jump(node1: Node1) -> None:
    report = cleanup(node1.backend, [V4])
    assert report.ok, report.errors
    assert report.removed_jumps and node1.kproxy_chains() == set()
    assert "kproxy" not in node1.nat_builtin_rules()
    assert cleanup(node1.backend, [V4]).deleted_chains == ()
