"""Table-driven forwarding checks: one row per flow, real packets through a node's rules.

A :class:`Flow` names where the packet starts (a pod, a node, the outside client), what it is
sent to, and what must happen: which endpoints may answer and which source address they must
see, or that the connection is refused fast (REJECT) or times out (DROP). :func:`check_flow`
runs the probe client in the source namespace and returns a description of every mismatch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kproxy.devcluster.lab import Lab, LabHost
from kproxy.devcluster.probe import ProbeResult, split_endpoint

REFUSED = "refused"
TIMEOUT = "timeout"


@dataclass(frozen=True)
class Flow:
    name: str
    source: str  # a pod name, "node1"/"node2", or "outside"
    proto: str  # "http", "tcp", "udp"
    destination: str | Callable[[Lab], str]  # an IP, or computed from the lab (a node IP)
    port: int
    answered_by: frozenset[str] = frozenset()  # pod names that may answer
    outcome: str | None = None  # REFUSED / TIMEOUT instead of an answer
    # Source addresses the endpoint may see (None: don't check). Callables see the lab.
    source_seen: Callable[[Lab], frozenset[str]] | None = None
    attempts: int = 6
    timeout: float = 0.7
    must_spread: bool = False  # every pod in answered_by must answer at least once
    tags: frozenset[str] = field(default_factory=frozenset)
    source_ip: str | None = None  # bind the probe to this address of the source host
    server_port: int | None = None  # the endpoint port every answer must have come to
    sticky: bool = False  # every attempt answered by the same pod


def host_named(lab: Lab, name: str) -> LabHost:
    if name == "outside":
        assert lab.outside is not None
        return lab.outside
    for node in lab.nodes:
        if node.name == name:
            return node
    return lab.pod(name)


def node_ip(index: int) -> Callable[[Lab], str]:
    return lambda lab: lab.nodes[index].ip


def addresses_of(*names: str) -> Callable[[Lab], frozenset[str]]:
    """Every address of the named hosts (a node's fabric and bridge addresses)."""

    def addresses(lab: Lab) -> frozenset[str]:
        found: set[str] = set()
        for name in names:
            host = host_named(lab, name)
            found.update(host.ips)
            gateway = getattr(host, "gateway", None)
            if gateway:
                found.add(gateway)
        return frozenset(found)

    return addresses


def flow_target(lab: Lab, flow: Flow) -> tuple[str, str]:
    """The destination address, and a description of the flow for messages."""
    destination = flow.destination(lab) if callable(flow.destination) else flow.destination
    return destination, f"{flow.name}: {flow.source} -> {flow.proto} {destination}:{flow.port}"


def probe_flow(lab: Lab, flow: Flow, destination: str) -> list[ProbeResult]:
    return host_named(lab, flow.source).probe(
        flow.proto, destination, flow.port, count=flow.attempts, timeout=flow.timeout,
        source_ip=flow.source_ip)


def check_flow(lab: Lab, flow: Flow) -> list[str]:
    destination, where = flow_target(lab, flow)
    return judge(flow, probe_flow(lab, flow, destination), lab, where)


def judge(flow: Flow, results: Sequence[ProbeResult], lab: Lab, where: str) -> list[str]:
    """Every way ``results`` differ from what ``flow`` expects."""
    if flow.outcome is not None:
        return [f"{where}: expected {flow.outcome}, got "
                f"{f'an answer from {result.pod}' if result.ok else result.error}"
                for result in results if result.ok or result.error != flow.outcome]
    problems: list[str] = []
    allowed_sources = flow.source_seen(lab) if flow.source_seen is not None else None
    answered: set[str] = set()
    for result in results:
        if not result.ok:
            problems.append(f"{where}: expected an answer, got {result.error} ({result.detail})")
            continue
        answered.add(str(result.pod))
        if result.pod not in flow.answered_by:
            problems.append(f"{where}: answered by {result.pod}, expected one of "
                            f"{sorted(flow.answered_by)}")
        if allowed_sources is not None and result.client_ip not in allowed_sources:
            problems.append(f"{where}: endpoint saw source {result.client_ip}, expected one of "
                            f"{sorted(allowed_sources)}")
        if flow.server_port is not None and result.server is not None:
            port = split_endpoint(result.server)[1]
            if port != flow.server_port:
                problems.append(f"{where}: reached endpoint port {port}, expected "
                                f"{flow.server_port}")
    if problems:
        return problems
    if flow.must_spread and answered != set(flow.answered_by):
        problems.append(f"{where}: only {sorted(answered)} answered in {flow.attempts} "
                        f"attempts; expected all of {sorted(flow.answered_by)}")
    if flow.sticky and len(answered) != 1:
        problems.append(f"{where}: {sorted(answered)} answered; affinity should keep one")
    return problems
