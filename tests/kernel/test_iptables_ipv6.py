"""iptables mode over IPv6, packet by packet: a dual-stack lab (every node, pod and the
outside client has an IPv4 and an IPv6 address) programmed once by kproxy from a file, with
dual-stack Services (a cluster IP of each family, an EndpointSlice of each address type) and
an IPv6-only one. Rows probe over IPv6 (and the same services over IPv4) from pods, nodes and
the outside client: which endpoint answered and which source it saw, or refused / dropped.

Parametrized over the three backends (nft, legacy, libiptc); a backend that cannot program
IPv6 here is skipped with the reason.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flows import REFUSED, TIMEOUT, Flow, check_flow, host_named

from kproxy.devcluster.lab import Lab

pytestmark = pytest.mark.kernel

CLUSTER_CIDRS = "10.244.0.0/16,fd00:10:244::/48"
WEB_PORT = 8080
BACKENDS = ["nft", "legacy", "libiptc"]
V6_SAVE = {"nft": "ip6tables-nft-save", "legacy": "ip6tables-legacy-save",
           "libiptc": "ip6tables-legacy-save"}

# Cluster IPs: (IPv4, IPv6) per dual-stack service, one IPv6 address for the IPv6-only one.
WEB_IPS = ("10.96.0.10", "fd00:10:96::10")
EMPTY_IPS = ("10.96.0.20", "fd00:10:96::20")
NODEPORT_IPS = ("10.96.0.30", "fd00:10:96::30")
LOCAL_IPS = ("10.96.0.31", "fd00:10:96::31")
ON_NODE1_IPS = ("10.96.0.40", "fd00:10:96::40")
HALF_IPS = ("10.96.0.50", "fd00:10:96::50")
V6_ONLY_IP = "fd00:10:96::60"
NODE_PORT = 30080
# Longer than TCP's first SYN retransmission (1 s): see the "no endpoints over ipv6" rows.
SYN_RETRANSMIT_WAIT = 1.6
NO_ICMP_RATE_LIMIT = {"net.ipv4.icmp_ratelimit": 0, "net.ipv6.icmp.ratelimit": 0}
LOCAL_NODE_PORT = 30081

Address = Callable[[Lab], str]
Sources = Callable[[Lab], frozenset[str]]


# --- cluster objects -------------------------------------------------------------------------


def service(name: str, cluster_ips: tuple[str, ...], *, node_port: int | None = None,
            **spec: Any) -> dict[str, Any]:
    families = ["IPv6" if ":" in ip else "IPv4" for ip in cluster_ips]
    ports: list[dict[str, Any]] = [
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": WEB_PORT},
        {"name": "dns", "port": 80, "protocol": "UDP", "targetPort": WEB_PORT},
    ]
    if node_port is not None:
        ports = [{**ports[0], "nodePort": node_port}]
        spec = {"type": "NodePort", **spec}
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "ports": ports, "clusterIP": cluster_ips[0], "clusterIPs": list(cluster_ips),
            "ipFamilies": families,
            "ipFamilyPolicy": "RequireDualStack" if len(families) == 2 else "SingleStack",
            **spec,
        },
    }


def endpoint_slice(service_name: str, lab: Lab, pods: list[str], *, ipv6: bool
                   ) -> dict[str, Any]:
    family = "IPv6" if ipv6 else "IPv4"
    endpoints = []
    for name in pods:
        pod = lab.pod(name)
        address = pod.ip6 if ipv6 else pod.ip
        assert address is not None, f"{name} has no IPv6 address (lab built without ipv6?)"
        endpoints.append({"addresses": [address], "nodeName": pod.node.name,
                          "conditions": {"ready": True}})
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service_name}-{family.lower()}", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": family,
        "ports": [{"name": "http", "port": WEB_PORT, "protocol": "TCP"},
                  {"name": "dns", "port": WEB_PORT, "protocol": "UDP"}],
        "endpoints": endpoints,
    }


def dual_stack_slices(service_name: str, lab: Lab, pods: list[str]) -> list[dict[str, Any]]:
    return [endpoint_slice(service_name, lab, pods, ipv6=False),
            endpoint_slice(service_name, lab, pods, ipv6=True)]


def cluster_objects(lab: Lab) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for node in lab.nodes:
        assert node.ip6 is not None and node.pod_cidr6 is not None
        objects.append({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name},
            "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr, node.pod_cidr6]},
            "status": {"addresses": [{"type": "InternalIP", "address": node.ip},
                                     {"type": "InternalIP", "address": node.ip6}]},
        })
    both_webs = ["web-1", "web-2"]
    objects += [
        service("web", WEB_IPS), *dual_stack_slices("web", lab, both_webs),
        service("empty", EMPTY_IPS),
        service("np", NODEPORT_IPS, node_port=NODE_PORT), *dual_stack_slices("np", lab, both_webs),
        service("local", LOCAL_IPS, node_port=LOCAL_NODE_PORT, externalTrafficPolicy="Local"),
        *dual_stack_slices("local", lab, ["web-2"]),
        service("on-node1", ON_NODE1_IPS), *dual_stack_slices("on-node1", lab, ["web-1"]),
        # Dual-stack, but only the IPv6 slice exists (e.g. the IPv4 one not written yet).
        service("half", HALF_IPS), endpoint_slice("half", lab, both_webs, ipv6=True),
        service("v6-only", (V6_ONLY_IP,)), endpoint_slice("v6-only", lab, both_webs, ipv6=True),
    ]
    return objects


# --- addresses -------------------------------------------------------------------------------


def node_ip6(index: int) -> Address:
    def address(lab: Lab) -> str:
        found = lab.nodes[index].ip6
        assert found is not None
        return found

    return address


def ipv6_of(*names: str) -> Sources:
    """The IPv6 addresses a host may use as a source: its own, and a node's bridge address
    (what masquerading picks towards a pod on that node)."""

    def addresses(lab: Lab) -> frozenset[str]:
        found: set[str] = set()
        for name in names:
            host = host_named(lab, name)
            if host.ip6 is not None:
                found.add(host.ip6)
            gateway6 = getattr(host, "gateway6", None)
            if gateway6:
                found.add(gateway6)
        return frozenset(found)

    return addresses


def ipv4_of(name: str) -> Sources:
    return lambda lab: frozenset({host_named(lab, name).ip})


def bridge6_of(node: str) -> Sources:
    """Only a node's pod-bridge IPv6 address: the source a masqueraded packet to a pod on
    that node carries (unmasqueraded, it would keep the node's fabric address)."""

    def addresses(lab: Lab) -> frozenset[str]:
        gateway6 = lab.node(node).gateway6
        assert gateway6 is not None
        return frozenset({gateway6})

    return addresses


WEBS = frozenset({"web-1", "web-2"})

FLOWS = [
    Flow("clusterip over ipv6 from a pod spreads, source kept", "client-1", "http", WEB_IPS[1],
         80, WEBS, source_seen=ipv6_of("client-1"), attempts=16, must_spread=True),
    Flow("clusterip over ipv6 from the other node's pod", "client-2", "http", WEB_IPS[1], 80,
         WEBS, source_seen=ipv6_of("client-2")),
    Flow("clusterip over ipv6 from the node is masqueraded", "node1", "http", ON_NODE1_IPS[1],
         80, frozenset({"web-1"}), source_seen=bridge6_of("node1")),
    Flow("clusterip over ipv6 from the node, remote endpoint", "node1", "http", WEB_IPS[1], 80,
         WEBS, source_seen=ipv6_of("node1")),
    Flow("nodeport over ipv6 from outside, masqueraded", "outside", "http", node_ip6(0),
         NODE_PORT, WEBS, source_seen=ipv6_of("node1")),
    Flow("nodeport over ipv6 on the other node", "outside", "http", node_ip6(1), NODE_PORT,
         WEBS, source_seen=ipv6_of("node2")),
    Flow("eTP Local over ipv6 keeps the client source", "outside", "http", node_ip6(1),
         LOCAL_NODE_PORT, frozenset({"web-2"}), source_seen=ipv6_of("outside")),
    Flow("eTP Local over ipv6 without a local endpoint drops", "outside", "tcp", node_ip6(0),
         LOCAL_NODE_PORT, outcome=TIMEOUT, attempts=1),
    # The ICMPv6 error for the first SYN comes back while connect() still holds the socket,
    # and the kernel keeps it as a soft error; the one for the retransmitted SYN (after 1 s)
    # fails the connection. So this row waits past the first retransmission.
    Flow("no endpoints over ipv6: refused", "client-1", "tcp", EMPTY_IPS[1], 80,
         outcome=REFUSED, attempts=1, timeout=SYN_RETRANSMIT_WAIT),
    Flow("no endpoints over ipv6, udp: refused", "client-1", "udp", EMPTY_IPS[1], 80,
         outcome=REFUSED, attempts=3),
    Flow("udp clusterip over ipv6", "client-1", "udp", WEB_IPS[1], 80, WEBS,
         source_seen=ipv6_of("client-1")),
    Flow("wrong port on an ipv6 cluster IP is not forwarded", "client-1", "tcp", WEB_IPS[1], 81,
         outcome=TIMEOUT, attempts=1),
    Flow("dual-stack service over ipv4", "client-1", "http", WEB_IPS[0], 80, WEBS,
         source_seen=ipv4_of("client-1"), attempts=16, must_spread=True),
    Flow("dual-stack nodeport over ipv4", "outside", "http", lambda lab: lab.nodes[0].ip,
         NODE_PORT, WEBS, source_seen=lambda lab: frozenset({lab.nodes[0].ip,
                                                           lab.nodes[0].gateway})),
    Flow("dual-stack service with only an ipv6 slice: ipv6 answers", "client-1", "http",
         HALF_IPS[1], 80, WEBS, source_seen=ipv6_of("client-1")),
    Flow("dual-stack service with only an ipv6 slice: ipv4 refused", "client-1", "tcp",
         HALF_IPS[0], 80, outcome=REFUSED, attempts=3),
    Flow("ipv6-only service", "client-2", "http", V6_ONLY_IP, 80, WEBS,
         source_seen=ipv6_of("client-2"), attempts=16, must_spread=True),
]


# --- the lab ---------------------------------------------------------------------------------


def run_kproxy_once(lab: Lab, objects: Path, backend: str) -> None:
    for node in lab.nodes:
        done = node.ns.run_python(
            "kproxy.cli", "run", "--proxy-mode=iptables", f"--from-file={objects}", "--once",
            f"--hostname-override={node.name}", f"--cluster-cidr={CLUSTER_CIDRS}",
            f"--iptables-backend={backend}", "--v=2", check=False, timeout=60,
        )
        if done.returncode != 0:
            pytest.fail(f"kproxy --once failed on {node.name} ({backend}):\n"
                        f"{done.stdout}\n{done.stderr}")


def ipv6_programming_problem(lab: Lab, backend: str) -> str | None:
    """Why kproxy wrote no IPv6 rules on node1 with this backend, or None if it did."""
    saved = lab.nodes[0].ns.run([V6_SAVE[backend], "-t", "nat"], check=False)
    if "KPROXY-SERVICES" in saved.stdout:
        return None
    return (f"{backend}: no IPv6 KPROXY-SERVICES chain after kproxy ran "
            f"({V6_SAVE[backend]} -t nat: {saved.returncode}, {saved.stderr.strip()!r})")


@pytest.fixture(scope="module", params=BACKENDS)
def dual_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Lab]:
    backend: str = request.param
    workdir: Path = tmp_path_factory.mktemp(f"ipv6-{backend}")
    with Lab(nodes=2, outside=True, ipv6=True) as lab:
        for node in lab.nodes:
            # After a burst of six, one ICMP error per second and destination: the refused
            # rows would see timeouts depending on what ran before them.
            node.ns.sysctls(NO_ICMP_RATE_LIMIT)
            lab.add_pod(node, f"web-{node.index}")
            lab.add_pod(node, f"client-{node.index}")
        lab.start_servers([lab.pod("web-1"), lab.pod("web-2")], tcp=(WEB_PORT,),
                          udp=(WEB_PORT,))
        objects = workdir / "objects.json"
        objects.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                       "items": cluster_objects(lab)}))
        run_kproxy_once(lab, objects, backend)
        problem = ipv6_programming_problem(lab, backend)
        if problem is not None:
            pytest.fail(problem)
        yield lab


