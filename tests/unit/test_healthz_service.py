"""The proxy's health as ``kproxy run`` wires it: changes queue, successful syncs update,
failing syncs turn it unhealthy after 2 x the sync period; the Node comes from the tracker."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from kproxy import app
from kproxy.app import ProxyService, _serve
from kproxy.clock import FakeClock
from kproxy.config import ProxyConfig
from kproxy.healthz import TO_BE_DELETED_TAINT, HealthServer
from kproxy.model.types import (
    NodeInfo,
    Protocol,
    ServiceInfo,
    ServicePort,
    ServicePortName,
    ServiceType,
)
from kproxy.proxier import SyncResult
from kproxy.state import ResourceKind, Snapshot


class FlakyProxier:
    def __init__(self) -> None:
        self.failing = False
        self.syncs = 0

    async def sync(self, snapshot: Snapshot) -> SyncResult:
        self.syncs += 1
        if self.failing:
            return SyncResult(False, False, 0, 0, error="injected")
        return SyncResult(True, True, len(snapshot.services), 0)

    async def close(self) -> None:
        return None


def web(port: int) -> ServiceInfo:
    name = ServicePortName("default", "web", "http", Protocol.TCP)
    return ServiceInfo("default", "web", (ServicePort(
        name, ServiceType.CLUSTER_IP, ("10.96.0.10",), port, Protocol.TCP, 8080),))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def running(clock: FakeClock) -> AsyncIterator[tuple[ProxyService, FlakyProxier]]:
    proxier = FlakyProxier()
    config = ProxyConfig(hostname="node-1", min_sync_period=1.0, sync_period=30.0)
    service = ProxyService(config, proxier, clock)
    task = asyncio.create_task(service.runner.run_forever())
    yield service, proxier
    service.runner.stop()
    await clock.advance(120)
    await asyncio.wait_for(task, 1)


async def test_failing_syncs_make_it_unhealthy_after_twice_the_sync_period(
    running: tuple[ProxyService, FlakyProxier], clock: FakeClock
) -> None:
    service, proxier = running
    service.tracker.mark_listed(ResourceKind.SERVICES)
    service.tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)
    await clock.settle()
    assert proxier.syncs == 1 and service.health.livez().status == 200
    proxier.failing = True
    service.tracker.upsert_service(web(80))
    await clock.advance(59)
    assert proxier.syncs > 2  # retried, and still failing
    assert service.health.livez().status == 200
    await clock.advance(1)  # the change has waited 60 s = 2 x --iptables-sync-period
    assert service.health.livez().status == 503
    assert service.health.healthz().status == 503
    proxier.failing = False
    await clock.advance(30)  # the retry backoff reaches the sync period at most
    assert service.health.livez().status == 200
    assert service.health.last_updated_wall == pytest.approx(clock.wall(), abs=30)


async def test_the_node_from_the_tracker_decides_eligibility(
    running: tuple[ProxyService, FlakyProxier], clock: FakeClock
) -> None:
    service, _proxier = running
    service.tracker.set_node(NodeInfo("node-1", taints=((TO_BE_DELETED_TAINT, "NoSchedule"),)))
    assert service.health.healthz().status == 503
    service.tracker.set_node(NodeInfo("node-1"))
    assert service.health.healthz().status == 200
    service.tracker.set_node(NodeInfo("node-1", being_deleted=True))
    assert service.health.healthz().status == 503
    assert service.health.livez().status == 200


async def test_a_taken_port_is_retried_until_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "SERVER_RETRY_SECONDS", 0.02)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    config = ProxyConfig(hostname="node-1")
    service = ProxyService(config, FlakyProxier(), FakeClock())
    server = HealthServer(service.health, f"127.0.0.1:{port}")
    serving = asyncio.create_task(_serve(server))
    try:
        await asyncio.sleep(0.1)
        assert not server.running and not serving.done()
        holder.close()
        await asyncio.wait_for(serving, 10)
        assert server.running and server.port == port
    finally:
        holder.close()
        serving.cancel()
        await server.close()
