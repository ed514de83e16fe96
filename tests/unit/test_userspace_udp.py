"""UDP sessions on 127.0.0.1: one per client, replies to their client only, expiry, caps."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from typing import cast

import pytest
from userspace_support import (
    LOCALHOST,
    PATIENCE,
    eventually,
    loop_policies,
    plane,
    udp_listener,
)

from kproxy.userspace.targets import Target

# Every test runs on asyncio's loop and on uvloop's (what kproxy uses when installed).
pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module", params=loop_policies())
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    policy: asyncio.AbstractEventLoopPolicy = request.param
    return policy

class UdpBackend(asyncio.DatagramProtocol):
    """Answers each datagram with ``name|the sender's port|payload``."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self.senders: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.senders.append(addr[1])
        self.transport.sendto(self.name + b"|" + str(addr[1]).encode() + b"|" + data, addr)


async def udp_backend(name: bytes) -> tuple[UdpBackend, Target]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: UdpBackend(name), local_addr=(LOCALHOST, 0)
    )
    return protocol, Target(LOCALHOST, transport.get_extra_info("sockname")[1])


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def client(made: list[socket.socket], port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect((LOCALHOST, port))  # a connected client drops replies from anyone else
    made.append(sock)
    return sock


async def exchange(sock: socket.socket, payload: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, payload)
    return await asyncio.wait_for(loop.sock_recv(sock, 70000), PATIENCE)


async def test_each_client_gets_its_own_session_and_only_its_own_replies(
    clients: list[socket.socket],
) -> None:
    _backend, target = await udp_backend(b"a")
    p = plane(udp_idle_timeout=10.0)
    listener = await udp_listener(p, [target])
    first, second = client(clients, listener.port), client(clients, listener.port)
    one = (await exchange(first, b"one")).split(b"|")
    two = (await exchange(second, b"two")).split(b"|")
    assert one[0] == two[0] == b"a"
    assert one[2] == b"one" and two[2] == b"two"
    assert one[1] != two[1]  # the backend saw two sessions, from two sockets
    again = (await exchange(first, b"again")).split(b"|")
    assert again[1] == one[1]  # the same session for the same client
    assert listener.connections == 2
    assert p.stats.udp_sessions == 2 and p.stats.udp_sessions_created == 2
    await listener.close()
    assert p.stats.udp_sessions == 0


async def test_sessions_rotate_over_the_backends(clients: list[socket.socket]) -> None:
    (_, a), (_, b) = await udp_backend(b"a"), await udp_backend(b"b")
    p = plane(udp_idle_timeout=10.0)
    listener = await udp_listener(p, [a, b])
    names = [(await exchange(client(clients, listener.port), b"x"))[:1] for _ in range(4)]
    assert names == [b"a", b"b", b"a", b"b"]
    await listener.close()


async def test_64_kib_datagrams_pass_untruncated_both_ways(clients: list[socket.socket]) -> None:
    _, target = await udp_backend(b"a")
    p = plane(udp_idle_timeout=10.0)
    listener = await udp_listener(p, [target])
    sock = client(clients, listener.port)
    payload = os.urandom(65507 - 20)  # the reply adds its prefix: both stay within UDP's limit
    reply = await exchange(sock, payload)
    assert reply.endswith(b"|" + payload)
    assert len(reply) > 65000
    await listener.close()


async def test_an_idle_session_expires_and_the_next_datagram_opens_a_new_one(
    clients: list[socket.socket],
) -> None:
    _backend, target = await udp_backend(b"a")
    p = plane(udp_idle_timeout=4.0)
    listener = await udp_listener(p, [target])
    sock = client(clients, listener.port)
    first_port = (await exchange(sock, b"1")).split(b"|")[1]
    await p.clock.advance(2.0)
    assert (await exchange(sock, b"2")).split(b"|")[1] == first_port  # activity keeps it
    await p.clock.advance(3.0)
    assert listener.connections == 1
    await p.clock.advance(6.0)
    assert listener.connections == 0
    assert p.stats.udp_sessions == 0
    assert (await exchange(sock, b"3")).split(b"|")[1] != first_port
    assert p.stats.udp_sessions_created == 2
    await listener.close()


async def test_past_the_service_cap_new_clients_are_dropped_and_counted(
    clients: list[socket.socket],
) -> None:
    backend, target = await udp_backend(b"a")
    p = plane(udp_idle_timeout=4.0, max_udp_sessions_per_service=1)
    listener = await udp_listener(p, [target])
    first, second = client(clients, listener.port), client(clients, listener.port)
    await exchange(first, b"in")
    second.send(b"over the cap")
    await eventually(lambda: p.stats.rejected_connections == 1, "the datagram was refused")
    assert listener.connections == 1
    assert len(backend.senders) == 1  # nothing of the second client reached the backend
    await p.clock.advance(10.0)  # the first session expires: room again
    assert (await exchange(second, b"now")).endswith(b"|now")
    await listener.close()


async def test_the_global_session_budget_is_shared_by_all_listeners(
    clients: list[socket.socket],
) -> None:
    _, target = await udp_backend(b"a")
    p = plane(udp_idle_timeout=4.0, max_udp_sessions_global=1)
    first = await udp_listener(p, [target])
    second = await udp_listener(p, [target])
    await exchange(client(clients, first.port), b"in")
    client(clients, second.port).send(b"over")
    await eventually(lambda: p.stats.rejected_connections == 1, "the datagram was refused")
    assert second.connections == 0
    assert p.budget.udp_sessions.used == 1
    await first.close()
    await second.close()
    assert p.budget.udp_sessions.used == 0


async def test_sessions_to_a_removed_endpoint_move_to_a_current_one(
    clients: list[socket.socket],
) -> None:
    (_, a), (_, b) = await udp_backend(b"a"), await udp_backend(b"b")
    p = plane(udp_idle_timeout=10.0)
    listener = await udp_listener(p, [a])
    sock = client(clients, listener.port)
    assert (await exchange(sock, b"x"))[:1] == b"a"
    listener.update([b], None)
    assert (await exchange(sock, b"x"))[:1] == b"b"
    assert p.stats.udp_sessions_created == 2
    await listener.close()


async def test_datagrams_without_a_target_are_dropped_and_counted(
    clients: list[socket.socket],
) -> None:
    p = plane()
    listener = await udp_listener(p, [])
    client(clients, listener.port).send(b"nobody home")
    await eventually(lambda: p.stats.failed_connections == 1, "the datagram was refused")
    assert listener.connections == 0
    assert p.budget.udp_sessions.used == 0
    await listener.close()
