"""The health check node port server on loopback: answers, transitions, closing, bind failures."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from kproxy.healthcheck import ServiceHealthServer
from kproxy.model.types import NamespacedName

WEB = NamespacedName("shop", "web")
API = NamespacedName("shop", "api")
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def has_ipv6_loopback() -> bool:
    try:
        free_port("::1")
    except OSError:
        return False
    return True


class Health:
    """The proxy health the server asks for on every request."""

    def __init__(self) -> None:
        self.healthy = True

    def __call__(self) -> bool:
        return self.healthy


@pytest.fixture
def proxy_health() -> Health:
    return Health()


@pytest.fixture
async def server(proxy_health: Health) -> AsyncIterator[ServiceHealthServer]:
    health_server = ServiceHealthServer(bind_addresses=[LOOPBACK], proxy_healthy=proxy_health)
    try:
        yield health_server
    finally:
        await health_server.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(client: aiohttp.ClientSession, port: int, host: str = LOOPBACK,
              path: str = "/", method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    authority = f"[{host}]" if ":" in host else host
    async with client.request(method, f"http://{authority}:{port}{path}") as response:
        return response.status, dict(response.headers), await response.read()


def refused(port: int, host: str = LOOPBACK) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return True
    return False


@contextlib.contextmanager
def port_taken(port: int) -> Iterator[None]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((LOOPBACK, port))
        holder.listen(1)
        yield


async def test_answers_kube_proxys_response(server: ServiceHealthServer,
                                            client: aiohttp.ClientSession) -> None:
    port = free_port()
    await server.sync_services({WEB: port})
    server.update_endpoints({WEB: 2})
    status, headers, body = await get(client, port, path="/anything?x=1")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "2"
    assert body == (b'{\n\t"service": {\n\t\t"namespace": "shop",\n\t\t"name": "web"\n\t},\n'
                    b'\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}')


async def test_status_follows_endpoints_and_proxy_health(
        server: ServiceHealthServer, client: aiohttp.ClientSession,
        proxy_health: Health) -> None:
    port = free_port()
    await server.sync_services({WEB: port})
    observed = []
    for counts, healthy in [({}, True), ({WEB: 1}, True), ({WEB: 1}, False),
                            ({WEB: 3}, True), ({API: 4}, True)]:
        server.update_endpoints(counts)
        proxy_health.healthy = healthy
        status, headers, _ = await get(client, port)
        observed.append((status, headers["X-Load-Balancing-Endpoint-Weight"]))
    assert observed == [(503, "0"), (200, "1"), (503, "1"), (200, "3"), (503, "0")]


async def test_head_gets_the_headers_without_a_body(server: ServiceHealthServer,
                                                    client: aiohttp.ClientSession) -> None:
    port = free_port()
    await server.sync_services({WEB: port})
    server.update_endpoints({WEB: 1})
    status, headers, body = await get(client, port, method="HEAD")
    assert (status, headers["X-Load-Balancing-Endpoint-Weight"], body) == (200, "1", b"")


async def test_each_service_answers_for_itself(server: ServiceHealthServer,
                                               client: aiohttp.ClientSession) -> None:
    web_port, api_port = free_port(), free_port()
    await server.sync_services({WEB: web_port, API: api_port})
    server.update_endpoints({API: 1})
    assert (await get(client, web_port))[0] == 503
    status, _, body = await get(client, api_port)
    assert status == 200 and b'"name": "api"' in body
    assert server.listening == {WEB: web_port, API: api_port}


async def test_removed_service_closes_its_port_and_connections(
        server: ServiceHealthServer, client: aiohttp.ClientSession) -> None:
    web_port, api_port = free_port(), free_port()
    await server.sync_services({WEB: web_port, API: api_port})
    server.update_endpoints({WEB: 1, API: 1})
    assert (await get(client, web_port))[0] == 200  # leaves a keep-alive connection open

    await server.sync_services({API: api_port})
    assert refused(web_port)
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(client, web_port)
    assert (await get(client, api_port))[0] == 200
    assert server.listening == {API: api_port}


async def test_changed_port_moves_the_listener(server: ServiceHealthServer,
                                               client: aiohttp.ClientSession) -> None:
    old_port, new_port = free_port(), free_port()
    await server.sync_services({WEB: old_port})
    await server.sync_services({WEB: new_port})
    server.update_endpoints({WEB: 1})
    assert refused(old_port)
    assert (await get(client, new_port))[0] == 200


async def test_port_in_use_is_logged_once_and_retried(
        server: ServiceHealthServer, client: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    busy_port, api_port = free_port(), free_port()
    with caplog.at_level(logging.INFO, logger="kproxy.healthcheck"):
        with port_taken(busy_port):
            await server.sync_services({WEB: busy_port, API: api_port})
            await server.sync_services({WEB: busy_port, API: api_port})
            assert server.listening == {API: api_port}
        await server.sync_services({WEB: busy_port, API: api_port})
    server.update_endpoints({WEB: 1})
    assert (await get(client, busy_port))[0] == 200
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"port {busy_port}" in warnings[0].getMessage()
    assert any("now listens" in r.getMessage() for r in caplog.records)


async def test_partial_bind_failure_closes_what_did_open(proxy_health: Health) -> None:
    port = free_port()
    # The second address cannot be bound (it is not this machine's): nothing stays open.
    health_server = ServiceHealthServer(bind_addresses=[LOOPBACK, "192.0.2.1"],
                                        proxy_healthy=proxy_health)
    try:
        await health_server.sync_services({WEB: port})
        assert health_server.listening == {}
        assert refused(port)
    finally:
        await health_server.close()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback address here")
async def test_listens_on_every_given_address(proxy_health: Health,
                                              client: aiohttp.ClientSession) -> None:
    port = free_port()
    health_server = ServiceHealthServer(bind_addresses=[LOOPBACK, "::1"],
                                        proxy_healthy=proxy_health)
    try:
        await health_server.sync_services({WEB: port})
        health_server.update_endpoints({WEB: 1})
        assert (await get(client, port))[0] == 200
        assert (await get(client, port, host="::1"))[0] == 200
    finally:
        await health_server.close()


async def test_close_closes_everything(server: ServiceHealthServer) -> None:
    port = free_port()
    await server.sync_services({WEB: port})
    await server.close()
    assert refused(port)
    assert server.listening == {}
