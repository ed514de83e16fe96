"""iptables mode long-running, against the dev API server: kproxy runs in both node namespaces
of a lab (``kproxy run --kubeconfig ...``), the test changes Services and EndpointSlices
through the API, and real packets show that the rules follow: endpoints come and go, services
are deleted and added, kproxy restarts under traffic, someone flushes its chains, a UDP
backend is replaced under a client, and ``kproxy cleanup`` leaves the node as it found it.

Parametrized over the nft and legacy backends; each builds its own lab once.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flows import REFUSED, Flow, check_flow
from kproxy_nodes import (
    HeldConnection,
    KproxyOnNode,
    comparable_save,
    eventually,
)

from kproxy.devcluster.client import ApiObject, DevApiClient
from kproxy.devcluster.cluster import DevApiProcess, node_object, node_status
from kproxy.devcluster.lab import Lab, LabHost
from kproxy.devcluster.probe import ProbeResult
from kproxy.iptables.staticchains import CANARY

pytestmark = pytest.mark.kernel

# The long-running behaviour (restarts, flushes, cleanup) is the proxier's, the same on every
# backend: it runs on nft and legacy. libiptc passes it too (about a minute more of CI);
# its rules are checked packet by packet by the flow, IPv6 and variant suites.
BACKENDS = ["nft", "legacy"]
IPTABLES = {"nft": "iptables-nft", "legacy": "iptables-legacy", "libiptc": "iptables-legacy"}
CLUSTER_CIDR = "10.244.0.0/16"
WEB_PORT = 8080
# Short, so that the canary (checked every min(sync period, 60 s)) is looked at often.
SYNC_PERIOD = "2s"
# Bounds on kproxy reacting to a change or a flush; never performance expectations.
CHANGE_LIMIT = 15.0
RESTORE_LIMIT = 20.0
UDP_SOURCE_PORT = 40053
GONE = ("timeout", "unreachable")  # nothing forwards, nothing rejects
NO_ICMP_RATE_LIMIT = {"net.ipv4.icmp_ratelimit": 0, "net.ipv6.icmp.ratelimit": 0}

WEBS = frozenset({"web-1", "web-2"})


# --- API objects -----------------------------------------------------------------------------


def service(name: str, protocol: str = "TCP", port: int = 80) -> ApiObject:
    port_name = "http" if protocol == "TCP" else "dns"
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": port_name, "port": port, "protocol": protocol,
                            "targetPort": WEB_PORT}]},
    }


def endpoint_slice(lab: Lab, service_name: str, pods: list[str], protocol: str = "TCP"
                   ) -> ApiObject:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service_name}-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [{"name": "http" if protocol == "TCP" else "dns", "port": WEB_PORT,
                   "protocol": protocol}],
        "endpoints": [{"addresses": [lab.pod(pod).ip], "nodeName": lab.pod(pod).node.name,
                       "conditions": {"ready": True}} for pod in pods],
    }


class Api:
    """Blocking calls to the dev API server over its Unix socket, one session per call: the
    tests run probes and processes in between, with no event loop to keep alive."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = str(socket_path)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> ApiObject:
        async def call() -> ApiObject:
            async with DevApiClient(unix_path=self.socket_path) as client:
                result: ApiObject = await getattr(client, method)(*args, **kwargs)
                return result

        return asyncio.run(call())

    def apply(self, obj: ApiObject) -> ApiObject:
        return self._call("apply", obj)

    def delete(self, api_version: str, kind: str, name: str) -> ApiObject:
        return self._call("delete", api_version, kind, name)

    def patch_status(self, kind: str, name: str, patch: ApiObject) -> ApiObject:
        return self._call("merge_patch", "v1", kind, name, patch, None, status=True)

    def create_service(self, obj: ApiObject) -> str:
        """Create (or replace) a Service; returns its allocated cluster IP."""
        created = self.apply(obj)
        cluster_ip = created["spec"].get("clusterIP")
        assert cluster_ip, f"no cluster IP allocated: {created}"
        return str(cluster_ip)


# --- the running cluster ---------------------------------------------------------------------


@dataclass
class Cluster:
    lab: Lab
    api: Api
    backend: str
    kproxies: list[KproxyOnNode]
    saves_before_kproxy: list[dict[str, str]]  # per node: save program -> output

    def iptables(self, node_index: int, *args: str) -> subprocess.CompletedProcess[str]:
        return self.lab.nodes[node_index].ns.run([IPTABLES[self.backend], *args], check=False)

    def save(self, node_index: int, program: str) -> str:
        return saved_rules(self.lab.nodes[node_index], self.backend, program)

    def diagnostics(self) -> str:
        return "\n".join(f"--- kproxy on {kproxy.node.name}:\n{kproxy.tail()}"
                         for kproxy in self.kproxies)


