"""The interface between "what this node should forward" and "how it is done".

Each proxy mode implements :class:`Proxier`; everything before it (sources, tracker, runner)
is shared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from kproxy.state import Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SyncResult:
    ok: bool
    full: bool  # a full sync rewrote everything; a partial one only the changed services
    service_ports: int
    endpoints: int
    error: str = ""


class Proxier(Protocol):
    async def sync(self, snapshot: Snapshot) -> SyncResult: ...

    async def close(self) -> None: ...


class SnapshotLogger:
    """A proxier that programs nothing and logs what a sync would program.

    Used where no forwarding is wanted (and as the stand-in before a mode exists).
    """

    def __init__(self) -> None:
        self._first = True

    async def sync(self, snapshot: Snapshot) -> SyncResult:
        endpoint_count = sum(len(endpoints) for endpoints in snapshot.endpoints.values())
        full = self._first
        self._first = False
        log.info(
            "snapshot %d: %d service ports, %d endpoints, %d changed%s",
            snapshot.generation,
            len(snapshot.services),
            endpoint_count,
            len(snapshot.changed),
            " (full)" if full else "",
        )
        for port_name in sorted(snapshot.changed):
            service_port = snapshot.services.get(port_name)
            endpoints = snapshot.endpoints_of(port_name)
            if service_port is None:
                log.info("  removed %s", port_name)
                continue
            log.info(
                "  %s %s port %d/%s -> %s",
                port_name,
                ",".join(service_port.cluster_ips) or "-",
                service_port.port,
                service_port.protocol.value,
                ", ".join(e.address for e in endpoints if e.ready) or "(no ready endpoints)",
            )
        return SyncResult(True, full, len(snapshot.services), endpoint_count)

    async def close(self) -> None:
        return None