@pytest.mark.parametrize("flow", FLOWS, ids=[flow.name for flow in FLOWS])
def test_flow(dual_stack: Lab, flow: Flow) -> None:
    problems = check_flow(dual_stack, flow)
    assert not problems, "\n".join(problems)


def test_both_families_reach_the_same_endpoints(dual_stack: Lab) -> None:
    """One dual-stack service, one client: each family's cluster IP leads to every endpoint,
    and each endpoint sees the client's own address of that family."""
    client = dual_stack.pod("client-2")
    answered: dict[str, set[str]] = {}
    for cluster_ip, own_address in zip(WEB_IPS, (client.ip, client.ip6), strict=True):
        results = client.probe("http", cluster_ip, 80, count=16, timeout=0.7)
        failed = [result.error for result in results if not result.ok]
        assert not failed, f"{cluster_ip}: {failed}"
        assert {result.client_ip for result in results} == {own_address}
        answered[cluster_ip] = {str(result.pod) for result in results}
    assert answered[WEB_IPS[0]] == answered[WEB_IPS[1]] == set(WEBS)


def test_rules_stay_in_lab_namespaces(dual_stack: Lab) -> None:
    for save in ("iptables-save", "ip6tables-save"):
        host_rules = subprocess.run([save], capture_output=True, text=True).stdout
        assert "KPROXY" not in host_rules, save
