"""Per-service health check node ports (externalTrafficPolicy Local), served with aiohttp.

After every sync the caller hands over the services that need a health check port
(:func:`kproxy.healthcheck_status.health_check_ports`) and the local ready endpoint counts
(:func:`kproxy.healthcheck_status.local_ready_endpoint_counts`), in that order, as
kube-proxy does. Each service gets one HTTP listener per bind address: by default one
dual-stack wildcard socket (all node addresses), or the node's ``--nodeport-addresses``
IPs when the caller passes them.

A port that cannot be bound (another process holds it) is not fatal: like kube-proxy, the
service is left without a listener and the next ``sync_services`` tries again. The failure
is logged once, not on every sync; the recovery is logged too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from aiohttp.web_request import BaseRequest

from kproxy.healthcheck_status import service_health_response
from kproxy.model.types import NamespacedName

log = logging.getLogger(__name__)

LISTEN_BACKLOG: Final = 128
KEEPALIVE_SECONDS: Final = 75.0
# How long a closing listener waits for a request already being answered.
SHUTDOWN_SECONDS: Final = 1.0


def _always_healthy() -> bool:
    return True


@dataclass
class _Listener:
    port: int
    web_server: web.Server
    servers: list[asyncio.Server] = field(default_factory=list)


class ServiceHealthServer:
    """Opens, answers and closes the health check node ports of this node's services.

    ``bind_addresses``: one listener per given IP; None (or empty, as kube-proxy falls back
    when no node address matches ``--nodeport-addresses``) listens on every IPv4 and IPv6
    address. ``proxy_healthy`` is asked on every request: when it says no, every service
    answers 503 (``serviceProxyHealthy: false``). Calls are not meant to overlap: one sync
    at a time, as the sync runner does.
    """

    def __init__(
        self,
        *,
        bind_addresses: Sequence[str] | None = None,
        proxy_healthy: Callable[[], bool] = _always_healthy,
    ) -> None:
        self._bind_addresses: tuple[str | None, ...] = tuple(bind_addresses or ()) or (None,)
        self._proxy_healthy = proxy_healthy
        self._listeners: dict[NamespacedName, _Listener] = {}
        self._counts: dict[NamespacedName, int] = {}
        # The last bind failure logged per service, so that retries do not repeat it.
        self._bind_failures: dict[NamespacedName, tuple[int, str]] = {}

    # -- state the caller updates ---------------------------------------------------------------

    async def sync_services(self, ports: Mapping[NamespacedName, int]) -> None:
        """Make exactly these services listen on these ports (close, reopen, open as needed)."""
        for service, listener in list(self._listeners.items()):
            if ports.get(service) != listener.port:
                log.info("closing health check of %s on port %d", service, listener.port)
                del self._listeners[service]
                await _close(listener)
        for service in [s for s in self._bind_failures if s not in ports]:
            del self._bind_failures[service]
        for service, port in ports.items():
            if service not in self._listeners:
                await self._open(service, port)

    def update_endpoints(self, counts: Mapping[NamespacedName, int]) -> None:
        """Local ready endpoints per service; a service missing from ``counts`` has none."""
        self._counts = dict(counts)

    async def close(self) -> None:
        listeners = list(self._listeners.values())
        self._listeners.clear()
        self._bind_failures.clear()
        for listener in listeners:
            await _close(listener)

    # -- introspection --------------------------------------------------------------------------

    @property
    def listening(self) -> dict[NamespacedName, int]:
        """The services that have their listeners open, with their ports."""
        return {service: listener.port for service, listener in self._listeners.items()}

    def local_endpoints(self, service: NamespacedName) -> int:
        return self._counts.get(service, 0)

    # -- internals ------------------------------------------------------------------------------

    async def _open(self, service: NamespacedName, port: int) -> None:
        async def answer(request: BaseRequest) -> web.StreamResponse:
            return self._answer(service)

        listener = _Listener(port, web.Server(answer, access_log=None,
                                              keepalive_timeout=KEEPALIVE_SECONDS))
        loop = asyncio.get_running_loop()
        try:
            for address in self._bind_addresses:
                sock = _listening_socket(address, port)
                try:
                    server = await loop.create_server(listener.web_server, sock=sock)
                except BaseException:
                    sock.close()
                    raise
                listener.servers.append(server)
        except OSError as error:
            # Whatever did open is closed again, so that the next sync starts clean.
            await _close(listener)
            self._report_bind_failure(service, port, error)
            return
        self._listeners[service] = listener
        if self._bind_failures.pop(service, None) is not None:
            log.info("health check of %s now listens on port %d", service, port)
        else:
            log.info("opened health check of %s on port %d", service, port)

    def _report_bind_failure(self, service: NamespacedName, port: int, error: OSError) -> None:
        reason = error.strerror or str(error)
        if self._bind_failures.get(service) != (port, reason):
            log.warning("cannot open health check of %s on port %d: %s (retrying on every sync)",
                        service, port, reason)
        else:
            log.debug("health check of %s still cannot open port %d: %s", service, port, reason)
        self._bind_failures[service] = (port, reason)

    def _answer(self, service: NamespacedName) -> web.Response:
        if service not in self._listeners:
            # A request racing the close; kube-proxy answers it with an empty 200 too.
            return web.Response()
        response = service_health_response(
            service, self._counts.get(service, 0), self._proxy_healthy())
        return web.Response(status=response.status, headers=dict(response.headers),
                            body=response.body)


def _listening_socket(address: str | None, port: int) -> socket.socket:
    """A bound, listening TCP socket on ``address`` (None: every IPv4 and IPv6 address)."""
    if address is None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError as error:
            if error.errno != errno.EAFNOSUPPORT:
                raise
            return _listening_socket("0.0.0.0", port)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        host = "::"
    else:
        family = (socket.AF_INET6 if ipaddress.ip_address(address).version == 6
                  else socket.AF_INET)
        sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        host = address
    try:
        # As Go's listeners: a port just closed (connections in TIME_WAIT) can be reused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _close(listener: _Listener) -> None:
    for server in listener.servers:
        server.close()
    # Keep-alive connections would otherwise go on answering for a closed service: idle ones
    # close at once, one in the middle of a request once it is answered.
    listener.web_server.pre_shutdown()
    with contextlib.suppress(Exception):
        await listener.web_server.shutdown(SHUTDOWN_SECONDS)
    for server in listener.servers:
        await server.wait_closed()
