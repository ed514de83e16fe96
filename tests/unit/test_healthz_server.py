"""The health server over 127.0.0.1: routes, codes, headers and body."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from kproxy.clock import FakeClock
from kproxy.healthz import HealthServer, ProxierHealth
from kproxy.model.types import NodeInfo


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> ProxierHealth:
    return ProxierHealth(clock, timeout=60.0)


@pytest.fixture
async def base_url(health: ProxierHealth) -> AsyncIterator[str]:
    server = HealthServer(health, "127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()
    assert not server.running


async def get(url: str) -> tuple[int, dict[str, object], str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json(), response.headers["X-Content-Type-Options"]


async def test_healthz_and_livez_follow_the_state(
    base_url: str, health: ProxierHealth, clock: FakeClock
) -> None:
    health.updated()
    status, body, nosniff = await get(f"{base_url}/healthz")
    assert (status, body["nodeEligible"], nosniff) == (200, True, "nosniff")
    assert body["lastUpdated"] == body["currentTime"]
    assert str(body["currentTime"]).endswith(" +0000 UTC m=+0.000000000")  # fake clock at start
    health.queued_update()
    await clock.advance(61)
    assert (await get(f"{base_url}/livez"))[0] == 503
    assert (await get(f"{base_url}/healthz"))[0] == 503
    health.updated()
    health.sync_node(NodeInfo("n1", being_deleted=True))
    status, body, _ = await get(f"{base_url}/healthz")
    assert (status, body["nodeEligible"]) == (503, False)
    status, body, _ = await get(f"{base_url}/livez")
    assert status == 200 and "nodeEligible" not in body
    assert health.healthz_codes == {200: 1, 503: 2}


async def test_other_paths_are_not_found(base_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as r:
        assert r.status == 404


async def test_a_taken_port_raises(health: ProxierHealth) -> None:
    first = HealthServer(health, "127.0.0.1:0")
    await first.start()
    try:
        second = HealthServer(health, f"127.0.0.1:{first.port}")
        with pytest.raises(OSError):
            await second.start()
        assert not second.running
    finally:
        await first.close()
