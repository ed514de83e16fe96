"""Listeners, one per service port, family and protocol: accept, pick an endpoint, relay.

TCP: accepting stops while a cap (per service, or the process-wide budget) is reached, so
that further connections wait in the kernel's backlog instead of being accepted and
starved; running out of descriptors pauses accepting briefly instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import socket

from kproxy.clock import Clock
from kproxy.model.types import IPFamily, Protocol
from kproxy.userspace.balancer import Balancer
from kproxy.userspace.dialer import Dial
from kproxy.userspace.limits import ConnectionBudget, RelayLimits
from kproxy.userspace.service_listener import (
    Refusal,
    ServiceListener,
    address_family,
    bound_socket,
    log,
)
from kproxy.userspace.stats import UserspaceStats
from kproxy.userspace.sweeper import Sweeper
from kproxy.userspace.targets import Target, refusal_reason
from kproxy.userspace.tcp_relay import Carriers, TcpRelay, reset_and_close
from kproxy.userspace.udp_relay import UdpServiceListener

__all__ = ["ServiceListener", "TcpServiceListener", "open_tcp_listener", "open_udp_listener"]

# Connections accepted per wake-up: enough to drain a burst, few enough to let relays run.
_ACCEPT_BATCH = 64
_BACKLOG = 4096
# accept() errors that concern one connection only (it went away before we took it).
_TRANSIENT_ACCEPT_ERRORS = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.EHOSTUNREACH}
)
# After running out of descriptors, accepting resumes after this (or when one closes).
RESOURCE_PAUSE = 0.1


class TcpServiceListener(ServiceListener):
    protocol = Protocol.TCP

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
        carriers: Carriers | None = None,
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
        # Carriers passed in may be shared with other listeners: only our own are closed.
        self._owns_carriers = carriers is None
        self._carriers = carriers or Carriers(limits.pipe_size)
        self._address_family = address_family(family)
        self._timeouts = limits.dial_timeouts()
        self._relays: set[TcpRelay] = set()
        self._dials: dict[socket.socket, Dial] = {}
        self._open = 0
        self._accepting = False
        self._waiting_for_budget = False
        self._resource_timer: asyncio.TimerHandle | None = None
        self._grace_tasks: set[asyncio.Task[None]] = set()
        self._drained: asyncio.Future[None] | None = None
        self._idle = (
            _IdleSweep(clock, limits.idle_timeout, self._relays) if limits.idle_timeout else None
        )

    @property
    def connections(self) -> int:
        return self._open

    @property
    def accepting(self) -> bool:
        return self._accepting

    def start(self) -> None:
        self._resume()

    # Accepting

    def _resume(self) -> None:
        if self._closed or self._accepting:
            return
        self._accepting = True
        self._loop.add_reader(self._sock.fileno(), self._on_acceptable)

    def _pause(self) -> None:
        if self._accepting:
            self._accepting = False
            self._loop.remove_reader(self._sock.fileno())

    def _over_cap(self) -> bool:
        return (
            self._open >= self._limits.max_connections_per_service
            or self._budget.connections.exhausted
        )

    def _on_acceptable(self) -> None:
        # Readable means a connection is waiting: over a cap, it is left in the backlog and
        # counted. Reaching the cap with this batch only ends the batch; if more are waiting,
        # the next wake-up pauses and counts.
        if self._over_cap():
            self._pause_for_cap()
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                client, address = self._sock.accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in _TRANSIENT_ACCEPT_ERRORS:
                    continue
                # Out of descriptors or memory (or anything unforeseen): pause and retry
                # rather than spin on a listening socket that stays readable.
                self._pause_for_resources(error)
                return
            self._admit(client, address[0])
            if self._over_cap():
                return

    def _pause_for_cap(self) -> None:
        self._pause()
        self._stats.rejected_connections += 1
        if not self._waiting_for_budget:
            self._waiting_for_budget = True
            self._budget.connections.on_release(self._capacity_freed)

    def _capacity_freed(self) -> bool:
        """Called by the budget when any listener releases a connection; True = done waiting."""
        if self._closed:
            self._waiting_for_budget = False
            return True
        if self._over_cap():
            return False
        self._waiting_for_budget = False
        self._resume()
        return True

    def _pause_for_resources(self, error: OSError) -> None:
        self._pause()
        log.warning("%s: accepting paused for %.1fs: %s", self.name, RESOURCE_PAUSE, error)
        if self._resource_timer is None:
            self._resource_timer = self._loop.call_later(RESOURCE_PAUSE, self._resource_pause_over)

    def _resource_pause_over(self) -> None:
        self._resource_timer = None
        self._resume()

    # One connection

    def _admit(self, client: socket.socket, client_ip: str) -> None:
        self._budget.connections.try_acquire()
        self._open += 1
        stats = self._stats
        stats.accepted_connections += 1
        stats.active_connections += 1
        client.setblocking(False)  # TCP_NODELAY it inherits from the listening socket
        dial = Dial(
            self._loop,
            self._balancer,
            client_ip,
            self._address_family,
            self._timeouts,
            functools.partial(self._dialled, client),
        )
        self._dials[client] = dial
        dial.start()

    def _dialled(
        self, client: socket.socket, upstream: socket.socket | None, target: Target | None
    ) -> None:
        del self._dials[client]
        if upstream is None or target is None or self._closed:
            # No endpoint, or none answered: reset so the client fails at once.
            self._stats.failed_connections += 1
            reset_and_close(client)
            if upstream is not None:
                upstream.close()
            self._release()
            return
        relay = TcpRelay(
            self._loop, client, upstream, target, self._carriers, self._stats, self._relay_closed
        )
        self._relays.add(relay)
        relay.start()
        if self._idle is not None:
            self._idle.ensure_running()

    def _relay_closed(self, relay: TcpRelay) -> None:
        self._relays.discard(relay)
        self._release()

    def _release(self) -> None:
        self._open -= 1
        self._stats.active_connections -= 1
        self._budget.connections.release()
        if self._resource_timer is not None:
            # A descriptor was just freed: no need to wait out the pause.
            self._resource_timer.cancel()
            self._resource_timer = None
            self._resume()
        if self._drained is not None and self._open == 0 and not self._drained.done():
            self._drained.set_result(None)

    # Endpoint changes and shutdown

    def _targets_removed(self, removed: frozenset[Target]) -> None:
        if any(relay.target in removed for relay in self._relays) or self._dials:
            task = self._loop.create_task(self._close_after_grace(removed))
            self._grace_tasks.add(task)
            task.add_done_callback(self._grace_tasks.discard)

    async def _close_after_grace(self, removed: frozenset[Target]) -> None:
        await self._clock.sleep(self._limits.endpoint_grace)
        current = frozenset(self._balancer.targets)
        for relay in list(self._relays):
            # An endpoint that came back within the grace period keeps its connections.
            if relay.target in removed and relay.target not in current:
                relay.close()

    async def close(self, grace: float = 0.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._pause()
        if self._resource_timer is not None:
            self._resource_timer.cancel()
            self._resource_timer = None
        self._sock.close()
        for task in list(self._grace_tasks):
            task.cancel()
        if grace > 0 and self._open:
            self._drained = self._loop.create_future()
            timer = self._loop.create_task(self._clock.sleep(grace))
            await asyncio.wait([self._drained, timer], return_when=asyncio.FIRST_COMPLETED)
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        for dial in list(self._dials.values()):
            dial.cancel()
        for relay in list(self._relays):
            relay.close()
        if self._idle is not None:
            await self._idle.stop()
        if self._owns_carriers:
            self._carriers.close()


class _IdleSweep:
    """Closes relays that saw no byte in either direction for ``timeout`` seconds."""

    def __init__(self, clock: Clock, timeout: float, relays: set[TcpRelay]) -> None:
        self._timeout = timeout
        self._relays = relays
        self._idle_since: dict[TcpRelay, float] = {}
        self._sweeper = Sweeper(clock, timeout / 4, self._sweep)

    def ensure_running(self) -> None:
        self._sweeper.ensure_running()

    async def stop(self) -> None:
        await self._sweeper.stop()

    def _sweep(self, now: float) -> bool:
        idle_since = self._idle_since
        expired: list[TcpRelay] = []
        for relay in self._relays:
            if relay.active:
                relay.active = False
                idle_since[relay] = now
            elif now - idle_since.setdefault(relay, now) >= self._timeout:
                expired.append(relay)
        for relay in expired:
            relay.close()
        for relay in [r for r in idle_since if r.closed]:
            del idle_since[relay]
        return bool(self._relays)


async def open_tcp_listener(
    name: str,
    *,
    balancer: Balancer,
    limits: RelayLimits,
    budget: ConnectionBudget,
    stats: UserspaceStats,
    clock: Clock,
    family: IPFamily,
    bind_host: str = "",
    port: int = 0,
    carriers: Carriers | None = None,
    refusal: Refusal = refusal_reason,
) -> TcpServiceListener:
    """A TCP listener on ``port`` (0: a free one the kernel picks); ``update`` gives it its
    targets. A port in use raises OSError(EADDRINUSE)."""
    sock = bound_socket(family, socket.SOCK_STREAM, bind_host, port)
    try:
        # Accepted sockets inherit it: request/response traffic is not held back by Nagle.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.listen(_BACKLOG)
        listener = TcpServiceListener(
            name,
            sock,
            balancer=balancer,
            limits=limits,
            budget=budget,
            stats=stats,
            clock=clock,
            family=family,
            carriers=carriers,
            refusal=refusal,
        )
    except BaseException:
        sock.close()
        raise
    listener.start()
    return listener


async def open_udp_listener(
    name: str,
    *,
    balancer: Balancer,
    limits: RelayLimits,
    budget: ConnectionBudget,
    stats: UserspaceStats,
    clock: Clock,
    family: IPFamily,
    bind_host: str = "",
    port: int = 0,
    refusal: Refusal = refusal_reason,
) -> UdpServiceListener:
    """A UDP listener on ``port`` (0: a free one the kernel picks); ``update`` gives it its
    targets. A port in use raises OSError(EADDRINUSE)."""
    sock = bound_socket(family, socket.SOCK_DGRAM, bind_host, port)
    try:
        listener = UdpServiceListener(
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
    except BaseException:
        sock.close()
        raise
    listener.start()
    return listener
