"""A web workload on the dev cluster, run the way a Deployment and the EndpointSlice controller
run one: pods (lab namespaces running the pod server, answering with their version) spread
over the nodes, and one EndpointSlice for the Service kept up to date through the API server.

* :meth:`Workload.deploy`, :meth:`~Workload.scale`, :meth:`~Workload.delete`;
* :meth:`Workload.roll` to a new version as a Deployment with ``maxSurge: 1`` and
  ``maxUnavailable: 0`` does: a new pod is up and ready (in the slice) before an old one is
  marked terminating (``ready=false, serving=true, terminating=true``), and the old one is
  removed only after its grace period (the time its readers need to stop sending to it);
* :meth:`Workload.set_ready` for a failing readiness probe, :meth:`~Workload.set_ports` when
  the Service's ports change.

Every published endpoint carries ``nodeName``, ``zone`` (the node's
``topology.kubernetes.io/zone``), a ``targetRef`` and the three conditions; the slice carries
the ``endpoints.kubernetes.io/last-change-trigger-time`` annotation of the pod change it
reflects. The slice itself is built by a pure function (:func:`endpoint_slice`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from kproxy.devcluster.lab import Lab, Node, Pod

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
DEFAULT_GRACE = 2.0  # seconds a terminating pod keeps serving (a preStop pause)

ApiObject = dict[str, Any]


class ObjectApi(Protocol):
    """What the workload needs of an API client (:class:`BlockingApiClient` has it)."""

    def apply(self, obj: ApiObject) -> ApiObject: ...

    def delete_if_present(self, api_version: str, kind: str, name: str,
                          namespace: str | None = ...) -> bool: ...


@dataclass(frozen=True, slots=True)
class ContainerPort:
    name: str
    port: int
    protocol: str = "TCP"


HTTP_PORT = ContainerPort("http", 8080)


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """One pod as its EndpointSlice entry shows it."""

    pod: str
    ip: str
    node: str
    zone: str
    ready: bool
    serving: bool
    terminating: bool


def rfc3339(timestamp: float) -> str:
    """``2026-01-02T03:04:05.678901Z``, as the API server's times are written."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def endpoint_slice(service: str, namespace: str, slice_name: str,
                   ports: Sequence[ContainerPort], endpoints: Sequence[EndpointRecord],
                   trigger_time: float) -> ApiObject:
    """The EndpointSlice the controller writes for ``endpoints`` (pure)."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name, "namespace": namespace,
            "labels": {SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {TRIGGER_TIME_ANNOTATION: rfc3339(trigger_time)},
        },
        "addressType": "IPv4",
        "ports": [{"name": port.name, "port": port.port, "protocol": port.protocol}
                  for port in ports],
        "endpoints": [
            {"addresses": [endpoint.ip], "nodeName": endpoint.node, "zone": endpoint.zone,
             "targetRef": {"kind": "Pod", "name": endpoint.pod, "namespace": namespace},
             "conditions": {"ready": endpoint.ready, "serving": endpoint.serving,
                            "terminating": endpoint.terminating}}
            for endpoint in endpoints
        ],
    }


def least_loaded(nodes: Sequence[Node], counts: Mapping[str, int]) -> Node:
    """The node with the fewest of the workload's pods (the first such one): the spread a
    scheduler with pod anti-affinity gives a small deployment."""
    return min(nodes, key=lambda node: (counts.get(node.name, 0), node.index))


@dataclass(frozen=True, slots=True)
class WorkloadPod:
    """A pod of the workload and the state the controller publishes for it."""

    pod: Pod
    version: str
    ready: bool = True
    terminating: bool = False

    @property
    def name(self) -> str:
        return self.pod.name


class Workload:
    """Pods of one web server behind Service ``name`` (the Service itself is the caller's)."""

    def __init__(self, lab: Lab, api: ObjectApi, name: str, *, namespace: str = "default",
                 ports: Sequence[ContainerPort] = (HTTP_PORT,),
                 listen: Sequence[ContainerPort] | None = None,
                 zones: Mapping[str, str] | None = None, grace: float = DEFAULT_GRACE,
                 publish_not_ready: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.lab = lab
        self.api = api
        self.name = name
        self.namespace = namespace
        self.ports = tuple(ports)
        # What the pod servers listen on: a superset of the published ports, so that
        # ports can be added to the Service later without restarting pods.
        self.listen = tuple(listen if listen is not None else ports)
        self.zones = dict(zones or {})
        self.grace = grace
        self.publish_not_ready = publish_not_ready
        self.clock = clock
        self.slice_name = f"{name}-{secrets.token_hex(3)[:5]}"
        self.pods: list[WorkloadPod] = []
        self._serial = 0
        self._published = False

    # -- what is published --------------------------------------------------------------------

    def records(self) -> list[EndpointRecord]:
        return [self._record(member) for member in self.pods]

    def _record(self, member: WorkloadPod) -> EndpointRecord:
        pod = member.pod
        ready = member.ready and not member.terminating
        return EndpointRecord(
            pod=pod.name, ip=pod.ip, node=pod.node.name,
            zone=self.zones.get(pod.node.name, ""),
            # With publishNotReadyAddresses the controller calls every endpoint ready.
            ready=ready or self.publish_not_ready,
            serving=member.ready, terminating=member.terminating,
        )

    def manifest(self) -> ApiObject:
        return endpoint_slice(self.name, self.namespace, self.slice_name, self.ports,
                              self.records(), self.clock())

    def publish(self) -> None:
        self.api.apply(self.manifest())
        self._published = True

    # -- queries ------------------------------------------------------------------------------

    def ready_pods(self) -> list[WorkloadPod]:
        return [member for member in self.pods if member.ready and not member.terminating]

    def pod_names(self, version: str | None = None) -> frozenset[str]:
        return frozenset(member.name for member in self.pods
                         if version is None or member.version == version)

    def member(self, name: str) -> WorkloadPod:
        for member in self.pods:
            if member.name == name:
                return member
        raise KeyError(f"workload {self.name} has no pod {name!r}")

    # -- changes ------------------------------------------------------------------------------

    def deploy(self, replicas: int, version: str = "v1",
               nodes: Sequence[Node | int | str] | None = None) -> list[WorkloadPod]:
        """``replicas`` new pods of ``version`` (on ``nodes`` in turn, or spread), all ready,
        then published together."""
        started = self._start_pods(version, replicas, nodes)
        self.publish()
        return started

    def scale(self, replicas: int) -> None:
        """Add pods of the current version, or remove the newest ones (terminating first)."""
        if replicas < 0:
            raise ValueError(f"workload {self.name}: replicas must be >= 0: {replicas}")
        live = [member for member in self.pods if not member.terminating]
        if replicas > len(live):
            version = live[-1].version if live else "v1"
            self.deploy(replicas - len(live), version)
        for member in list(reversed(live))[:max(0, len(live) - replicas)]:
            self.terminate(member.name)

    def roll(self, version: str, on_step: Callable[[str], None] | None = None) -> None:
        """Replace every pod of another version by one of ``version``, one at a time."""
        tell = on_step or (lambda _text: None)
        for old in [member for member in self.pods if member.version != version]:
            [new] = self._start_pods(version, 1, [old.pod.node])
            self.publish()
            tell(f"{new.name} ({version}) on {new.pod.node.name} up and ready")
            self.terminate(old.name, on_step=tell)

    def terminate(self, name: str, on_step: Callable[[str], None] | None = None) -> None:
        """As the kubelet and the controller do: terminating (still serving) for the grace
        period, then the pod stops and leaves the slice."""
        tell = on_step or (lambda _text: None)
        self.begin_termination(name)
        tell(f"{name} terminating (ready=false, serving=true)")
        time.sleep(self.grace)
        self.remove(name)
        tell(f"{name} removed")

    def begin_termination(self, name: str) -> None:
        """The pod is being deleted but still serves (its preStop hook runs)."""
        self._update(name, terminating=True)
        self.publish()

    def remove(self, name: str) -> None:
        """The pod is gone at once (a crash, a forced delete)."""
        member = self.member(name)
        self.pods.remove(member)
        self.publish()
        self.lab.remove_pod(member.pod)

    def set_ready(self, name: str, ready: bool) -> None:
        """The pod's readiness probe starts failing (or passing again)."""
        self._update(name, ready=ready)
        self.publish()

    def set_ports(self, ports: Sequence[ContainerPort]) -> None:
        """The Service's ports changed: the controller rewrites the slice's ports."""
        missing = [port for port in ports if port not in self.listen]
        if missing:
            raise ValueError(f"workload {self.name}: pods do not listen on {missing}")
        self.ports = tuple(ports)
        self.publish()

    def unpublish(self) -> None:
        """The slice goes, the pods stay (the Service was deleted); :meth:`publish` again
        when it is back."""
        if self._published:
            self.api.delete_if_present("discovery.k8s.io/v1", "EndpointSlice", self.slice_name,
                                       self.namespace)
            self._published = False

    def delete(self) -> None:
        """Every pod and the slice go (the Deployment was deleted)."""
        for member in list(self.pods):
            self.pods.remove(member)
            self.lab.remove_pod(member.pod)
        self.unpublish()

    # -- pods ---------------------------------------------------------------------------------

    def _update(self, name: str, *, ready: bool | None = None,
                terminating: bool | None = None) -> None:
        member = self.member(name)
        self.pods[self.pods.index(member)] = replace(
            member, ready=member.ready if ready is None else ready,
            terminating=member.terminating if terminating is None else terminating)

    def _start_pods(self, version: str, count: int,
                    nodes: Sequence[Node | int | str] | None) -> list[WorkloadPod]:
        started: list[WorkloadPod] = []
        try:
            for index in range(count):
                node = (self.lab.node(nodes[index % len(nodes)]) if nodes
                        else least_loaded(self.lab.nodes, self._counts()))
                self._serial += 1
                pod = self.lab.add_pod(node, f"{self.name}-{version}-{self._serial}")
                pod.start_server(
                    tcp=[port.port for port in self.listen if port.protocol == "TCP"],
                    udp=[port.port for port in self.listen if port.protocol == "UDP"],
                    version=version, wait=False)
                started.append(WorkloadPod(pod, version))
                self.pods.append(started[-1])
            # Ready (its readiness probe passes) once it listens on every port.
            for member in started:
                member.pod.wait_server_ready()
        except BaseException:
            for member in started:
                self.pods.remove(member)
                self.lab.remove_pod(member.pod)
            raise
        return started

    def _counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for member in self.pods:
            if not member.terminating:
                counts[member.pod.node.name] = counts.get(member.pod.node.name, 0) + 1
        return counts
