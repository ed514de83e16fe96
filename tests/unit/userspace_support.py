"""Helpers for the userspace data-plane tests: backends and listeners on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kproxy.clock import FakeClock
from kproxy.model.types import IPFamily
from kproxy.userspace.balancer import Balancer
from kproxy.userspace.limits import ConnectionBudget, RelayLimits
from kproxy.userspace.listener import TcpServiceListener, open_tcp_listener, open_udp_listener
from kproxy.userspace.stats import UserspaceStats
from kproxy.userspace.targets import Target, refusal_reason
from kproxy.userspace.tcp_relay import Carriers
from kproxy.userspace.udp_relay import UdpServiceListener

LOCALHOST = "127.0.0.1"
# Generous bound for awaiting an event that must happen; never a measure of speed.
PATIENCE = 20.0


def loopback_allowed(ip: str) -> str | None:
    """Refusal policy for tests confined to 127.0.0.1: that address alone may be dialled."""
    return None if ip == LOCALHOST else refusal_reason(ip)


def closed_port() -> tuple[socket.socket, int]:
    """A port bound but not listening (connections to it are refused); keep the socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOCALHOST, 0))
    return sock, sock.getsockname()[1]


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Backend:
    server: asyncio.Server
    port: int
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def target(self) -> Target:
        return Target(LOCALHOST, self.port)


async def tcp_backend(handler: Handler) -> Backend:
    backend: Backend

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend.writers.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the test is over and its loop closing
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, LOCALHOST, 0)
    backend = Backend(server, server.sockets[0].getsockname()[1])
    return backend


def greeter(name: str) -> Handler:
    """A backend that says its name, then echoes until the client closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name.encode() + b"\n")
        await writer.drain()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    return handle


@dataclass
class Plane:
    clock: FakeClock
    limits: RelayLimits
    budget: ConnectionBudget
    stats: UserspaceStats


def plane(**limits: float) -> Plane:
    relay_limits = RelayLimits(**limits)  # type: ignore[arg-type]
    budget = ConnectionBudget.for_limits(relay_limits)
    return Plane(FakeClock(), relay_limits, budget, UserspaceStats())


async def tcp_listener(
    p: Plane,
    targets: list[Target],
    *,
    affinity: float | None = None,
    carriers: Carriers | None = None,
    loopback: bool = True,
) -> TcpServiceListener:
    listener = await open_tcp_listener(
        "test/svc:tcp",
        balancer=Balancer(p.clock),
        limits=p.limits,
        budget=p.budget,
        stats=p.stats,
        clock=p.clock,
        family=IPFamily.IPV4,
        bind_host=LOCALHOST,
        carriers=carriers,
        refusal=loopback_allowed if loopback else refusal_reason,
    )
    listener.update(targets, affinity)
    return listener


async def udp_listener(
    p: Plane, targets: list[Target], *, affinity: float | None = None
) -> UdpServiceListener:
    listener = await open_udp_listener(
        "test/svc:udp",
        balancer=Balancer(p.clock),
        limits=p.limits,
        budget=p.budget,
        stats=p.stats,
        clock=p.clock,
        family=IPFamily.IPV4,
        bind_host=LOCALHOST,
        refusal=loopback_allowed,
    )
    listener.update(targets, affinity)
    return listener


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(LOCALHOST, port), PATIENCE)


async def read_line(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), PATIENCE)


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything until the peer closes; an RST ends it too (raises ConnectionResetError)."""
    return await asyncio.wait_for(reader.read(), PATIENCE)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait for real I/O to make ``condition`` true (the relay runs in this loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


async def expect_reset(port: int) -> None:
    """A connection to ``port`` is reset (possibly before the client saw it established)."""
    try:
        reader, writer = await connect(port)
    except ConnectionResetError:
        return
    try:
        await read_to_end(reader)
    except ConnectionResetError:
        return
    finally:
        writer.close()
    raise AssertionError(f"connection to port {port} ended without a reset")


def loop_policies() -> list[object]:
    """asyncio's own loop, and uvloop's when installed: the relays must work on both."""
    import pytest

    policies: list[object] = [pytest.param(asyncio.DefaultEventLoopPolicy(), id="asyncio")]
    try:
        import uvloop
    except ImportError:
        return policies
    return [*policies, pytest.param(uvloop.EventLoopPolicy(), id="uvloop")]
