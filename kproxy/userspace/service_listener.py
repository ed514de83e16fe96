"""What TCP and UDP listeners share: the socket bound to a free port, the balancer, and the
filtering of endpoints that must never be dialled."""

from __future__ import annotations

import abc
import logging
import socket
from collections.abc import Callable, Sequence

from kproxy.clock import Clock
from kproxy.model.types import IPFamily, Protocol
from kproxy.userspace.balancer import Balancer
from kproxy.userspace.limits import ConnectionBudget, RelayLimits
from kproxy.userspace.stats import UserspaceStats
from kproxy.userspace.targets import Target, refusal_reason

log = logging.getLogger("kproxy.userspace")


def address_family(family: IPFamily) -> socket.AddressFamily:
    return socket.AF_INET6 if family is IPFamily.IPV6 else socket.AF_INET


def bound_socket(
    family: IPFamily, kind: socket.SocketKind, bind_host: str, port: int = 0
) -> socket.socket:
    """A non-blocking socket on ``port`` (0: one the kernel picks), on every address of the
    family unless ``bind_host`` names one. A port in use raises OSError(EADDRINUSE)."""
    sock = socket.socket(address_family(family), kind)
    try:
        if family is IPFamily.IPV6:
            # Without this, a "::" socket would also take IPv4 traffic for the port.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            # A port given back and taken again must not wait for its TIME_WAIT connections.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        default = "::" if family is IPFamily.IPV6 else "0.0.0.0"
        sock.bind((bind_host or default, port))
    except BaseException:
        sock.close()
        raise
    return sock


Refusal = Callable[[str], "str | None"]


class ServiceListener(abc.ABC):
    """One service port's listener in one family and protocol.

    ``refusal`` says why an endpoint address must not be dialled (default: loopback,
    link-local, unspecified, multicast); a relay confined to 127.0.0.1 passes its own.
    """

    protocol: Protocol

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        *,
        balancer: Balancer,
        limits: RelayLimits,
        budget: ConnectionBudget,
        stats: UserspaceStats,
        clock: Clock,
        family: IPFamily,
        refusal: Callable[[str], str | None] = refusal_reason,
    ) -> None:
        self.name = name
        self._refusal = refusal
        self.family = family
        self.port: int = sock.getsockname()[1]
        self._sock = sock
        self._balancer = balancer
        self._limits = limits
        self._budget = budget
        self._stats = stats
        self._clock = clock
        self._refused: set[Target] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def targets(self) -> tuple[Target, ...]:
        return self._balancer.targets

    @property
    @abc.abstractmethod
    def connections(self) -> int:
        """Open connections (TCP, including those being dialled) or sessions (UDP)."""

    def update(self, targets: Sequence[Target], affinity_timeout: float | None) -> None:
        usable: list[Target] = []
        refused: set[Target] = set()
        for target in targets:
            reason = self._refusal(target.ip)
            if reason is None and target.family is not self.family:
                reason = f"{target.ip} is not an {self.family} address"
            if reason is None:
                usable.append(target)
                continue
            refused.add(target)
            if target not in self._refused:
                # Counted and logged once per appearance, not on every sync.
                self._stats.refused_endpoints += 1
                log.warning("%s: endpoint %s refused, never dialled: %s", self.name, target, reason)
        self._refused = refused
        removed = frozenset(self._balancer.targets) - frozenset(usable)
        self._balancer.update(usable, affinity_timeout)
        if removed:
            self._targets_removed(removed)

    @abc.abstractmethod
    def _targets_removed(self, removed: frozenset[Target]) -> None: ...

    @abc.abstractmethod
    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting and release the port now; close what is open after ``grace``."""
