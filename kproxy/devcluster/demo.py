"""``kproxy demo``: a 2-node cluster in network namespaces, a web service through kproxy, and a
rolling update under load with not one request failing — in one proxy mode, then the other.

Per mode (``--proxy-mode`` first, default iptables): it builds the dev cluster (two nodes on a
VXLAN overlay, a control plane running the dev API server, an outside client), starts
``kproxy run`` on every node, deploys three web pods over both nodes behind a NodePort
Service (with its ClusterIP), and narrates with numbers: requests from a pod on node1 spread
over all three pods through the ClusterIP; the NodePort reached from outside through both
nodes; a rolling update v1 -> v2 under continuous load with the count of failed requests.
After each step it shows, per node, what kproxy has installed (its chains, or its listeners
and portal rules). Every step is checked: the exit code is 0 only if all of them worked.
Everything is torn down at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from kproxy.devcluster.cluster import (
    PROXY_MODES,
    DevCluster,
    kproxy_run_args,
)
from kproxy.devcluster.lab import VXLAN_DEVICE, VXLAN_ID, VXLAN_PORT, Node, Pod
from kproxy.devcluster.loadgen import LoadGenerator
from kproxy.devcluster.netns import Popen
from kproxy.devcluster.nodestate import node_summary
from kproxy.devcluster.probe import ProbeResult
from kproxy.devcluster.workload import HTTP_PORT, Workload

SERVICE = "web"
REPLICAS = 3
SPREAD_REQUESTS = 30
NODE_PORT_REQUESTS = 10
LOAD_RATE = 100.0
LOAD_LIMIT = 40.0  # the load runs until the update is done; this only bounds it
GRACE = 2.0  # a terminating pod keeps serving this long (kproxy's min sync period is 1 s)
# Bounds on kproxy starting and following a change; never performance expectations.
START_LIMIT = 30.0
CHANGE_LIMIT = 15.0
POLL = 0.2


class DemoFailure(Exception):
    """A step did not do what it should."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--proxy-mode", choices=PROXY_MODES, default="iptables",
        help="the mode shown first (default iptables); the other one follows",
    )


def say(text: str) -> None:
    print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    first: str = args.proxy_mode
    modes = [first, *(mode for mode in PROXY_MODES if mode != first)]
    try:
        with tempfile.TemporaryDirectory(prefix="kproxy-demo-") as workdir:
            for mode in modes:
                say(f"\n=== {mode} mode ===")
                workspace = Path(workdir) / mode
                workspace.mkdir()
                ModeDemo(workspace, mode).run()
    except KeyboardInterrupt:
        print("\ninterrupted: everything was torn down", flush=True)
        return 130
    except (DemoFailure, RuntimeError, OSError, TimeoutError) as error:
        print(f"\nFAILED: {error}\neverything was torn down", flush=True)
        return 1
    say(f"\ndemo passed in {time.monotonic() - started:.1f}s; every namespace was deleted")
    return 0


def until(check: Callable[[], str | None], what: str, limit: float = CHANGE_LIMIT) -> None:
    """Poll ``check`` (a problem, or None when fine) until it passes; DemoFailure after
    ``limit`` seconds with the last problem."""
    deadline = time.monotonic() + limit
    while (problem := check()) is not None:
        if time.monotonic() > deadline:
            raise DemoFailure(f"{what}: {problem}")
        time.sleep(POLL)


def tally(results: list[ProbeResult]) -> str:
    counts = Counter(str(result.pod) for result in results if result.ok)
    return ", ".join(f"{pod} {count}" for pod, count in sorted(counts.items()))