SAVE_PROGRAMS = ("iptables", "ip6tables")


def saved_rules(node: LabHost, backend: str, program: str) -> str:
    """``iptables-save`` (``program`` = iptables / ip6tables) of the backend's variant."""
    variant = "nft" if backend == "nft" else "legacy"
    return node.ns.run([f"{program}-{variant}-save"], check=False).stdout


def kproxy_args(devapi: DevApiProcess, node: LabHost, backend: str) -> list[str]:
    return [
        "--proxy-mode=iptables", f"--kubeconfig={devapi.kubeconfig}",
        f"--hostname-override={node.name}", f"--cluster-cidr={CLUSTER_CIDR}",
        "--iptables-min-sync-period=0s", f"--iptables-sync-period={SYNC_PERIOD}",
        f"--iptables-backend={backend}", "--v=2",
    ]


def add_foreign_rules(lab: Lab, backend: str) -> None:
    """Rules someone else owns, in every node: a cleanup must leave them alone."""
    for node in lab.nodes:
        for args in (("-t", "nat", "-N", "FOREIGN-NAT"),
                     ("-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-j",
                      "FOREIGN-NAT"),
                     ("-t", "filter", "-A", "FORWARD", "-s", "198.51.100.0/24", "-j",
                      "ACCEPT")):
            node.ns.run([IPTABLES[backend], "-w", "5", *args])


def start_control_plane(lab: Lab, workdir: Path) -> tuple[DevApiProcess, Api]:
    """The dev API server on the lab's control plane with the nodes registered; on each node
    a web pod (serving TCP and UDP on WEB_PORT) and a client pod."""
    assert lab.control_plane is not None
    devapi = DevApiProcess(lab.control_plane, workdir)
    devapi.start()
    api = Api(devapi.socket)
    for node in lab.nodes:
        # The kernel sends one ICMP error per second and destination after a burst of
        # six; polling a REJECTed service would see timeouts instead of refusals.
        node.ns.sysctls(NO_ICMP_RATE_LIMIT)
        lab.add_pod(node, f"web-{node.index}")
        lab.add_pod(node, f"client-{node.index}")
        api.apply(node_object(node))
        api.patch_status("Node", node.name, node_status(node))
    lab.start_servers([lab.pod("web-1"), lab.pod("web-2")], tcp=(WEB_PORT,), udp=(WEB_PORT,))
    return devapi, api


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    backend: str = request.param
    workdir: Path = tmp_path_factory.mktemp(f"dynamic-{backend}")
    with Lab(nodes=2, outside=True, control_plane=True) as lab:
        devapi, api = start_control_plane(lab, workdir)
        add_foreign_rules(lab, backend)
        saves = [{program: saved_rules(node, backend, program) for program in SAVE_PROGRAMS}
                 for node in lab.nodes]
        kproxies = [KproxyOnNode(node, kproxy_args(devapi, node, backend),
                                 workdir / f"kproxy-{node.name}.log") for node in lab.nodes]
        built = Cluster(lab, api, backend, kproxies, saves)
        try:
            for kproxy in kproxies:
                kproxy.start()
            for kproxy in kproxies:
                kproxy.wait_synced()
            yield built
        finally:
            for kproxy in kproxies:
                if kproxy.proc is not None:
                    kproxy.stop()
            devapi.stop()


# --- checks ----------------------------------------------------------------------------------


def reaches(cluster: Cluster, flow: Flow, what: str) -> None:
    """The flow settles to its expected outcome, and then holds for a fresh round."""
    eventually(lambda: check_flow(cluster.lab, flow), f"{what} ({flow.name})", CHANGE_LIMIT)
    problems = check_flow(cluster.lab, flow)
    assert not problems, "\n".join(problems) + "\n" + cluster.diagnostics()


def answered_by(cluster: Cluster, client: str, address: str, pods: frozenset[str],
                *, proto: str = "http", port: int = 80) -> None:
    reaches(cluster, Flow(f"{client} -> {sorted(pods)}", client, proto, address, port, pods,
                          attempts=16 if len(pods) > 1 else 4, must_spread=True),
            f"{address} answered by {sorted(pods)}")


def refused(cluster: Cluster, client: str, address: str) -> None:
    reaches(cluster, Flow(f"{client} refused", client, "tcp", address, 80, outcome=REFUSED,
                          attempts=3), f"{address} refused")


def gone_problems(cluster: Cluster, client: str, address: str) -> list[str]:
    results = cluster.lab.pod(client).probe("tcp", address, 80, count=2, timeout=0.7)
    return [f"{client} -> {address}:80: expected no answer and no rejection, got "
            f"{result.pod if result.ok else result.error}"
            for result in results if result.ok or result.error not in GONE]


