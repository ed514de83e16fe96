"""Table-driven forwarding checks: one row per flow, real packets through a node's rules.

A :class:`Flow` names where the packet starts (a pod, a node, the outside client), what it is
sent to, and what must happen: which endpoints may answer and which source address they must
see, or that the connection is refused fast (REJECT) or times out (DROP). :func:`check_flow`
runs the probe client in the source namespace and returns a description of every mismatch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kproxy.devcluster.lab import Lab, LabHost

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


def check_flow(lab: Lab, flow: Flow) -> list[str]:
    source = host_named(lab, flow.source)
    destination = flow.destination(lab) if callable(flow.destination) else flow.destination
    results = source.probe(flow.proto, destination, flow.port, count=flow.attempts,
                           timeout=flow.timeout)
    problems: list[str] = []
    where = f"{flow.name}: {flow.source} -> {flow.proto} {destination}:{flow.port}"
    if flow.outcome is not None:
        for result in results:
            if result.ok or result.error != flow.outcome:
                got = f"an answer from {result.pod}" if result.ok else result.error
                problems.append(f"{where}: expected {flow.outcome}, got {got}")
        return problems
    answered: set[str] = set()
    allowed_sources = flow.source_seen(lab) if flow.source_seen is not None else None
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
    if flow.must_spread and not problems and answered != set(flow.answered_by):
        problems.append(f"{where}: only {sorted(answered)} answered in {flow.attempts} "
                        f"attempts; expected all of {sorted(flow.answered_by)}")
    return problems
