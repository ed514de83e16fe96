"""--bind-address-hard-fail: a health or metrics address that cannot be bound ends
``kproxy run`` (non-zero) when set, and is retried until it can be bound otherwise."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from kproxy.app import _serve, _start_or_fail
from kproxy.config import parse_run_config
from kproxy.httpserve import ListeningApp


def occupied_port() -> socket.socket:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def server_on(port: int) -> ListeningApp:
    return ListeningApp(web.Application(), f"127.0.0.1:{port}")


def test_the_flag_sets_it() -> None:
    assert parse_run_config(["--bind-address-hard-fail"], gethostname=lambda: "n") \
        .bind_address_hard_fail
    assert not parse_run_config([], gethostname=lambda: "n").bind_address_hard_fail


async def test_hard_fail_refuses_to_start_and_closes_what_it_started() -> None:
    holder = occupied_port()
    free = server_on(0)
    busy = server_on(holder.getsockname()[1])
    try:
        assert await _start_or_fail([free, busy]) is False
        assert not free.running and not busy.running
    finally:
        holder.close()
        await free.close()


async def test_hard_fail_starts_every_server_it_can_bind() -> None:
    first, second = server_on(0), server_on(0)
    try:
        assert await _start_or_fail([first, second]) is True
        assert first.running and second.running and first.port != second.port
    finally:
        await first.close()
        await second.close()


async def test_without_it_a_busy_address_is_retried_until_free() -> None:
    holder = occupied_port()
    port = holder.getsockname()[1]
    busy = server_on(port)
    serving = asyncio.create_task(_serve(busy))
    try:
        done, _ = await asyncio.wait({serving}, timeout=0.5)
        assert not done and not busy.running  # still retrying, not given up
        holder.close()
        async with asyncio.timeout(20):
            await serving
        assert busy.running and busy.port == port
    finally:
        serving.cancel()
        await busy.close()
