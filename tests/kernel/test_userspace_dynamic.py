"""userspace mode long-running, against the dev API server: ``kproxy run
--proxy-mode=userspace`` on node1 of a lab; the test changes Services and EndpointSlices
through the API and checks, with real connections and ``ss`` in the node's namespace, that
listeners and portal rules follow: ports added, changed and removed, services deleted (the
port is released), endpoints removed (established connections closed after the grace),
refusal without endpoints, ClientIP affinity, UDP through the portals. Node2 switches modes
iptables -> userspace -> iptables, and no rule of the other mode may survive a switch.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flows import REFUSED, TIMEOUT, Flow, addresses_of, check_flow
from kproxy_nodes import HeldConnection, KproxyOnNode, eventually
from test_iptables_dynamic import (
    CLUSTER_CIDR,
    WEB_PORT,
    Api,
    endpoint_slice,
    service,
    start_control_plane,
)

from kproxy.devcluster.cluster import DevApiProcess
from kproxy.devcluster.lab import Lab, LabHost
from kproxy.iptables.staticchains import SERVICES
from kproxy.userspace.chains import USERSPACE_CHAINS

pytestmark = pytest.mark.kernel

# Bounds on kproxy reacting to a change; never performance expectations.
CHANGE_LIMIT = 15.0
ENDPOINT_GRACE = "1s"
PORT_RANGE = (36000, 36099)
WEBS = frozenset({"web-1", "web-2"})
_REDIRECT = re.compile(r'--comment "default/(?P<service>[^:"]+):(?P<port>[^ "]+) cluster IP"'
                       r".* --to-ports (?P<to>\d+)")


def kproxy_args(devapi: DevApiProcess, node: LabHost, mode: str) -> list[str]:
    return [
        f"--proxy-mode={mode}", f"--kubeconfig={devapi.kubeconfig}",
        f"--hostname-override={node.name}", f"--cluster-cidr={CLUSTER_CIDR}",
        "--iptables-min-sync-period=0s", "--iptables-sync-period=5s",
        "--iptables-backend=nft", f"--userspace-endpoint-grace={ENDPOINT_GRACE}",
        "--userspace-drain-grace=1s", f"--proxy-port-range={PORT_RANGE[0]}-{PORT_RANGE[1]}",
        "--v=2",
    ]


@dataclass
class Cluster:
    lab: Lab
    api: Api
    devapi: DevApiProcess
    workdir: Path
    kproxy: KproxyOnNode  # userspace mode on node1

    def save(self, node_index: int, table: str = "") -> str:
        args = ["-t", table] if table else []
        node = self.lab.nodes[node_index]
        return "".join(node.ns.run([program, *args], check=False).stdout
                       for program in ("iptables-nft-save", "ip6tables-nft-save"))

    def listening(self, node_index: int, port: int, proto: str = "tcp") -> bool:
        """Whether anything listens on (TCP) or is bound to (UDP) ``port`` in the node."""
        flag = "-t" if proto == "tcp" else "-u"
        done = self.lab.nodes[node_index].ns.run(["ss", "-Hln", flag], check=False)
        return any(line.split()[3].rsplit(":", 1)[1] == str(port)
                   for line in done.stdout.splitlines() if len(line.split()) > 3)

    def portal_ports(self, service_name: str) -> dict[str, int]:
        """Service port name -> the listener port its cluster IP is redirected to (node1)."""
        ports: dict[str, int] = {}
        for line in self.save(0, "nat").splitlines():
            found = _REDIRECT.search(line)
            if found and found["service"] == service_name:
                ports[found["port"]] = int(found["to"])
        return ports

    def diagnostics(self) -> str:
        return f"--- kproxy on node1:\n{self.kproxy.tail()}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir: Path = tmp_path_factory.mktemp("userspace-dynamic")
    with Lab(nodes=2, outside=True, control_plane=True) as lab:
        devapi, api = start_control_plane(lab, workdir)
        node1 = lab.nodes[0]
        kproxy = KproxyOnNode(node1, kproxy_args(devapi, node1, "userspace"),
                              workdir / "kproxy-node1.log")
        try:
            kproxy.start()
            kproxy.wait_synced()
            yield Cluster(lab, api, devapi, workdir, kproxy)
            kproxy.assert_running()
        finally:
            if kproxy.proc is not None:
                kproxy.stop()
            devapi.stop()


def reaches(cluster: Cluster, flow: Flow, what: str) -> None:
    """The flow settles to its expected outcome, and then holds for a fresh round."""
    eventually(lambda: check_flow(cluster.lab, flow), f"{what} ({flow.name})", CHANGE_LIMIT)
    problems = check_flow(cluster.lab, flow)
    assert not problems, "\n".join(problems) + "\n" + cluster.diagnostics()


def answered(cluster: Cluster, source: str, address: str, pods: frozenset[str], *,
             proto: str = "http", port: int = 80, **options: Any) -> None:
    reaches(cluster, Flow(f"{source} -> {address}:{port}", source, proto, address, port, pods,
                          attempts=12 if len(pods) > 1 else 3, must_spread=len(pods) > 1,
                          **options), f"{address}:{port} answered by {sorted(pods)}")


def refused(cluster: Cluster, source: str, address: str, port: int = 80) -> None:
    reaches(cluster, Flow(f"{source} refused", source, "tcp", address, port, outcome=REFUSED,
                          attempts=3), f"{address}:{port} refused")


def two_port_service(name: str, second_port: int) -> dict[str, Any]:
    obj = service(name)
    obj["spec"]["ports"].append({"name": "alt", "port": second_port, "protocol": "TCP",
                                 "targetPort": WEB_PORT})
    return obj


def two_port_slice(cluster: Cluster, name: str, pods: list[str]) -> dict[str, Any]:
    obj = endpoint_slice(cluster.lab, name, pods)
    obj["ports"].append({"name": "alt", "port": WEB_PORT, "protocol": "TCP"})
    return obj


def test_listeners_follow_services(cluster: Cluster) -> None:
    api = cluster.api
    address = api.create_service(service("follow"))
    api.apply(endpoint_slice(cluster.lab, "follow", ["web-1", "web-2"]))
    answered(cluster, "client-1", address, WEBS, source_seen=addresses_of("node1"))
    first = cluster.portal_ports("follow")
    assert set(first) == {"http"}, first
    assert cluster.listening(0, first["http"])
    assert PORT_RANGE[0] <= first["http"] <= PORT_RANGE[1]  # --proxy-port-range

    # A port added: a listener of its own; the first one keeps its port.
    api.apply(two_port_service("follow", 81))
    api.apply(two_port_slice(cluster, "follow", ["web-1", "web-2"]))
    answered(cluster, "client-1", address, WEBS, port=81)
    ports = cluster.portal_ports("follow")
    assert set(ports) == {"http", "alt"} and ports["http"] == first["http"], ports
    assert cluster.listening(0, ports["alt"])

    # The port's number changed: the new number is forwarded, the old one no longer.
    api.apply(two_port_service("follow", 82))
    answered(cluster, "client-1", address, WEBS, port=82)
    assert not any(" --dport 81 " in line and "default/follow" in line
                   for line in cluster.save(0, "nat").splitlines())

    # Deleted: rules gone, listeners closed, ports released.
    opened = cluster.portal_ports("follow")
    api.delete("v1", "Service", "follow")

    def all_gone() -> list[str]:
        problems = [f"{name}: port {port} still listening" for name, port in opened.items()
                    if cluster.listening(0, port)]
        if "default/follow" in cluster.save(0):
            problems.append("rules of default/follow still in the node")
        return problems

    eventually(all_gone, "service deleted", CHANGE_LIMIT)


def test_refused_without_endpoints_from_pods_and_node(cluster: Cluster) -> None:
    api = cluster.api
    address = api.create_service(service("empty"))
    refused(cluster, "client-1", address)
    refused(cluster, "node1", address)
    api.apply(endpoint_slice(cluster.lab, "empty", ["web-2"]))
    answered(cluster, "client-1", address, frozenset({"web-2"}))
    answered(cluster, "node1", address, frozenset({"web-2"}))
    api.apply(endpoint_slice(cluster.lab, "empty", []))
    refused(cluster, "client-1", address)


def test_endpoint_removed_closes_its_connections_after_the_grace(cluster: Cluster) -> None:
    api, lab = cluster.api, cluster.lab
    address = api.create_service(service("grace"))
    api.apply(endpoint_slice(lab, "grace", ["web-1", "web-2"]))
    answered(cluster, "client-1", address, WEBS)
    held: dict[str, HeldConnection] = {}
    try:
        # Round robin: a few connections reach both endpoints.
        for _ in range(6):
            connection = HeldConnection(lab.pod("client-1"), address, 80)
            pod = str(connection.send("which").get("pod"))
            if pod in held or pod not in WEBS:
                connection.close()
            else:
                held[pod] = connection
        assert set(held) == WEBS, f"connections reached only {sorted(held)}"
        api.apply(endpoint_slice(lab, "grace", ["web-2"]))
        answered(cluster, "client-1", address, frozenset({"web-2"}))

        def removed_one_closed() -> list[str]:
            answer = held["web-1"].send("still there?")
            return [] if "error" in answer else [f"web-1's connection still answers: {answer}"]

        eventually(removed_one_closed, "connection to the removed endpoint closed",
                   CHANGE_LIMIT)
        assert held["web-2"].send("and this one?").get("pod") == "web-2"
    finally:
        for connection in held.values():
            connection.close()


def test_session_affinity_keeps_a_client_on_one_endpoint(cluster: Cluster) -> None:
    api = cluster.api
    sticky = service("sticky")
    sticky["spec"]["sessionAffinity"] = "ClientIP"
    sticky["spec"]["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 600}}
    address = api.create_service(sticky)
    api.apply(endpoint_slice(cluster.lab, "sticky", ["web-1", "web-2"]))
    # Two clients of node1's kproxy: a pod and the node itself.
    for client in ("client-1", "node1"):
        reaches(cluster, Flow(f"{client} sticky", client, "http", address, 80, WEBS,
                              attempts=8, sticky=True), "affinity")


def test_udp_through_the_portals(cluster: Cluster) -> None:
    api, lab = cluster.api, cluster.lab
    dns = service("dns", "UDP", 53)
    dns["spec"]["type"] = "NodePort"
    created = api.apply(dns)
    address = str(created["spec"]["clusterIP"])
    node_port = int(created["spec"]["ports"][0]["nodePort"])
    api.apply(endpoint_slice(lab, "dns", ["web-1", "web-2"], "UDP"))
    answered(cluster, "client-1", address, WEBS, proto="udp", port=53,
             source_seen=addresses_of("node1"))
    answered(cluster, "node1", address, WEBS, proto="udp", port=53)
    answered(cluster, "outside", lab.nodes[0].ip, WEBS, proto="udp", port=node_port,
             source_seen=addresses_of("node1"))


def test_mode_switch_leaves_no_rules_of_the_other_mode(cluster: Cluster) -> None:
    api, lab = cluster.api, cluster.lab
    node2 = lab.nodes[1]
    address = api.create_service(service("switch"))
    api.apply(endpoint_slice(lab, "switch", ["web-1"]))
    client2_only = addresses_of("client-2")
    node2_only = addresses_of("node2")

    def run(mode: str) -> KproxyOnNode:
        kproxy = KproxyOnNode(node2, kproxy_args(cluster.devapi, node2, mode),
                              cluster.workdir / f"kproxy-node2-{mode}.log")
        kproxy.start()
        kproxy.wait_synced()
        return kproxy

    def chains() -> set[str]:
        return set(re.findall(r"^:(KPROXY-\S+)", cluster.save(1), re.MULTILINE))

    iptables = run("iptables")
    answered(cluster, "client-2", address, frozenset({"web-1"}), source_seen=client2_only)
    assert SERVICES in chains()
    iptables.stop()  # iptables mode leaves its rules working when it exits

    userspace = run("userspace")
    answered(cluster, "client-2", address, frozenset({"web-1"}), source_seen=node2_only)
    left = chains()
    assert left == set(USERSPACE_CHAINS), f"after the switch to userspace: {sorted(left)}"
    userspace.stop()  # SIGTERM: drain, then the portals go
    assert chains() == set(), f"after userspace mode's SIGTERM: {sorted(chains())}"

    crashed = run("userspace")
    assert crashed.proc is not None
    crashed.proc.send_signal(signal.SIGKILL)  # no chance to remove its portals
    crashed.stop()
    assert chains() == set(USERSPACE_CHAINS)

    iptables = run("iptables")
    answered(cluster, "client-2", address, frozenset({"web-1"}), source_seen=client2_only)
    left = chains()
    assert not left & USERSPACE_CHAINS, f"after the switch back: {sorted(left)}"
    assert SERVICES in left
    iptables.stop()

    done = node2.ns.run_python("kproxy.cli", "cleanup", "--iptables-backend=nft",
                               check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert chains() == set()


HEALTH_GET = """
import http.client, json, sys
connection = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=2.0)
try:
    connection.request("GET", "/")
    response = connection.getresponse()
    print(json.dumps({"status": response.status, "body": json.loads(response.read())}))
