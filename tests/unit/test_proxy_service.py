"""The proxy service wiring: tracker -> runner -> proxier, on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kproxy.app import ProxyService
from kproxy.clock import FakeClock
from kproxy.config import ProxyConfig
from kproxy.model.types import (
    Protocol,
    ServiceInfo,
    ServicePort,
    ServicePortName,
    ServiceType,
)
from kproxy.proxier import SyncResult
from kproxy.state import ResourceKind, Snapshot


class RecordingProxier:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.syncs: list[tuple[float, frozenset[ServicePortName], int]] = []
        self.fail_next = 0

    async def sync(self, snapshot: Snapshot) -> SyncResult:
        self.syncs.append((self.clock.monotonic() - 1000.0, snapshot.changed,
                           len(snapshot.services)))
        if self.fail_next:
            self.fail_next -= 1
            return SyncResult(False, True, 0, 0, error="injected")
        return SyncResult(True, True, len(snapshot.services), 0)

    async def close(self) -> None:
        return None


def web(name: str, port: int = 80) -> ServiceInfo:
    port_name = ServicePortName("default", name, "http", Protocol.TCP)
    return ServiceInfo("default", name, (ServicePort(
        port_name, ServiceType.CLUSTER_IP, ("10.96.0.10",), port, Protocol.TCP, 8080),))


def name_of(service: str) -> ServicePortName:
    return ServicePortName("default", service, "http", Protocol.TCP)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


@pytest.fixture
async def service(clock: FakeClock) -> AsyncIterator[tuple[ProxyService, RecordingProxier]]:
    proxier = RecordingProxier(clock)
    config = ProxyConfig(hostname="node-1", min_sync_period=1.0, sync_period=30.0)
    proxy_service = ProxyService(config, proxier, clock)
    task = asyncio.create_task(proxy_service.runner.run_forever())
    yield proxy_service, proxier
    proxy_service.runner.stop()
    await clock.advance(60)
    await asyncio.wait_for(task, 1)


async def test_nothing_synced_until_services_and_slices_are_listed(
    service: tuple[ProxyService, RecordingProxier], clock: FakeClock
) -> None:
    proxy_service, proxier = service
    proxy_service.tracker.upsert_service(web("a"))
    proxy_service.tracker.mark_listed(ResourceKind.SERVICES)
    await clock.advance(100)
    assert proxier.syncs == []
    proxy_service.tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)
    await clock.settle()
    # The first sync runs at once, with everything accumulated so far as changed.
    assert proxier.syncs == [(100.0, frozenset({name_of("a")}), 1)]


async def test_failed_sync_keeps_its_changes_for_the_retry(
    service: tuple[ProxyService, RecordingProxier], clock: FakeClock
) -> None:
    proxy_service, proxier = service
    proxy_service.tracker.mark_listed(ResourceKind.SERVICES)
    proxy_service.tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)
    await clock.settle()
    proxier.fail_next = 1
    proxy_service.tracker.upsert_service(web("a"))
    await clock.advance(1.0)  # sync at 1.0 fails
    proxy_service.tracker.upsert_service(web("b"))
    await clock.advance(2.0)  # the retry (after 1 s) carries a's and b's changes
    assert proxier.syncs[1] == (1.0, frozenset({name_of("a")}), 1)
    assert proxier.syncs[2] == (2.0, frozenset({name_of("a"), name_of("b")}), 2)
    await clock.advance(1.0)
    assert proxy_service.tracker.pending_changes == 0


async def test_burst_of_changes_becomes_one_sync(
    service: tuple[ProxyService, RecordingProxier], clock: FakeClock
) -> None:
    proxy_service, proxier = service
    proxy_service.tracker.mark_listed(ResourceKind.SERVICES)
    proxy_service.tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)
    await clock.settle()
    for index in range(20):
        proxy_service.tracker.upsert_service(web(f"s{index}"))
    await clock.advance(1.5)
    assert len(proxier.syncs) == 2
    assert len(proxier.syncs[1][1]) == 20