def service_chains(save_text: str, service_name: str) -> set[str]:
    """The KPROXY-SVC/SEP/EXT chains whose rules carry ``default/<service>:`` comments."""
    marker = f'"default/{service_name}:'
    chains: set[str] = set()
    for line in save_text.splitlines():
        if line.startswith("-A ") and marker in line:
            chains.update(word for word in line.split()
                          if word.startswith(("KPROXY-SVC-", "KPROXY-SEP-", "KPROXY-EXT-")))
    return chains


# --- tests -----------------------------------------------------------------------------------


def test_endpoints_come_and_go(cluster: Cluster) -> None:
    api, lab = cluster.api, cluster.lab
    address = api.create_service(service("scale"))
    refused(cluster, "client-1", address)
    for pods in (["web-1"], ["web-1", "web-2"], ["web-2"]):
        api.apply(endpoint_slice(lab, "scale", pods))
        for client in ("client-1", "client-2"):
            answered_by(cluster, client, address, frozenset(pods))
    api.apply(endpoint_slice(lab, "scale", []))
    for client in ("client-1", "client-2"):
        refused(cluster, client, address)


def test_deleted_service_stops_answering_and_its_chains_go(cluster: Cluster) -> None:
    api, lab = cluster.api, cluster.lab
    address = api.create_service(service("doomed"))
    api.apply(endpoint_slice(lab, "doomed", ["web-1", "web-2"]))
    answered_by(cluster, "client-1", address, WEBS)
    chains = [service_chains(cluster.save(index, "iptables"), "doomed") for index in (0, 1)]
    assert all(chains), f"no chains found for default/doomed: {chains}"

    api.delete("discovery.k8s.io/v1", "EndpointSlice", "doomed-1")
    api.delete("v1", "Service", "doomed")
    eventually(lambda: gone_problems(cluster, "client-1", address), "deleted service silent",
               CHANGE_LIMIT)
    for index, node_chains in enumerate(chains):
        def leftovers(index: int = index, node_chains: set[str] = node_chains) -> list[str]:
            text = cluster.save(index, "iptables")
            return [f"node{index + 1} still has {chain}" for chain in sorted(node_chains)
                    if chain in text] + (
                [f"node{index + 1} still mentions default/doomed"]
                if '"default/doomed:' in text else [])

        eventually(leftovers, "the deleted service's chains removed", CHANGE_LIMIT)
    assert not gone_problems(cluster, "client-2", address)


def test_new_service_while_others_keep_working(cluster: Cluster) -> None:
    api, lab = cluster.api, cluster.lab
    steady = api.create_service(service("steady"))
    api.apply(endpoint_slice(lab, "steady", ["web-1", "web-2"]))
    answered_by(cluster, "client-1", steady, WEBS)

    added = api.create_service(service("added"))
    api.apply(endpoint_slice(lab, "added", ["web-2"]))
    # While the new service is being programmed, the existing one must keep answering.
    steady_flow = Flow("steady during the change", "client-1", "http", steady, 80, WEBS,
                       attempts=4)
    added_flow = Flow("added", "client-1", "http", added, 80, frozenset({"web-2"}),
                      attempts=4)
    steady_problems: list[str] = []

    def added_answers() -> list[str]:
        steady_problems.extend(check_flow(lab, steady_flow))
        return check_flow(lab, added_flow)

    eventually(added_answers, "the added service answers", CHANGE_LIMIT)
    assert not steady_problems, "\n".join(steady_problems)
    answered_by(cluster, "client-2", added, frozenset({"web-2"}))
    answered_by(cluster, "client-2", steady, WEBS)


class Prober:
    """Probes a service over new connections from a pod, round after round, in a thread."""

    def __init__(self, host: LabHost, address: str) -> None:
        self.host = host
        self.address = address
        self.results: list[ProbeResult] = []
        self._stop = threading.Event()
        self._rounds = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results += self.host.probe("tcp", self.address, 80, count=4, timeout=0.7)
            self._rounds.release()

    def wait_rounds(self, rounds: int) -> None:
        for _ in range(rounds):
            assert self._rounds.acquire(timeout=30), "the prober is stuck"

    def stop(self) -> list[ProbeResult]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.results


