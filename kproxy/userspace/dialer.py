"""Connecting to an endpoint for an accepted client: a bounded series of attempts, each to the
next endpoint the balancer offers, with growing timeouts (kube-proxy's userspace dialer:
250 ms, 500 ms, 1 s, 2 s). Callback-driven, like the relay, so that a connection costs no task.

Dial timeouts run on the event loop's own clock: they bound waiting on the network, which
no test clock can speed up.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable

from kproxy.userspace.balancer import Balancer
from kproxy.userspace.targets import Target

# socket() failing with these is the node's problem, not the endpoint's.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

DialDone = Callable[[socket.socket | None, Target | None], None]


class Dial:
    """One client's dial: calls ``done(socket, target)`` once, with ``(None, None)`` when no
    attempt succeeded (no target to pick, every attempt failed, or no descriptors left)."""

    __slots__ = (
        "_attempt",
        "_balancer",
        "_client_ip",
        "_done",
        "_family",
        "_loop",
        "_sock",
        "_target",
        "_timeouts",
        "_timer",
        "_tried",
        "finished",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        balancer: Balancer,
        client_ip: str,
        family: socket.AddressFamily,
        timeouts: tuple[float, ...],
        done: DialDone,
    ) -> None:
        self._loop = loop
        self._balancer = balancer
        self._client_ip = client_ip
        self._family = family
        self._timeouts = timeouts
        self._done = done
        self._attempt = 0
        self._tried: list[Target] = []
        self._sock: socket.socket | None = None
        self._target: Target | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.finished = False

    def start(self) -> None:
        self._next_attempt()

    def cancel(self) -> None:
        if self.finished:
            return
        self._abandon_attempt()
        self._finish(None, None)

    def _next_attempt(self) -> None:
        while self._attempt < len(self._timeouts):
            timeout = self._timeouts[self._attempt]
            self._attempt += 1
            target = self._balancer.pick(self._client_ip, exclude=self._tried)
            if target is None and self._tried:
                # Every target was tried once: go round again (a single-endpoint service
                # gets all its attempts, as with kube-proxy).
                self._tried.clear()
                target = self._balancer.pick(self._client_ip)
            if target is None:
                break
            self._tried.append(target)
            try:
                # Non-blocking from the start: no fcntl round trip per connection.
                sock = socket.socket(self._family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            except OSError as error:
                if error.errno in _RESOURCE_ERRORS:
                    break
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex((target.ip, target.port))
            if code == 0:
                self._balancer.report_success(target)
                self._finish(sock, target)
                return
            if code == errno.EINPROGRESS:
                self._sock = sock
                self._target = target
                self._loop.add_writer(sock.fileno(), self._on_connected)
                self._timer = self._loop.call_later(timeout, self._on_timeout)
                return
            sock.close()
            self._balancer.report_failure(target)
        self._finish(None, None)

    def _on_connected(self) -> None:
        sock, target = self._sock, self._target
        assert sock is not None and target is not None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._abandon_attempt(close=code != 0)
        if code == 0:
            self._balancer.report_success(target)
            self._finish(sock, target)
        else:
            self._balancer.report_failure(target)
            self._next_attempt()

    def _on_timeout(self) -> None:
        target = self._target
        self._timer = None
        self._abandon_attempt()
        if target is not None:
            self._balancer.report_failure(target)
        self._next_attempt()

    def _abandon_attempt(self, close: bool = True) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._loop.remove_writer(self._sock.fileno())
            if close:
                self._sock.close()
            self._sock = None
            self._target = None

    def _finish(self, sock: socket.socket | None, target: Target | None) -> None:
        self.finished = True
        self._done(sock, target)
