"""TCP listeners and relays on 127.0.0.1: which backend answers, bytes intact, caps, closing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest
from userspace_support import (
    LOCALHOST,
    PATIENCE,
    closed_port,
    connect,
    eventually,
    expect_reset,
    greeter,
    loop_policies,
    plane,
    read_line,
    read_to_end,
    tcp_backend,
    tcp_listener,
)

from kproxy.model.types import IPFamily
from kproxy.userspace.balancer import Balancer
from kproxy.userspace.listener import open_tcp_listener
from kproxy.userspace.targets import Target
from kproxy.userspace.tcp_relay import SPLICE_AVAILABLE, Carriers

# Every test runs on asyncio's loop and on uvloop's (what kproxy uses when installed).
pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module", params=loop_policies())
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    policy: asyncio.AbstractEventLoopPolicy = request.param
    return policy

async def greeting_via(port: int) -> bytes:
    reader, writer = await connect(port)
    try:
        return (await read_line(reader)).strip()
    finally:
        writer.close()


async def test_connections_rotate_over_the_backends() -> None:
    a, b = await tcp_backend(greeter("a")), await tcp_backend(greeter("b"))
    p = plane()
    listener = await tcp_listener(p, [a.target, b.target])
    answers = [await greeting_via(listener.port) for _ in range(4)]
    assert answers == [b"a", b"b", b"a", b"b"]
    assert p.stats.accepted_connections == 4
    await listener.close()


async def test_client_ip_affinity_holds_until_the_timeout_passes() -> None:
    a, b = await tcp_backend(greeter("a")), await tcp_backend(greeter("b"))
    p = plane()
    listener = await tcp_listener(p, [a.target, b.target], affinity=60.0)
    first = [await greeting_via(listener.port) for _ in range(3)]
    assert first == [b"a", b"a", b"a"]
    await p.clock.advance(61.0)
    assert await greeting_via(listener.port) == b"b"
    await listener.close()


async def test_a_refused_dial_moves_on_to_the_next_endpoint() -> None:
    dead_socket, dead_port = closed_port()
    live = await tcp_backend(greeter("live"))
    p = plane()
    listener = await tcp_listener(p, [Target(LOCALHOST, dead_port), live.target])
    answers = [await greeting_via(listener.port) for _ in range(3)]
    assert answers == [b"live"] * 3
    assert p.stats.failed_connections == 0
    dead_socket.close()
    await listener.close()


async def test_an_endpoint_that_keeps_failing_is_skipped_for_a_while() -> None:
    dead_socket, dead_port = closed_port()
    dead = Target(LOCALHOST, dead_port)
    live = await tcp_backend(greeter("live"))
    p = plane(failure_threshold=2, failure_cooldown=30.0)
    balancer = Balancer(p.clock, failure_threshold=2, failure_cooldown=30.0)
    listener = await open_tcp_listener(
        "test/svc:tcp",
        balancer=balancer,
        limits=p.limits,
        budget=p.budget,
        stats=p.stats,
        clock=p.clock,
        family=IPFamily.IPV4,
        bind_host=LOCALHOST,
        refusal=lambda ip: None,
    )
    listener.update([dead, live.target], None)
    for _ in range(4):
        assert await greeting_via(listener.port) == b"live"
    assert balancer.is_skipped(dead)
    await p.clock.advance(31.0)
    assert not balancer.is_skipped(dead)
    dead_socket.close()
    await listener.close()


async def test_when_every_dial_fails_the_client_is_reset() -> None:
    dead_socket, dead_port = closed_port()
    p = plane()
    listener = await tcp_listener(p, [Target(LOCALHOST, dead_port)])
    await expect_reset(listener.port)
    await eventually(lambda: listener.connections == 0, "connection released")
    assert p.stats.failed_connections == 1
    assert p.stats.active_connections == 0
    dead_socket.close()
    await listener.close()


async def test_no_target_resets_the_connection_at_once() -> None:
    p = plane()
    listener = await tcp_listener(p, [])
    await expect_reset(listener.port)
    assert p.stats.failed_connections == 1
    await listener.close()


async def test_loopback_endpoints_are_refused_and_counted() -> None:
    backend = await tcp_backend(greeter("x"))
    p = plane()
    listener = await tcp_listener(p, [backend.target], loopback=False)
    assert listener.targets == ()
    assert p.stats.refused_endpoints == 1
    listener.update([backend.target], None)  # the same refusal again is not counted again
    assert p.stats.refused_endpoints == 1
    await expect_reset(listener.port)
    assert backend.writers == []  # never dialled
    await listener.close()


@pytest.mark.parametrize(
    "use_splice",
    [
        pytest.param(
            True, marks=pytest.mark.skipif(not SPLICE_AVAILABLE, reason="no splice(2)")
        ),
        False,
    ],
    ids=["splice", "recv-send"],
)
async def test_large_payloads_arrive_intact_both_ways(use_splice: bool) -> None:
    payload = os.urandom(6 * 1024 * 1024 + 123)

    async def digest_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = await reader.readexactly(len(payload))
        writer.write(hashlib.sha256(received).hexdigest().encode() + b"\n")
        writer.write(received[::-1])
        await writer.drain()

    backend = await tcp_backend(digest_then_echo)
    p = plane(pipe_size=16384)
    carriers = Carriers(16384, use_splice=use_splice)
    listener = await tcp_listener(p, [backend.target], carriers=carriers)
    reader, writer = await connect(listener.port)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()

    sender = asyncio.create_task(send())
    digest = (await read_line(reader)).strip()
    back = await asyncio.wait_for(reader.readexactly(len(payload)), PATIENCE)
    await sender
    assert digest == hashlib.sha256(payload).hexdigest().encode()
    assert back == payload[::-1]
    assert p.stats.bytes_relayed >= 2 * len(payload)
    writer.close()
    await listener.close()


async def test_client_half_close_reaches_the_backend_which_can_still_answer() -> None:
    async def answer_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's FIN
        writer.write(b"got " + str(len(request)).encode())
        await writer.drain()

    backend = await tcp_backend(answer_after_eof)
    p = plane()
    listener = await tcp_listener(p, [backend.target])
    reader, writer = await connect(listener.port)
    writer.write(b"x" * 100_000)
    await writer.drain()
    writer.write_eof()
    assert await read_to_end(reader) == b"got 100000"
    writer.close()
    await eventually(lambda: listener.connections == 0, "relay closed after both FINs")
    await listener.close()


async def test_backend_half_close_reaches_the_client_which_can_still_send() -> None:
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def speak_then_listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner")
        writer.write_eof()
        await writer.drain()
        received.set_result(await reader.read())

    backend = await tcp_backend(speak_then_listen)
    p = plane()
    listener = await tcp_listener(p, [backend.target])
    reader, writer = await connect(listener.port)
    assert await read_to_end(reader) == b"banner"  # EOF forwarded
    writer.write(b"after your FIN")
    await writer.drain()
    writer.write_eof()
    assert await asyncio.wait_for(received, PATIENCE) == b"after your FIN"
    writer.close()
    await listener.close()


async def test_past_the_service_cap_connections_wait_in_the_backlog() -> None:
    backend = await tcp_backend(greeter("b"))
    p = plane(max_connections_per_service=2)
    listener = await tcp_listener(p, [backend.target])
    held = [await connect(listener.port) for _ in range(2)]
    for reader, _ in held:
        assert await read_line(reader) == b"b\n"
    # The kernel completes the handshake; the listener does not accept it while at the cap.
    waiting_reader, waiting_writer = await connect(listener.port)
    await eventually(lambda: p.stats.rejected_connections >= 1, "cap reached and counted")
    assert listener.connections == 2
    assert not listener.accepting
    held[0][1].close()
    assert await read_line(waiting_reader) == b"b\n"  # accepted once there was room
    assert listener.connections == 2
    for _, writer in [*held[1:], (waiting_reader, waiting_writer)]:
        writer.close()
    await listener.close()


async def test_the_global_budget_is_shared_by_all_listeners() -> None:
    backend = await tcp_backend(greeter("b"))
    p = plane(max_connections_global=1)
    first = await tcp_listener(p, [backend.target])
    second = await tcp_listener(p, [backend.target])
    reader, writer = await connect(first.port)
    assert await read_line(reader) == b"b\n"
    waiting_reader, waiting_writer = await connect(second.port)
    await eventually(lambda: not second.accepting, "second listener paused by the budget")
    assert p.stats.rejected_connections == 1
    writer.close()  # frees the budget: the other listener resumes
    assert await read_line(waiting_reader) == b"b\n"
    waiting_writer.close()
    await first.close()
    await second.close()


async def test_connections_to_a_removed_endpoint_close_after_the_grace_period() -> None:
    a, b = await tcp_backend(greeter("a")), await tcp_backend(greeter("b"))
    p = plane(endpoint_grace=30.0)
    listener = await tcp_listener(p, [a.target])
    old_reader, old_writer = await connect(listener.port)
    assert await read_line(old_reader) == b"a\n"
    listener.update([b.target], None)
    assert await greeting_via(listener.port) == b"b"  # new connections go elsewhere
    await p.clock.advance(15.0)
    old_writer.write(b"still here\n")
    assert await read_line(old_reader) == b"still here\n"  # within the grace: relayed
    await p.clock.advance(16.0)
    with pytest.raises(ConnectionResetError):
        await read_to_end(old_reader)
    old_writer.close()
    await listener.close()


async def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    backend = await tcp_backend(greeter("a"))
    p = plane(idle_timeout=100.0)
    listener = await tcp_listener(p, [backend.target])
    reader, writer = await connect(listener.port)
    assert await read_line(reader) == b"a\n"
    await p.clock.advance(60.0)
    writer.write(b"ping\n")
    assert await read_line(reader) == b"ping\n"
    await p.clock.advance(60.0)  # 60 s since the last byte: not idle long enough
    assert listener.connections == 1
    await p.clock.advance(100.0)
    with pytest.raises(ConnectionResetError):
        await read_to_end(reader)
    writer.close()
    assert listener.connections == 0
    await listener.close()


async def test_close_releases_the_port_and_resets_open_connections() -> None:
    backend = await tcp_backend(greeter("a"))
    p = plane()
    listener = await tcp_listener(p, [backend.target])
    reader, writer = await connect(listener.port)
    assert await read_line(reader) == b"a\n"
    await listener.close()
    with pytest.raises(ConnectionResetError):
        await read_to_end(reader)
    writer.close()
    probe = socket.socket()
    with pytest.raises(ConnectionRefusedError):
        probe.connect((LOCALHOST, listener.port))
    probe.close()
    assert p.stats.active_connections == 0
    assert p.budget.connections.used == 0


async def test_close_with_grace_lets_connections_finish() -> None:
    backend = await tcp_backend(greeter("a"))
    p = plane()
    listener = await tcp_listener(p, [backend.target])
    reader, writer = await connect(listener.port)
    assert await read_line(reader) == b"a\n"
    closing = asyncio.create_task(listener.close(grace=10.0))
    await p.clock.settle()
    writer.write(b"last words\n")
    assert await read_line(reader) == b"last words\n"
    writer.close()  # the conversation ends by itself: close() need not wait out the grace
    await asyncio.wait_for(closing, PATIENCE)
    assert listener.connections == 0
