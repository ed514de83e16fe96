"""iptables mode, packet by packet: kproxy programs both nodes of a lab once
(`kproxy run --proxy-mode iptables --from-file objects.yaml --once`), then real packets from
pods, nodes and an outside client go through the rules it wrote. One row per flow: which
endpoints may answer and which source address they must see, or refused / dropped.

Parametrized over the three backends (nft, legacy, libiptc).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flows import (
    REFUSED,
    TIMEOUT,
    Flow,
    addresses_of,
    check_flow,
    node_ip,
)

from kproxy.devcluster.lab import Lab

pytestmark = pytest.mark.kernel

CLUSTER_CIDR = "10.244.0.0/16"
EXTERNAL_IP = "203.0.113.10"
LB_IP = "203.0.113.20"
WEB_PORT = 8080

BACKENDS = ["nft", "legacy", "libiptc"]


def service(name: str, ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": ports, **spec}}


def port(name: str, number: int, protocol: str = "TCP", node_port: int | None = None,
         target: int | str = WEB_PORT) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "port": number, "protocol": protocol,
                             "targetPort": target}
    if node_port is not None:
        entry["nodePort"] = node_port
    return entry


def endpoint_slice(service_name: str, lab: Lab, pods: list[str],
                   ports: list[tuple[str, str]] = (("http", "TCP"),),  # type: ignore[assignment]
                   conditions: dict[str, dict[str, bool]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service_name}-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [{"name": name, "port": WEB_PORT, "protocol": proto} for name, proto in ports],
        "endpoints": [
            {"addresses": [lab.pod(pod).ip], "nodeName": lab.pod(pod).node.name,
             "conditions": (conditions or {}).get(pod, {"ready": True})}
            for pod in pods
        ],
    }


def cluster_objects(lab: Lab) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for node in lab.nodes:
        objects.append({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name,
                         "labels": {"topology.kubernetes.io/zone": f"zone-{node.index}"}},
            "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": node.ip}]},
        })
    objects += [
        service("web", [port("http", 80), port("dns", 80, "UDP")], clusterIP="10.96.0.10"),
        endpoint_slice("web", lab, ["web-1", "web-2"], [("http", "TCP"), ("dns", "UDP")]),
        service("empty", [port("http", 80)], clusterIP="10.96.0.20"),
        service("np", [port("http", 80, node_port=30080)], clusterIP="10.96.0.30",
                type="NodePort"),
        endpoint_slice("np", lab, ["web-1", "web-2"]),
        service("local", [port("http", 80, node_port=30081)], clusterIP="10.96.0.31",
                type="NodePort", externalTrafficPolicy="Local"),
        endpoint_slice("local", lab, ["web-2"]),
        service("hairpin", [port("http", 80)], clusterIP="10.96.0.40"),
        endpoint_slice("hairpin", lab, ["web-1"]),
        service("ext", [port("http", 80)], clusterIP="10.96.0.50", externalIPs=[EXTERNAL_IP]),
        endpoint_slice("ext", lab, ["web-2"]),
        service("named", [port("http", 81, target="web")], clusterIP="10.96.0.60"),
        endpoint_slice("named", lab, ["web-2"]),
        service("ready-less", [port("http", 80)], clusterIP="10.96.0.70"),
        endpoint_slice("ready-less", lab, ["web-1", "web-2"], conditions={
            "web-1": {"ready": False, "serving": True, "terminating": True},
            "web-2": {"ready": False, "serving": False, "terminating": True},
        }),
    ]
    return objects


FLOWS = [
    Flow("clusterip tcp from a pod spreads, source kept", "client-1", "http", "10.96.0.10",
         80, frozenset({"web-1", "web-2"}), source_seen=addresses_of("client-1"),
         attempts=16, must_spread=True),
    Flow("clusterip udp, same port number as tcp", "client-1", "udp", "10.96.0.10", 80,
         frozenset({"web-1", "web-2"}), source_seen=addresses_of("client-1")),
    Flow("clusterip from the other node's pod", "client-2", "http", "10.96.0.10", 80,
         frozenset({"web-1", "web-2"}), source_seen=addresses_of("client-2")),
    Flow("clusterip from the node itself is masqueraded", "node1", "http", "10.96.0.10", 80,
         frozenset({"web-1", "web-2"}), source_seen=addresses_of("node1")),
    Flow("no endpoints: refused", "client-1", "tcp", "10.96.0.20", 80, outcome=REFUSED),
    Flow("wrong port on a cluster IP is not forwarded", "client-1", "tcp", "10.96.0.10", 81,
         outcome=TIMEOUT, attempts=1),
    Flow("nodeport from outside, masqueraded", "outside", "http", node_ip(0), 30080,
         frozenset({"web-1", "web-2"}), source_seen=addresses_of("node1")),
    Flow("nodeport on the other node", "outside", "http", node_ip(1), 30080,
         frozenset({"web-1", "web-2"}), source_seen=addresses_of("node2")),
    Flow("eTP Local: node with a local endpoint keeps the client source", "outside", "http",
         node_ip(1), 30081, frozenset({"web-2"}), source_seen=addresses_of("outside")),
    Flow("eTP Local: node without local endpoints drops", "outside", "tcp", node_ip(0),
         30081, outcome=TIMEOUT, attempts=1),
    Flow("eTP Local: pod traffic to the cluster IP uses every endpoint", "client-1", "http",
         "10.96.0.31", 80, frozenset({"web-2"}), source_seen=addresses_of("client-1")),
    Flow("hairpin: a pod reaching itself through its service is masqueraded", "web-1", "http",
         "10.96.0.40", 80, frozenset({"web-1"}), source_seen=addresses_of("node1")),
    Flow("external IP from outside", "outside", "http", EXTERNAL_IP, 80, frozenset({"web-2"})),
    Flow("named targetPort", "client-1", "http", "10.96.0.60", 81, frozenset({"web-2"})),
    Flow("no ready endpoint: serving terminating one is used", "client-1", "http",
         "10.96.0.70", 80, frozenset({"web-1"})),
    Flow("localhost nodeport on the node", "node1", "http", "127.0.0.1", 30080,
         frozenset({"web-1", "web-2"})),
]


@pytest.fixture(scope="module", params=BACKENDS)
def programmed_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Lab]:
    backend: str = request.param
    workdir: Path = tmp_path_factory.mktemp(f"flows-{backend}")
    with Lab(nodes=2, outside=True) as lab:
        for node in lab.nodes:
            lab.add_pod(node, f"web-{node.index}")
            lab.add_pod(node, f"client-{node.index}")
        lab.start_servers([lab.pod("web-1"), lab.pod("web-2")], tcp=(WEB_PORT,),
                          udp=(WEB_PORT,))
        assert lab.outside is not None
        # Routing to external and LB IPs is the network's job, not kproxy's: send them to node2.
        for address in (EXTERNAL_IP, LB_IP):
            lab.outside.ns.ip("route", "add", f"{address}/32", "via", lab.nodes[1].ip)
        objects = workdir / "objects.json"
        objects.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                       "items": cluster_objects(lab)}))
        for node in lab.nodes:
            done = node.ns.run_python(
                "kproxy.cli", "run", "--proxy-mode=iptables", f"--from-file={objects}",
                "--once", f"--hostname-override={node.name}", f"--cluster-cidr={CLUSTER_CIDR}",
                f"--iptables-backend={backend}", "--v=2", check=False, timeout=60,
            )
            if done.returncode != 0:
                pytest.fail(f"kproxy --once failed on {node.name} ({backend}):\n"
                            f"{done.stdout}\n{done.stderr}")
        yield lab


@pytest.mark.parametrize("flow", FLOWS, ids=[flow.name for flow in FLOWS])
def test_flow(programmed_lab: Lab, flow: Flow) -> None:
    problems = check_flow(programmed_lab, flow)
    assert not problems, "\n".join(problems)


def test_rules_stay_in_lab_namespaces(programmed_lab: Lab) -> None:
    host_rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "KPROXY" not in host_rules
