"""``kproxy demo``: a 2-node cluster in network namespaces, with objects flowing through kproxy.

It builds the lab (control plane, two nodes with pod bridges, an outside client), starts the
dev API server and ``kproxy run`` on every node, deploys three web pods behind a Service, and
narrates with numbers what kproxy on each node sees as the Service changes — scaling, a pod
turning not-ready, an API server restart and a forced 410 Gone. Every step is checked; the
exit code is 0 only if all of them worked. Everything is torn down at the end, on failure and
on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kproxy.devcluster.client import DevApiClient
from kproxy.devcluster.cluster import DevApiProcess, TrackerState, TrackerView, endpoints_of
from kproxy.devcluster.lab import Lab, Pod

SERVICE_PORT_NAME = "default/web:http/TCP"
WEB_PORT = 8080


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--proxy-mode", choices=("iptables", "userspace"), default="iptables",
        help="the mode the nodes' kproxy runs in (default iptables)",
    )


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="kproxy-demo-") as workdir:
            asyncio.run(Demo(Path(workdir), args.proxy_mode).run())
    except KeyboardInterrupt:
        print("\ninterrupted: everything was torn down")
        return 130
    except (AssertionError, RuntimeError, OSError) as error:
        print(f"\nFAILED: {error}\neverything was torn down")
        return 1
    print(f"\ndemo passed in {time.monotonic() - started:.1f}s; every namespace was deleted")
    return 0


def say(text: str) -> None:
    print(text, flush=True)


def service_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "NodePort", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": WEB_PORT}]},
    }


def slice_manifest(pods: list[Pod], not_ready: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abcde", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": WEB_PORT, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [pod.ip], "nodeName": pod.node.name,
             "targetRef": {"kind": "Pod", "name": pod.name, "namespace": "default"},
             "conditions": {"ready": pod.name not in not_ready}}
            for pod in pods
        ],
    }


def node_manifest(name: str, pod_cidr: str, ip: str, zone: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


class Demo:
    def __init__(self, workdir: Path, proxy_mode: str) -> None:
        self.workdir = workdir
        self.proxy_mode = proxy_mode

    async def run(self) -> None:
        with Lab(nodes=2, outside=True, control_plane=True) as lab:
            assert lab.control_plane is not None and lab.outside is not None
            say("1. the lab: every machine is a network namespace, nothing touches the host")
            say(f"   control plane {lab.control_plane.ip}   outside client {lab.outside.ip}")
            for node in lab.nodes:
                say(f"   {node.name:<8} {node.ip:<13} pods {node.pod_cidr}")

            devapi = DevApiProcess(lab.control_plane, self.workdir)
            devapi.start()
            say(f"2. dev API server at {devapi.url} (and {devapi.socket.name} for this driver)")
            async with DevApiClient(unix_path=str(devapi.socket)) as api:
                for index, node in enumerate(lab.nodes):
                    await api.create(node_manifest(node.name, node.pod_cidr, node.ip,
                                                   f"zone-{'ab'[index % 2]}"))
                self._start_proxies(lab, devapi)
                views = [TrackerView(node, devapi.kubeconfig) for node in lab.nodes]
                await self._deploy(lab, api, views)
                await self._change(lab, api, views)
                await self._api_outages(devapi, views)
                self._check_proxies(lab)

    # -- steps ------------------------------------------------------------------------------

    def _start_proxies(self, lab: Lab, devapi: DevApiProcess) -> None:
        """``kproxy run`` in every node namespace (stopped when the namespace goes)."""
        for node in lab.nodes:
            with open(self.workdir / f"kproxy-{node.name}.log", "wb") as log_file:
                node.ns.popen_python(
                    "kproxy.cli", "run", f"--proxy-mode={self.proxy_mode}",
                    f"--kubeconfig={devapi.kubeconfig}", f"--hostname-override={node.name}",
                    "--v=2", "--metrics-bind-address=", stdout=log_file, stderr=log_file,
                )
        say(f"3. kproxy run --proxy-mode={self.proxy_mode} started on "
            f"{', '.join(n.name for n in lab.nodes)}")

    async def _deploy(self, lab: Lab, api: DevApiClient, views: list[TrackerView]) -> None:
        pods = [lab.add_pod(lab.nodes[0], "web-1"), lab.add_pod(lab.nodes[0], "web-2"),
                lab.add_pod(lab.nodes[1], "web-3")]
        lab.start_servers(pods, tcp=(WEB_PORT,), udp=())
        client = lab.add_pod(lab.nodes[0], "client")
        say("4. three web pods, each answering with its name and the client address it saw:")
        for pod in pods:
            answer = client.probe("http", pod.ip, WEB_PORT)[0]
            if not answer.ok or answer.pod != pod.name or answer.client_ip != client.ip:
                raise AssertionError(f"pod {pod.name} did not answer the client pod: {answer}")
            say(f"   client {client.ip} -> {pod.ip}:{WEB_PORT}  answered by {answer.pod}, "
                f"saw {answer.client_ip}")
        created = await api.create(service_manifest())
        await api.create(slice_manifest(pods))
        cluster_ip = created["spec"]["clusterIP"]
        node_port = created["spec"]["ports"][0]["nodePort"]
        say(f"5. Service web: ClusterIP {cluster_ip}:80, NodePort {node_port}, 3 endpoints")
        expected = sorted(f"{pod.ip}:{WEB_PORT}" for pod in pods)
        self._show(views, lambda s: endpoints_of(s, SERVICE_PORT_NAME) == expected,
                   "the service with 3 ready endpoints")
        self.pods = pods

    async def _change(self, lab: Lab, api: DevApiClient, views: list[TrackerView]) -> None:
        pods = self.pods
        await api.replace(slice_manifest(pods, not_ready=frozenset({"web-2"})))
        say("6. web-2 fails its readiness probe (ready=false):")
        self._show(
            views,
            lambda s: f"{pods[1].ip}:{WEB_PORT}(not ready)" in endpoints_of(s, SERVICE_PORT_NAME),
            "web-2 not ready",
        )
        await api.replace(slice_manifest([pods[0], pods[2]]))
        say("7. scaled down to 2 pods (web-2 removed):")
        self._show(views, lambda s: len(endpoints_of(s, SERVICE_PORT_NAME)) == 2,
                   "2 endpoints")

    async def _api_outages(self, devapi: DevApiProcess, views: list[TrackerView]) -> None:
        lists = [v.latest["informers"]["services"]["lists"] for v in views]
        devapi.stop()
        devapi.start()
        async with DevApiClient(unix_path=str(devapi.socket)) as api:
            await api.create({"apiVersion": "v1", "kind": "Service",
                              "metadata": {"name": "late", "namespace": "default"},
                              "spec": {"ports": [{"name": "http", "port": 8081}]}})
            say("8. API server restarted; a Service created right after it:")
            self._show(
                views,
                lambda s: "default/late:http/TCP" in s["services"]
                and s["informers"]["services"]["lists"] > 0,
                "the new service after a relist",
            )
            after = [v.latest["informers"]["services"]["lists"] for v in views]
            say(f"   service relists per node: {lists} -> {after}")
            devapi.send_signal(signal.SIGUSR1)
            say("9. forced 410 Gone (every watched resourceVersion expired):")
            self._show(views, lambda s: s["informers"]["services"]["expired"] >= 1,
                       "the 410 and a relist")
            await api.delete("v1", "Service", "late")
            say("   ... and Service late deleted after the relist:")
            self._show(views, lambda s: "default/late:http/TCP" not in s["services"],
                       "the deletion after the relist")

    def _check_proxies(self, lab: Lab) -> None:
        """The kproxy daemons synced the same final state (after their min sync period)."""
        say("10. kproxy run's own last sync on each node:")
        for node in lab.nodes:
            log_path = self.workdir / f"kproxy-{node.name}.log"
            deadline = time.monotonic() + 10
            while True:
                log_text = log_path.read_text(errors="replace")
                syncs = [line for line in log_text.splitlines()
                         if "] sync (" in line or "] snapshot " in line]
                if syncs and "1 service ports, 2 endpoints" in syncs[-1]:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"kproxy on {node.name} did not sync the final state:\n{log_text[-2000:]}"
                    )
                time.sleep(0.1)
            say(f"   {node.name}: {syncs[-1].split('] ', 1)[1]}")

    # -- output -----------------------------------------------------------------------------

    @staticmethod
    def _show(views: list[TrackerView], condition: Callable[[TrackerState], bool],
              what: str) -> None:
        """Wait until every node's tracker shows ``what``; print each node's view."""
        started = time.monotonic()
        for view in views:
            state = view.wait_for(condition, what)
            endpoints = endpoints_of(state, SERVICE_PORT_NAME)
            service = state["services"].get(SERVICE_PORT_NAME)
            target = (f"{service['cluster_ips'][0]}:{service['port']}"
                      if service else "(no service)")
            say(f"   kproxy on {view.node.name}: {SERVICE_PORT_NAME} {target} -> "
                f"{', '.join(endpoints) or '(none)'}   "
                f"[{len(state['services'])} service ports; "
                f"{(time.monotonic() - started) * 1000:.0f} ms after the change]")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="kproxy demo")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