def test_restart_keeps_new_and_established_connections(cluster: Cluster) -> None:
    api, lab = cluster.api, cluster.lab
    address = api.create_service(service("restarted"))
    api.apply(endpoint_slice(lab, "restarted", ["web-1", "web-2"]))
    answered_by(cluster, "client-1", address, WEBS)
    kproxy = cluster.kproxies[0]  # node1: where client-1's packets are translated

    held = HeldConnection(lab.pod("client-1"), address, 80)
    down: list[ProbeResult] = []
    try:
        before = held.send("before the restart")
        assert before.get("pod") in WEBS, before
        prober = Prober(lab.pod("client-1"), address)
        try:
            prober.wait_rounds(2)
            kproxy.stop()
            # With kproxy gone, its rules keep working.
            down = lab.pod("client-1").probe("tcp", address, 80, count=4, timeout=0.7)
            assert held.send("while kproxy is down").get("pod") == before["pod"]
            kproxy.start()
            kproxy.wait_synced()
            prober.wait_rounds(2)
        finally:
            results = prober.stop() + down
        failures = [f"{result.error} ({result.detail})" for result in results if not result.ok]
        assert not failures, (f"{len(failures)} of {len(results)} new connections failed "
                              f"across the restart: {failures[:5]}\n{cluster.diagnostics()}")
        assert {result.pod for result in results} <= WEBS
        after = held.send("after the restart")
        assert after.get("pod") == before["pod"], after
        assert after.get("client") == before.get("client"), after
    finally:
        held.close()
    kproxy.assert_running()


def test_flushed_chains_and_canary_are_restored(cluster: Cluster) -> None:
    api, lab = cluster.api, cluster.lab
    address = api.create_service(service("flushed"))
    api.apply(endpoint_slice(lab, "flushed", ["web-1", "web-2"]))
    answered_by(cluster, "client-1", address, WEBS)

    # As a firewall reload would: kproxy's canary and its service dispatch chain emptied.
    for args in (("-t", "mangle", "-F", CANARY), ("-t", "mangle", "-X", CANARY),
                 ("-t", "nat", "-F", "KPROXY-SERVICES")):
        done = cluster.iptables(0, "-w", "5", *args)
        assert done.returncode == 0, f"iptables {' '.join(args)}: {done.stderr}"

    def restored() -> list[str]:
        problems = []
        if cluster.iptables(0, "-w", "5", "-t", "mangle", "-S", CANARY).returncode != 0:
            problems.append(f"no {CANARY} in mangle")
        if f"-d {address}/32" not in cluster.iptables(0, "-w", "5", "-t", "nat", "-S",
                                                      "KPROXY-SERVICES").stdout:
            problems.append(f"KPROXY-SERVICES has no rule for {address}")
        return problems

    eventually(restored, "kproxy restores its chains", RESTORE_LIMIT)
    answered_by(cluster, "client-1", address, WEBS)
    cluster.kproxies[0].assert_running()


def test_replaced_udp_backend_reached_from_the_same_source_port(cluster: Cluster) -> None:
    api, lab = cluster.api, cluster.lab
    address = api.create_service(service("resolver", "UDP", 53))
    api.apply(endpoint_slice(lab, "resolver", ["web-1"], "UDP"))
    client = lab.pod("client-1")

    def answers_from(pod: str) -> list[str]:
        results = client.probe("udp", address, 53, timeout=0.7, source_port=UDP_SOURCE_PORT)
        return [f"udp from :{UDP_SOURCE_PORT} answered by "
                f"{result.pod if result.ok else result.error}, expected {pod}"
                for result in results if not result.ok or result.pod != pod]

    eventually(lambda: answers_from("web-1"), "udp answered by web-1", CHANGE_LIMIT)
    # The flow from that source port now exists in conntrack, DNATed to web-1.
    api.apply(endpoint_slice(lab, "resolver", ["web-2"], "UDP"))
    # web-1 still runs: only deleting the stale flow moves the client to web-2.
    eventually(lambda: answers_from("web-2"), "udp moved to web-2", CHANGE_LIMIT)
    assert not answers_from("web-2")


def test_cleanup_leaves_the_node_as_it_was(cluster: Cluster) -> None:
    node_index = 1
    kproxy = cluster.kproxies[node_index]
    node = cluster.lab.nodes[node_index]
    kproxy.stop()
    try:
        for attempt in (1, 2):  # the second run finds nothing to do
            done = node.ns.run_python("kproxy.cli", "cleanup",
                                      f"--iptables-backend={cluster.backend}", check=False,
                                      timeout=60)
            assert done.returncode == 0, f"cleanup #{attempt}: {done.stderr}"
            for program in SAVE_PROGRAMS:
                before = comparable_save(cluster.saves_before_kproxy[node_index][program])
                after = comparable_save(cluster.save(node_index, program))
                assert after == before, (
                    f"{program} after cleanup #{attempt} differs from before kproxy ran:\n"
                    f"before: {json.dumps(before, indent=1)}\nafter: {json.dumps(after, indent=1)}"
                )
    finally:
        kproxy.start()
        kproxy.wait_synced()
    assert "KPROXY-SERVICES" in cluster.save(node_index, "iptables")


def test_rules_stay_in_lab_namespaces(cluster: Cluster) -> None:
    for program in ("iptables-save", "ip6tables-save"):
        host_rules = subprocess.run([program], capture_output=True, text=True).stdout
        assert "KPROXY" not in host_rules, program

