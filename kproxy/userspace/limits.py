"""Bounds of the userspace data plane: timeouts, caps, retries, and the process's file limit."""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable
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
    # Dial attempts per connection, each to the next endpoint with a longer timeout
    # (kube-proxy's userspace dialer: 250 ms doubling up to 2 s, 4 tries in all).
    connect_retries: int = 4
    backoff_initial: float = 0.25
    backoff_maximum: float = 2.0
    # Bytes per splice pipe (F_SETPIPE_SZ). A direction holds a pipe only while bytes are in
    # flight, so this bounds the bytes in flight per direction, not idle memory.
    pipe_size: int = 262144
    # After this many consecutive dial failures an endpoint is skipped for failure_cooldown.
    failure_threshold: int = 3
    failure_cooldown: float = 10.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "udp_idle_timeout", "endpoint_grace", "backoff_initial"):
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
        for name in ("idle_timeout", "drain_grace"):
            if getattr(self, name) < 0:
                raise ValueError(f"RelayLimits.{name} must be >= 0, got {getattr(self, name)}")
        if self.backoff_maximum < self.backoff_initial:
            raise ValueError("RelayLimits.backoff_maximum must be >= backoff_initial")

    def dial_timeouts(self) -> tuple[float, ...]:
        """The timeout of each dial attempt for one connection, each attempt to the next
        endpoint: 250 ms doubling up to 2 s as kube-proxy's userspace dialer, none longer
        than connect_timeout."""
        timeouts: list[float] = []
        timeout = self.backoff_initial
        for _ in range(self.connect_retries):
            timeouts.append(min(timeout, self.connect_timeout))
            timeout = min(timeout * 2, self.backoff_maximum)
        return tuple(timeouts)


class Cap:
    """A count with a ceiling."""

    __slots__ = ("_waiters", "limit", "used")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"cap limit must be >= 1, got {limit}")
        self.limit = limit
        self.used = 0
        self._waiters: list[Callable[[], bool]] = []

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
            raise RuntimeError("cap released more often than acquired")
        self.used -= 1
        if self._waiters:
            # Each waiter re-checks its own caps; those that could go on are done waiting.
            self._waiters = [waiter for waiter in self._waiters if not waiter()]

    def on_release(self, waiter: Callable[[], bool]) -> None:
        """Call ``waiter`` after every release until it returns True (a paused listener
        waiting for room under a cap that other listeners share)."""
        self._waiters.append(waiter)


class ConnectionBudget:
    """The process-wide caps, one object shared by every listener so that a global cap holds:
    ``connections`` counts open TCP connections, ``udp_sessions`` open UDP sessions."""

    def __init__(self, max_connections: int, max_udp_sessions: int | None = None) -> None:
        self.connections = Cap(max_connections)
        self.udp_sessions = Cap(max_connections if max_udp_sessions is None else max_udp_sessions)

    @classmethod
    def for_limits(cls, limits: RelayLimits) -> ConnectionBudget:
        return cls(limits.max_connections_global, limits.max_udp_sessions_global)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the (soft, hard) now in force.

    Every relayed TCP connection holds two sockets and two pipes (six descriptors); the
    usual soft limit of 1024 would cap a node at ~170 connections.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        candidates = [(_kernel_nr_open(), hard)]
    else:
        # With CAP_SYS_RESOURCE the hard limit itself may go up to the kernel's per-process
        # ceiling; without it setrlimit refuses that, and the hard limit is the most we get.
        candidates = [(max(hard, _kernel_nr_open()),) * 2, (hard, hard)]
    for wanted_soft, wanted_hard in candidates:
        if soft >= wanted_soft:
            return soft, hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted_soft, wanted_hard))
        except (ValueError, OSError):
            continue
        log.info("RLIMIT_NOFILE raised from %d to %d", soft, wanted_soft)
        return wanted_soft, wanted_hard
    log.warning("could not raise RLIMIT_NOFILE above %d", soft)
    return soft, hard


def _kernel_nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as file:
            return int(file.read())
    except (OSError, ValueError):
        return 1 << 20