class ModeDemo:
    """The demo in one proxy mode, on a cluster of its own."""

    def __init__(self, workdir: Path, mode: str) -> None:
        self.workdir = workdir
        self.mode = mode
        self.kproxies: dict[str, Popen] = {}

    def run(self) -> None:
        with DevCluster(self.workdir) as dev:
            self.dev = dev
            assert dev.lab.control_plane is not None and dev.lab.outside is not None
            say("1. the lab: every machine is a network namespace, nothing touches the host")
            say(f"   control plane {dev.lab.control_plane.ip} (dev API server at "
                f"{dev.devapi.url}), outside client {dev.lab.outside.ip}")
            for node in dev.nodes:
                say(f"   {node.name}  {node.ip}  pods {node.pod_cidr}  zone {dev.zones[node.name]}")
            say(f"   pod networks joined by VXLAN: {VXLAN_DEVICE} on each node, VNI {VXLAN_ID}, "
                f"UDP {VXLAN_PORT}")
            self._start_kproxy(dev.nodes)
            self._show_nodes("with no service yet")
            web, client, cluster_ip, node_port = self._deploy()
            self._spread(web, client, cluster_ip)
            self._node_port(web, node_port)
            self._rolling_update(web, client, cluster_ip)

    # -- steps ------------------------------------------------------------------------------

    def _start_kproxy(self, nodes: list[Node]) -> None:
        for node in nodes:
            with open(self.workdir / f"kproxy-{node.name}.log", "wb") as log:
                self.kproxies[node.name] = node.ns.popen_python(
                    "kproxy.cli", "run", *kproxy_run_args(self.mode, self.dev.devapi.kubeconfig,
                                                          node),
                    stdout=subprocess.DEVNULL, stderr=log)
        for node in nodes:
            def started(node: Node = node) -> str | None:
                return self._kproxy_problem(node)

            until(started, f"kproxy on {node.name}", START_LIMIT)
        say(f"2. kproxy run --proxy-mode={self.mode} on {', '.join(n.name for n in nodes)}, "
            "watching the dev API server")

    def _kproxy_problem(self, node: Node) -> str | None:
        proc = self.kproxies[node.name]
        log = (self.workdir / f"kproxy-{node.name}.log").read_text(errors="replace")
        if proc.poll() is not None:
            raise DemoFailure(f"kproxy on {node.name} exited ({proc.returncode}):\n"
                              f"{log[-1500:]}")
        if "kproxy watching" not in log:
            return "not watching the API server yet"
        # iptables mode says when its first ruleset is in; that is the state shown next.
        if self.mode == "iptables" and "sync (full) took" not in log:
            return "no first sync yet"
        return None

    def _deploy(self) -> tuple[Workload, Pod, str, int]:
        service = self.dev.api.create({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": "default"},
            "spec": {"type": "NodePort", "selector": {"app": SERVICE},
                     "ports": [{"name": "http", "port": 80, "targetPort": HTTP_PORT.port}]},
        })
        cluster_ip = str(service["spec"]["clusterIP"])
        node_port = int(service["spec"]["ports"][0]["nodePort"])
        web = Workload(self.dev.lab, self.dev.api, SERVICE, zones=self.dev.zones, grace=GRACE)
        web.deploy(REPLICAS, "v1")
        client = self.dev.lab.add_pod(1, "client")
        say(f"3. Service {SERVICE}: ClusterIP {cluster_ip}:80, NodePort {node_port}; "
            f"{REPLICAS} pods of v1:")
        for member in web.pods:
            say(f"   {member.name:<9} on {member.pod.node.name}  {member.pod.ip}:{HTTP_PORT.port}")
        return web, client, cluster_ip, node_port

    def _spread(self, web: Workload, client: Pod, cluster_ip: str) -> None:
        pods = web.pod_names()
        results: list[ProbeResult] = []

        def all_answer() -> str | None:
            results[:] = client.probe("http", cluster_ip, 80, count=SPREAD_REQUESTS)
            failed = [result.error for result in results if not result.ok]
            answered = {result.pod for result in results if result.ok}
            if failed or answered != pods:
                return f"{len(failed)} failed, answered by {sorted(map(str, answered))}"
            return None

        until(all_answer, f"{SPREAD_REQUESTS} requests spread over {sorted(pods)}")
        sources = {result.client_ip for result in results}
        say(f"4. {SPREAD_REQUESTS} requests from {client.name} on node1 to {cluster_ip}:80 "
            f"(new connection each): {tally(results)}; 0 failed")
        say(f"   the pods saw the client as {', '.join(sorted(map(str, sources)))}")
        self._show_nodes("with the service")

    def _node_port(self, web: Workload, node_port: int) -> None:
        outside = self.dev.lab.outside
        assert outside is not None
        say(f"5. NodePort {node_port} from the outside client:")
        for node in self.dev.nodes:
            results: list[ProbeResult] = []

            def answered(node: Node = node, results: list[ProbeResult] = results) -> str | None:
                results[:] = outside.probe("http", node.ip, node_port, count=NODE_PORT_REQUESTS)
                failed = [result.error for result in results if not result.ok]
                wrong = {result.pod for result in results if result.ok} - web.pod_names()
                return f"{len(failed)} failed, {sorted(map(str, wrong))}" if failed or wrong \
                    else None

            until(answered, f"NodePort {node_port} on {node.name}")
            say(f"   {NODE_PORT_REQUESTS} requests to {node.ip}:{node_port}: {tally(results)}; "
                "0 failed")

    def _rolling_update(self, web: Workload, client: Pod, cluster_ip: str) -> None:
        say(f"6. rolling update v1 -> v2 while {client.name} sends {LOAD_RATE:.0f} requests/s "
            f"to {cluster_ip}:80 (a new pod ready before an old one terminates; "
            f"{GRACE:g}s grace):")
        load = LoadGenerator(client, cluster_ip, 80, rate=LOAD_RATE, duration=LOAD_LIMIT)
        load.wait_started()
        started = time.monotonic()
        try:
            time.sleep(1.0)  # some v1-only traffic first
            web.roll("v2", on_step=lambda step: say(
                f"   {time.monotonic() - started:5.1f}s  {step}"))
            time.sleep(1.0)  # and some v2-only traffic after
        finally:
            report = load.stop()
        say(f"   load: {report.summary()}")
        if report.failed:
            raise DemoFailure(f"{report.failed} requests failed during the rolling update: "
                              f"{report.failures} {report.samples[:3]}")
        if not report.by_version.get("v2") or set(report.by_version) != {"v1", "v2"}:
            raise DemoFailure(f"the update did not show in the answers: {report.by_version}")
        say("   failed requests: 0")
        self._show_nodes("after the update")

    # -- output -----------------------------------------------------------------------------

    def _show_nodes(self, when: str) -> None:
        say(f"   kproxy's {'chains' if self.mode == 'iptables' else 'listeners'} {when}:")
        for node in self.dev.nodes:
            proc = self.kproxies.get(node.name)
            say(f"     {node.name}: {node_summary(node, self.mode, proc.pid if proc else None)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="kproxy demo")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
