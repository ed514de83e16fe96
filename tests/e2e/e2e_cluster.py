"""The end-to-end suite's cluster: a dev cluster (two nodes on a VXLAN overlay, control plane,
outside client) with ``kproxy run`` on every node watching the dev API server, and per test a
:class:`Case` that removes whatever the test created, so one cluster serves a whole module.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# The kernel suite's helpers for kproxy on lab nodes and forwarding checks, shared as they are.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kernel"))

from flows import Flow, check_flow
from kproxy_nodes import KproxyOnNode, eventually

from kproxy.devcluster.blockingclient import BlockingApiClient
from kproxy.devcluster.client import ApiObject
from kproxy.devcluster.cluster import DevCluster, kproxy_run_args
from kproxy.devcluster.lab import Lab, Pod
from kproxy.devcluster.workload import ContainerPort, Workload

# Bounds on kproxy reacting to a change; never performance expectations.
CHANGE_LIMIT = 15.0
# The kernel sends one ICMP error per second and destination after a burst; polling a
# REJECTed service would see timeouts instead of refusals.
NO_ICMP_RATE_LIMIT = {"net.ipv4.icmp_ratelimit": 0}
GRACE = 2.0  # a terminating pod's preStop pause: longer than kproxy takes to drop it


@dataclass
class E2eCluster:
    mode: str
    dev: DevCluster
    kproxies: list[KproxyOnNode]

    @property
    def lab(self) -> Lab:
        return self.dev.lab

    @property
    def api(self) -> BlockingApiClient:
        return self.dev.api

    def client(self, node_index: int) -> Pod:
        """``client-1`` on node1, ``client-2`` on node2 (no server)."""
        return self.lab.pod(f"client-{node_index}")

    def diagnostics(self) -> str:
        return "\n".join(f"--- kproxy on {kproxy.node.name}:\n{kproxy.tail()}"
                         for kproxy in self.kproxies)

    def reaches(self, flow: Flow, what: str, limit: float = CHANGE_LIMIT) -> None:
        """The flow settles to its expected outcome within ``limit``, then holds for a
        fresh round."""
        try:
            eventually(lambda: check_flow(self.lab, flow), f"{what} ({flow.name})", limit)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.diagnostics()}") from None
        # The fresh round must not fail or reach anything else; that it reaches every pod
        # again is chance (it was shown above), so it is not asked for twice.
        problems = check_flow(self.lab, replace(flow, must_spread=False))
        assert not problems, "\n".join(problems) + "\n" + self.diagnostics()


def start_kproxy(dev: DevCluster, mode: str, workdir: Path) -> list[KproxyOnNode]:
    kproxies = [KproxyOnNode(node, kproxy_run_args(mode, dev.devapi.kubeconfig, node,
                                                   min_sync_period="0s"),
                             workdir / f"kproxy-{node.name}.log") for node in dev.nodes]
    for kproxy in kproxies:
        kproxy.start()
    for kproxy in kproxies:
        kproxy.wait_for_log("kproxy watching")
    return kproxies


@dataclass
class Case:
    """What one test created; all of it is deleted when the test ends, so the shared
    cluster is clean for the next one."""

    cluster: E2eCluster
    services: list[str] = field(default_factory=list)
    workloads: list[Workload] = field(default_factory=list)

    @property
    def api(self) -> BlockingApiClient:
        return self.cluster.api

    def service(self, name: str, ports: list[dict[str, Any]], **spec: Any) -> ApiObject:
        """Create Service ``name`` (selector app=name) and return it as the server has it."""
        labels = spec.pop("labels", None)
        metadata: dict[str, Any] = {"name": name, "namespace": "default"}
        if labels:
            metadata["labels"] = labels
        created = self.api.create({
            "apiVersion": "v1", "kind": "Service", "metadata": metadata,
            "spec": {"selector": {"app": name}, "ports": ports, **spec},
        })
        self.services.append(name)
        return created

    def patch_service(self, name: str, patch: ApiObject) -> ApiObject:
        return self.api.merge_patch("v1", "Service", name, patch)

    def delete_service(self, name: str) -> None:
        self.api.delete("v1", "Service", name)
        self.services.remove(name)

    def workload(self, name: str, replicas: int, *, version: str = "v1",
                 nodes: list[int] | None = None, ports: tuple[ContainerPort, ...] | None = None,
                 **options: Any) -> Workload:
        """A workload behind Service ``name``, deployed with ``replicas`` pods."""
        workload = Workload(self.cluster.lab, self.api, name, zones=self.cluster.dev.zones,
                            grace=options.pop("grace", GRACE),
                            **({"ports": ports} if ports else {}), **options)
        self.workloads.append(workload)
        if replicas:
            workload.deploy(replicas, version, nodes)
        return workload

    def close(self) -> None:
        for workload in self.workloads:
            workload.delete()
        for name in self.services:
            self.api.delete_if_present("v1", "Service", name)


