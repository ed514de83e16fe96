"""The dev cluster's workload and load generator: their pure parts, and a workload driven
through a real dev API server in a lab (pods answering with their version, the slice the
controller would write, a rolling update that never leaves the slice without ready pods)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kproxy.devcluster.cluster import (
    DevCluster,
    kproxy_run_args,
    node_object,
    zone_of,
)
from kproxy.devcluster.lab import NodeAddressing
from kproxy.devcluster.loadgen import LoadGenerator, LoadReport, parse_answer
from kproxy.devcluster.nodestate import ChainCounts, chain_counts, listening_ports, portal_rules
from kproxy.devcluster.workload import (
    TRIGGER_TIME_ANNOTATION,
    ContainerPort,
    EndpointRecord,
    Workload,
    endpoint_slice,
    least_loaded,
    rfc3339,
)

# --- pure ----------------------------------------------------------------------------------------


def test_endpoint_slice_carries_conditions_topology_and_trigger_time() -> None:
    records = [
        EndpointRecord("web-v1-1", "10.244.1.2", "node1", "zone-a", True, True, False),
        EndpointRecord("web-v1-2", "10.244.2.2", "node2", "zone-b", False, True, True),
    ]
    manifest = endpoint_slice("web", "default", "web-abcde",
                              [ContainerPort("http", 8080), ContainerPort("dns", 53, "UDP")],
                              records, 1767322800.25)
    assert manifest["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
    assert manifest["metadata"]["annotations"] == {
        TRIGGER_TIME_ANNOTATION: "2026-01-02T03:00:00.250000Z"}
    assert manifest["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"},
                                 {"name": "dns", "port": 53, "protocol": "UDP"}]
    terminating = manifest["endpoints"][1]
    assert terminating == {
        "addresses": ["10.244.2.2"], "nodeName": "node2", "zone": "zone-b",
        "targetRef": {"kind": "Pod", "name": "web-v1-2", "namespace": "default"},
        "conditions": {"ready": False, "serving": True, "terminating": True},
    }


def test_rfc3339_is_utc_with_microseconds() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"


def test_nodes_alternate_zones_and_are_registered_with_their_pod_cidr() -> None:
    class FakeNode:  # only what node_object reads
        def __init__(self, index: int) -> None:
            plan = NodeAddressing.for_index(index, ipv6=False)
            self.index, self.name, self.pod_cidr = index, plan.name, plan.pod_cidr

    nodes: list[Any] = [FakeNode(1), FakeNode(2), FakeNode(3)]
    assert [zone_of(node) for node in nodes] == ["zone-a", "zone-b", "zone-a"]
    registered = node_object(nodes[1])
    assert registered["metadata"]["labels"]["topology.kubernetes.io/zone"] == "zone-b"
    assert registered["spec"]["podCIDRs"] == ["10.244.2.0/24"]
    assert least_loaded(nodes, {"node1": 2, "node2": 1, "node3": 1}).name == "node2"


def test_kproxy_run_args_name_the_mode_and_node() -> None:
    class FakeHost:
        name = "node2"

    args = kproxy_run_args("userspace", Path("/k/kubeconfig"), FakeHost(),  # type: ignore[arg-type]
                           min_sync_period="0s")
    assert args[:3] == ["--proxy-mode=userspace", "--kubeconfig=/k/kubeconfig",
                        "--hostname-override=node2"]
    assert "--iptables-min-sync-period=0s" in args


def test_load_generator_reads_only_pod_server_answers() -> None:
    body = json.dumps({"pod": "web-v2-4", "version": "v2", "client": "1.2.3.4:5"}).encode()
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n" + body
    assert parse_answer(raw)["version"] == "v2"
    for bad in (b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}", b"garbage",
                b"HTTP/1.1 200 OK\r\n\r\n{\"status\": 1}"):
        with pytest.raises(ValueError):
            parse_answer(bad)


def test_load_report_round_trips_and_summarises() -> None:
    report = LoadReport(sent=200, ok=199, failed=1, seconds=2.0, by_version={"v1": 199},
                        by_pod={"web-v1-1": 199}, failures={"timeout": 1},
                        samples=["timeout: no answer"])
    assert LoadReport.from_json(report.to_json()) == report
    assert report.rate == 100.0
    assert report.summary() == ("200 requests in 2.0s (100/s), 1 failed; "
                                "answered by version: v1: 199")


# --- against a dev API server in a lab ---------------------------------------------------------


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(tmp_path_factory.mktemp("workload")) as cluster:
        yield cluster


def slice_conditions(dev: DevCluster, workload: Workload) -> dict[str, tuple[bool, ...]]:
    current = dev.api.get("discovery.k8s.io/v1", "EndpointSlice", workload.slice_name)
    return {endpoint["targetRef"]["name"]: (endpoint["conditions"]["ready"],
                                            endpoint["conditions"]["serving"],
                                            endpoint["conditions"]["terminating"])
            for endpoint in current["endpoints"]}


@pytest.mark.kernel
def test_workload_spreads_pods_answering_with_their_version(dev: DevCluster) -> None:
    web = Workload(dev.lab, dev.api, "spread", zones=dev.zones)
    try:
        web.deploy(3)
        assert [member.pod.node.name for member in web.pods] == ["node1", "node2", "node1"]
        client = dev.lab.add_pod(2, "spread-client")
        for member in web.pods:
            [answer] = client.probe("http", member.pod.ip, 8080)
            assert (answer.pod, answer.version) == (member.name, "v1"), answer
        stored = dev.api.get("discovery.k8s.io/v1", "EndpointSlice", web.slice_name)
        assert {(e["nodeName"], e["zone"]) for e in stored["endpoints"]} == {
            ("node1", "zone-a"), ("node2", "zone-b")}
        assert TRIGGER_TIME_ANNOTATION in stored["metadata"]["annotations"]
        web.set_ready(web.pods[0].name, False)
        assert slice_conditions(dev, web)[web.pods[0].name] == (False, False, False)
        web.scale(1)
        assert len(web.pods) == 1
        assert list(slice_conditions(dev, web)) == [web.pods[0].name]
    finally:
        web.delete()
    assert not [pod for pod in dev.lab.pods if pod.name.startswith("spread-v")]


@pytest.mark.kernel
def test_rolling_update_keeps_ready_pods_and_marks_the_old_ones_terminating(
        dev: DevCluster) -> None:
    web = Workload(dev.lab, dev.api, "roll", zones=dev.zones, grace=0.2)
    seen: list[dict[str, tuple[bool, ...]]] = []
    try:
        web.deploy(2)
        web.roll("v2", on_step=lambda _step: seen.append(slice_conditions(dev, web)))
        assert {member.version for member in web.pods} == {"v2"}
        assert len(web.pods) == 2
        for conditions in seen:
            # Never fewer ready pods than replicas: maxUnavailable 0.
            assert sum(ready for ready, _, _ in conditions.values()) >= 2, conditions
        terminating = [conditions for conditions in seen
                       if (False, True, True) in conditions.values()]
        assert len(terminating) == 2, seen  # each old pod was terminating once, serving
    finally:
        web.delete()


@pytest.mark.kernel
def test_load_generator_counts_answers_by_version_and_failures(dev: DevCluster) -> None:
    web = Workload(dev.lab, dev.api, "load", zones=dev.zones)
    try:
        [member] = web.deploy(1, "v7")
        client = dev.lab.add_pod(1, "load-client")
        report = LoadGenerator(client, member.pod.ip, 8080, rate=50, duration=1).wait()
        assert (report.sent, report.ok, report.failed) == (50, 50, 0), report
        assert report.by_version == {"v7": 50} and report.by_pod == {member.name: 50}
        closed = LoadGenerator(client, member.pod.ip, 9999, rate=20, duration=0.5).wait()
        assert (closed.ok, closed.failures) == (0, {"refused": 10}), closed
    finally:
        web.delete()


# --- what kproxy installed, compactly (pure) -------------------------------------------------

SAVE = """*nat
:PREROUTING ACCEPT [0:0]
:KPROXY-SERVICES - [0:0]
:KPROXY-POSTROUTING - [0:0]
:KPROXY-SVC-HLQUBMHAAR3WA4VE - [0:0]
:KPROXY-SEP-R5G7KNKN6VHTXJOL - [0:0]
:KPROXY-SEP-AAAAAAAAAAAAAAAA - [0:0]
-A PREROUTING -j KPROXY-SERVICES
-A KPROXY-PORTALS -p tcp -d 10.96.0.10 --dport 80 -j REDIRECT --to-ports 39211
-A KPROXY-PORTALS-HOST -p tcp -d 10.96.0.10 --dport 80 -j DNAT --to-destination 10.0.0.1:39211
COMMIT
"""


def test_chains_are_counted_by_kind() -> None:
    counts = chain_counts(SAVE)
    assert counts == ChainCounts({"KPROXY-SVC": 1, "KPROXY-SEP": 2}, fixed=2)
    assert counts.describe() == "2 KPROXY-SEP, 1 KPROXY-SVC + 2 fixed chains"
    assert chain_counts("").describe() == "no service chains + 0 fixed chains"
    assert portal_rules(SAVE) == 2


def test_listening_ports_of_one_process() -> None:
    ss = ("tcp   LISTEN 0 128 0.0.0.0:39211 0.0.0.0:* users:((\"python\",pid=42,fd=7))\n"
          "udp   UNCONN 0 0   0.0.0.0:40001 0.0.0.0:* users:((\"python\",pid=42,fd=8))\n"
          "tcp   LISTEN 0 128 0.0.0.0:8080  0.0.0.0:* users:((\"python\",pid=420,fd=3))\n")
    assert listening_ports(ss, [42]) == ["tcp/39211", "udp/40001"]
