"""Bounds of the userspace data plane: timeouts, caps, retries, and the process's file limit."""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayLimits:
    connect_timeout: float = 5.0
    # 0 disables the TCP idle timeout (kube-proxy's userspace mode had none for TCP).
    idle_timeout: float = 3600.0
    # kube-proxy's --udp-timeout default.
    udp_idle_timeout: float = 0.25
    max_connections_global: int = 100_000
    max_connections_per_service: int = 20_000
    max_udp_sessions_global: int = 50_000
    max_udp_sessions_per_service: int = 10_000
    # Established connections to a removed endpoint are closed this long after its removal.
    endpoint_grace: float = 30.0
    # On shutdown, established connections get this long to finish.
    drain_grace: float = 5.0
    # kube-proxy's userspace dialer: 250 ms doubling up to 2 s, 4 tries in all.
    connect_retries: int = 4
    backoff_initial: float = 0.25
    backoff_maximum: float = 2.0
    # Bytes per splice pipe (F_SETPIPE_SZ); each relayed connection holds two.
    pipe_size: int = 65536
    # After this many consecutive dial failures an endpoint is skipped for failure_cooldown.
    failure_threshold: int = 3
    failure_cooldown: float = 10.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "udp_idle_timeout", "endpoint_grace", "drain_grace"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RelayLimits.{name} must be > 0, got {getattr(self, name)}")
        for name in (
            "max_connections_global",
            "max_connections_per_service",
            "max_udp_sessions_global",
            "max_udp_sessions_per_service",
            "connect_retries",
            "pipe_size",
            "failure_threshold",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"RelayLimits.{name} must be >= 1, got {getattr(self, name)}")
        if self.idle_timeout < 0:
            raise ValueError(f"RelayLimits.idle_timeout must be >= 0, got {self.idle_timeout}")

    def backoff_delays(self) -> list[float]:
        """Waits between the dial attempts of one connection (one fewer than attempts)."""
        delays: list[float] = []
        delay = self.backoff_initial
        for _ in range(self.connect_retries - 1):
            delays.append(delay)
            delay = min(delay * 2, self.backoff_maximum)
        return delays


class ConnectionBudget:
    """A count shared by every listener of the process, so that a global cap holds."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"ConnectionBudget limit must be >= 1, got {limit}")
        self.limit = limit
        self.used = 0

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limit

    def try_acquire(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def release(self) -> None:
        if self.used <= 0:
            raise RuntimeError("ConnectionBudget released more often than acquired")
        self.used -= 1


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the (soft, hard) now in force.

    Every relayed TCP connection holds two sockets and two pipes (six descriptors); the
    usual soft limit of 1024 would cap a node at ~170 connections.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as error:
            log.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, wanted, error)
            return soft, hard
        log.info("RLIMIT_NOFILE raised from %d to %d", soft, wanted)
        soft = wanted
    return soft, hard
