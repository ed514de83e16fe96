"""UDP relay: one session per client address, each with a socket connected to one endpoint.

A connected socket only receives datagrams from its endpoint, and the session sends them
only to its own client: replies cannot reach another client. Each datagram is received
into one 64 KiB buffer (larger than any UDP payload), so nothing is truncated; the buffer
is shared by all sessions since every callback receives and sends before it returns.

Replies leave from the address the client sent to (IP_PKTINFO): on a node with several
addresses, or with traffic redirected to the listener, a reply from another source address
would not match the client's flow and would be dropped by it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from kproxy.clock import Clock
from kproxy.model.types import IPFamily, Protocol
from kproxy.userspace.balancer import Balancer
from kproxy.userspace.limits import ConnectionBudget, RelayLimits
from kproxy.userspace.service_listener import Refusal, ServiceListener, address_family
from kproxy.userspace.stats import UserspaceStats
from kproxy.userspace.sweeper import Sweeper
from kproxy.userspace.targets import Target, refusal_reason

# Larger than the largest UDP payload (65,507 bytes over IPv4, 65,527 over IPv6).
DATAGRAM_BUFFER = 65536
_BATCH = 64
# Linux's IP_PKTINFO (the socket module names only the IPv6 one).
_IP_PKTINFO = 8
_CMSG_SPACE = socket.CMSG_SPACE(64)


@dataclass(slots=True, eq=False)
class UdpSession:
    client: tuple[Any, ...]  # the client's address as recvfrom gives it
    local_ip: str  # where the client sent to: replies leave from there
    target: Target
    sock: socket.socket
    active: bool = True
    idle_since: float = 0.0
    pktinfo: list[tuple[int, int, bytes]] = field(default_factory=list)


def _pktinfo(family: IPFamily, local_ip: str) -> list[tuple[int, int, bytes]]:
    packed = ipaddress.ip_address(local_ip).packed
    if family is IPFamily.IPV6:
        return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, packed + struct.pack("@I", 0))]
    # struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
    return [(socket.IPPROTO_IP, _IP_PKTINFO, struct.pack("@i", 0) + packed + bytes(4))]


def _destination(family: IPFamily, ancillary: list[tuple[int, int, bytes]]) -> str | None:
    for level, kind, data in ancillary:
        if family is IPFamily.IPV4 and level == socket.IPPROTO_IP and kind == _IP_PKTINFO:
            return socket.inet_ntop(socket.AF_INET, data[8:12])
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            return socket.inet_ntop(socket.AF_INET6, data[:16])
    return None


class UdpServiceListener(ServiceListener):
    protocol = Protocol.UDP

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
        refusal: Refusal = refusal_reason,
    ) -> None:
        super().__init__(
            name,
            sock,
            balancer=balancer,
            limits=limits,
            budget=budget,
            stats=stats,
            clock=clock,
            family=family,
            refusal=refusal,
        )
        self._loop = asyncio.get_running_loop()
        self._address_family = address_family(family)
        if family is IPFamily.IPV6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        self._buffer = memoryview(bytearray(DATAGRAM_BUFFER))
        self._sessions: dict[tuple[Any, ...], UdpSession] = {}
        self._sweeper = Sweeper(clock, limits.udp_idle_timeout / 4, self._sweep)

    @property
    def connections(self) -> int:
        return len(self._sessions)

    @property
    def sessions(self) -> tuple[UdpSession, ...]:
        return tuple(self._sessions.values())

    def start(self) -> None:
        self._loop.add_reader(self._sock.fileno(), self._on_datagrams)

    def _on_datagrams(self) -> None:
        buffer = self._buffer
        for _ in range(_BATCH):
            try:
                size, ancillary, _flags, client = self._sock.recvmsg_into(
                    [buffer], _CMSG_SPACE
                )
            except BlockingIOError:
                return
            except OSError:
                # An ICMP error queued on the listening socket concerns one earlier reply.
                continue
            session = self._sessions.get(client)
            if session is None:
                session = self._open_session(client, _destination(self.family, ancillary))
                if session is None:
                    continue
            session.active = True
            try:
                self._stats.bytes_relayed += session.sock.send(buffer[:size])
            except BlockingIOError:
                pass  # the endpoint's socket buffer is full: dropped, as the network would
            except ConnectionRefusedError:
                # An earlier datagram drew "port unreachable": this endpoint is not serving.
                self._balancer.report_failure(session.target)
                self._close_session(session)
            except OSError:
                self._close_session(session)

    def _open_session(self, client: tuple[Any, ...], local_ip: str | None) -> UdpSession | None:
        if (
            len(self._sessions) >= self._limits.max_udp_sessions_per_service
            or not self._budget.udp_sessions.try_acquire()
        ):
            self._stats.rejected_connections += 1
            return None
        target = self._balancer.pick(client[0])
        sock: socket.socket | None = None
        try:
            if target is None:
                raise ConnectionRefusedError("no endpoint")
            sock = socket.socket(self._address_family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect((target.ip, target.port))
        except OSError:
            if sock is not None:
                sock.close()
            if target is not None:
                self._balancer.report_failure(target)
            self._budget.udp_sessions.release()
            self._stats.failed_connections += 1
            return None
        session = UdpSession(client, local_ip or "", target, sock)
        if local_ip:
            session.pktinfo = _pktinfo(self.family, local_ip)
        self._sessions[client] = session
        self._loop.add_reader(sock.fileno(), functools.partial(self._on_replies, session))
        self._stats.udp_sessions += 1
        self._stats.udp_sessions_created += 1
        self._sweeper.ensure_running()
        return session

    def _on_replies(self, session: UdpSession) -> None:
        buffer = self._buffer
        for _ in range(_BATCH):
            try:
                size = session.sock.recv_into(buffer)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                self._balancer.report_failure(session.target)
                self._close_session(session)
                return
            except OSError:
                self._close_session(session)
                return
            session.active = True
            # Per datagram, so no contextlib.suppress (a context manager each time).
            try:  # noqa: SIM105
                self._stats.bytes_relayed += self._sock.sendmsg(
                    [buffer[:size]], session.pktinfo, 0, session.client
                )
            except OSError:
                pass  # the client's side is full or gone: the reply is dropped

    def _close_session(self, session: UdpSession) -> None:
        if self._sessions.get(session.client) is not session:
            return
        del self._sessions[session.client]
        self._loop.remove_reader(session.sock.fileno())
        session.sock.close()
        self._stats.udp_sessions -= 1
        self._budget.udp_sessions.release()

    def _sweep(self, now: float) -> bool:
        timeout = self._limits.udp_idle_timeout
        for session in list(self._sessions.values()):
            if session.active:
                session.active = False
                session.idle_since = now
            elif now - session.idle_since >= timeout:
                self._close_session(session)
        return bool(self._sessions)

    def _targets_removed(self, removed: frozenset[Target]) -> None:
        # Datagrams have no connection to finish: a session to a removed endpoint moves at
        # once (its next datagram opens a session to a current endpoint), as iptables mode
        # does by deleting the endpoint's UDP conntrack entries.
        for session in list(self._sessions.values()):
            if session.target in removed:
                self._close_session(session)

    async def close(self, grace: float = 0.0) -> None:
        # UDP sessions hold no conversation that a grace period would let finish.
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for session in list(self._sessions.values()):
            self._close_session(session)
        await self._sweeper.stop()