except OSError as error:
    print(json.dumps({"error": str(error)}))
"""


def test_health_check_node_port_and_local_policy(cluster: Cluster) -> None:
    api, lab = cluster.api, cluster.lab
    local = service("lb-local")
    local["spec"].update({"type": "LoadBalancer", "externalTrafficPolicy": "Local"})
    created = api.apply(local)
    health_port = int(created["spec"]["healthCheckNodePort"])
    node_port = int(created["spec"]["ports"][0]["nodePort"])
    assert lab.outside is not None
    outside = lab.outside

    def health(status: int, local_endpoints: int) -> Callable[[], list[str]]:
        def check() -> list[str]:
            done = outside.ns.run([sys.executable, "-c", HEALTH_GET, lab.nodes[0].ip,
                                   str(health_port)], check=False, timeout=20)
            answer = json.loads(done.stdout or '{"error": "no output"}')
            if answer.get("status") == status and (
                    answer["body"]["localEndpoints"] == local_endpoints):
                return []
            return [f"health check of node1 answered {answer}"]
        return check

    api.apply(endpoint_slice(lab, "lb-local", ["web-1"]))
    eventually(health(200, 1), "node1 healthy with its local endpoint", CHANGE_LIMIT)
    answered(cluster, "outside", lab.nodes[0].ip, frozenset({"web-1"}), port=node_port,
             source_seen=addresses_of("node1"))
    api.apply(endpoint_slice(lab, "lb-local", ["web-2"]))
    eventually(health(503, 0), "node1 unhealthy without a local endpoint", CHANGE_LIMIT)
    # Outside traffic has no local endpoint to go to; this node's pods still reach web-2.
    reaches(cluster, Flow("outside dropped", "outside", "tcp", lab.nodes[0].ip, node_port,
                          outcome=TIMEOUT, attempts=1), "eTP Local without local endpoint")
    answered(cluster, "client-1", lab.nodes[0].ip, frozenset({"web-2"}), port=node_port)


UDP_SOURCE_PORT = 40054


def test_udp_flow_follows_a_new_listener(cluster: Cluster) -> None:
    """A UDP client that keeps its source port (and so its conntrack flow) reaches the
    service again after its endpoints went away and came back on a new listener."""
    api, lab = cluster.api, cluster.lab
    address = str(api.apply(service("resolver", "UDP", 53))["spec"]["clusterIP"])
    client = lab.pod("client-1")

    def answers(expected: str | None) -> Callable[[], list[str]]:
        def check() -> list[str]:
            results = client.probe("udp", address, 53, count=2, timeout=0.7,
                                   source_port=UDP_SOURCE_PORT)
            wanted = expected or REFUSED
            return [f"udp from :{UDP_SOURCE_PORT}: got "
                    f"{result.pod if result.ok else result.error}, expected {wanted}"
                    for result in results
                    if (result.pod if result.ok else result.error) != wanted]
        return check

    api.apply(endpoint_slice(lab, "resolver", ["web-1"], "UDP"))
    eventually(answers("web-1"), "udp answered by web-1", CHANGE_LIMIT)
    first = cluster.portal_ports("resolver")
    api.apply(endpoint_slice(lab, "resolver", [], "UDP"))
    eventually(answers(None), "udp refused without endpoints", CHANGE_LIMIT)
    api.apply(endpoint_slice(lab, "resolver", ["web-2"], "UDP"))
    eventually(answers("web-2"), "udp answered by web-2, same source port", CHANGE_LIMIT)
    assert cluster.portal_ports("resolver") != first  # a new listener, on a new port
    assert not answers("web-2")()
