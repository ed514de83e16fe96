"""Counters of the userspace data plane, read by the metrics exporter through the proxier."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class UserspaceStats:
    # Gauges (current values).
    active_connections: int = 0
    udp_sessions: int = 0
    # Counters (only ever grow).
    accepted_connections: int = 0
    rejected_connections: int = 0  # accepting paused because a cap was reached
    failed_connections: int = 0  # no endpoint to pick, or every dial failed
    bytes_relayed: int = 0
    udp_sessions_created: int = 0
    refused_endpoints: int = 0  # endpoints never dialled (loopback, link-local, ...)
