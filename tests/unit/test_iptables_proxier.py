"""The iptables proxier against the validating in-memory kernel: full and partial syncs,
idempotence (a no-change sync writes nothing), fall-back to full after a failure, stale
chains removed, canary-triggered resync, restart adoption. No root, no kernel."""

from __future__ import annotations

import asyncio
from typing import Any

from kproxy.clock import FakeClock
from kproxy.config import ProxyConfig
from kproxy.iptables.fake import FakeBackend, FakeIptables
from kproxy.iptables.plan import IncrementalPlanner, plan_context
from kproxy.iptables.proxier import IptablesProxier, Sysctls
from kproxy.iptables.restore import join_payloads, render_full
from kproxy.iptables.ruleset import Table
from kproxy.iptables.staticchains import CANARY
from kproxy.model.types import (
    Endpoint,
    EndpointSliceInfo,
    EndpointSlicePort,
    IPFamily,
    NamespacedName,
    Protocol,
    ServiceInfo,
    ServicePort,
    ServicePortName,
    ServiceType,
)
from kproxy.state import ResourceKind, Snapshot, StateTracker

V4 = IPFamily.IPV4
CONFIG = ProxyConfig(hostname="node-1", cluster_cidrs=("10.244.0.0/16",), sync_period=30.0)


def web_service(name: str, cluster_ip: str) -> ServiceInfo:
    port_name = ServicePortName("default", name, "http", Protocol.TCP)
    return ServiceInfo("default", name, (ServicePort(
        port_name, ServiceType.CLUSTER_IP, (cluster_ip,), 80, Protocol.TCP, 8080),))


def web_slice(name: str, *ips: str) -> EndpointSliceInfo:
    return EndpointSliceInfo(
        "default", f"{name}-1", name, IPFamily.IPV4,
        (EndpointSlicePort("http", 8080, Protocol.TCP),),
        tuple(Endpoint(ip, 0, node_name="node-1") for ip in ips),
    )


class RecordedSysctls(Sysctls):
    """Sysctls kept in a dict: a proxier in a unit test must never touch the host's."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def read(self, key: str) -> str | None:
        return self.values.get(key)

    def write(self, key: str, value: str) -> None:
        self.values[key] = value


class World:
    """A tracker, a fake kernel and a proxier, stepping through syncs like the runner."""

    def __init__(self, services: int = 3) -> None:
        self.clock = FakeClock()
        self.kernel = FakeIptables(families=(V4,))
        self.backend = FakeBackend(self.kernel)
        self.sysctls = RecordedSysctls()
        self.proxier = self.new_proxier()
        self.tracker = StateTracker()
        for index in range(services):
            self.tracker.upsert_service(web_service(f"svc-{index}", f"10.96.0.{index + 10}"))
            self.tracker.upsert_endpoint_slice(web_slice(f"svc-{index}", f"10.244.1.{index + 2}"))
        self.tracker.mark_listed(ResourceKind.SERVICES)
        self.tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)

    def new_proxier(self, **options: Any) -> IptablesProxier:
        return IptablesProxier(CONFIG, self.backend, clock=self.clock, families=(V4,),
                               sysctls=self.sysctls, **options)

    async def sync(self) -> tuple[bool, bool, int]:
        """(ok, full, lines written to the kernel by this sync)."""
        seen = len(self.kernel.history)
        snapshot = self.tracker.snapshot()
        result = await self.proxier.sync(snapshot)
        if result.ok:
            self.tracker.sync_succeeded(snapshot)
        written = sum(r.lines for r in self.kernel.history[seen:] if r.committed)
        return result.ok, result.full, written

    def expected_nat(self, snapshot: Snapshot) -> str:
        """What a from-scratch full plan of the same snapshot would put in the nat table."""
        fresh = FakeIptables(families=(V4,))
        planner = IncrementalPlanner(plan_context(CONFIG, snapshot.node, V4))
        fresh.apply_restore(V4, join_payloads(render_full(planner.full(snapshot))))
        FakeBackend(fresh).ensure_jumps(V4, planner.jumps)
        return fresh.save(V4, Table.NAT)


async def test_first_sync_is_full_and_matches_a_fresh_plan() -> None:
    world = World()
    ok, full, written = await world.sync()
    assert ok and full and written > 0
    assert world.kernel.save(V4, Table.NAT) == world.expected_nat(world.tracker.snapshot())
    assert world.kernel.chain_exists(V4, Table.MANGLE, CANARY)
    # Localhost NodePorts are on by default: the proxier asked for route_localnet.
    assert world.sysctls.values == {"net/ipv4/conf/all/route_localnet": "1"}


async def test_no_change_sync_writes_nothing() -> None:
    world = World()
    await world.sync()
    world.clock._now += 1  # within the sync period: not a periodic full sync
    ok, full, written = await world.sync()
    assert ok and not full and written == 0


async def test_endpoint_change_is_partial_and_equals_a_full_plan() -> None:
    world = World(services=50)
    _, _, full_lines = await world.sync()
    world.tracker.upsert_endpoint_slice(web_slice("svc-7", "10.244.1.200", "10.244.2.9"))
    ok, full, written = await world.sync()
    assert ok and not full
    assert 0 < written < full_lines / 5
    assert world.kernel.save(V4, Table.NAT) == world.expected_nat(world.tracker.snapshot())


async def test_deleted_service_chains_are_removed() -> None:
    world = World()
    await world.sync()
    before = world.kernel.kproxy_chains(V4, Table.NAT)
    world.tracker.delete_service(NamespacedName("default", "svc-1"))
    world.tracker.delete_endpoint_slice("default", "svc-1-1")
    ok, _, _ = await world.sync()
    after = world.kernel.kproxy_chains(V4, Table.NAT)
    assert ok and after < before
    assert "10.96.0.11" not in world.kernel.save(V4, Table.NAT)
    assert world.kernel.save(V4, Table.NAT) == world.expected_nat(world.tracker.snapshot())


async def test_failed_restore_makes_the_next_sync_full_and_correct() -> None:
    world = World()
    await world.sync()
    world.tracker.upsert_endpoint_slice(web_slice("svc-0", "10.244.1.77"))
    world.backend.fail_restores = 1
    ok, full, _ = await world.sync()
    assert not ok and not full
    assert world.proxier.record.restore_failures_partial == 1
    ok, full, _ = await world.sync()
    assert ok and full
    assert "10.244.1.77:8080" in world.kernel.save(V4, Table.NAT)
    assert world.kernel.save(V4, Table.NAT) == world.expected_nat(world.tracker.snapshot())


async def test_periodic_sync_is_full() -> None:
    world = World()
    await world.sync()
    world.clock._now += CONFIG.sync_period + 1
    ok, full, written = await world.sync()
    assert ok and full and written > 0


async def test_restart_adopts_existing_rules_atomically() -> None:
    world = World()
    await world.sync()
    # A new proxier (kproxy restarted) over the same kernel, with one service gone meanwhile.
    world.proxier = world.new_proxier()
    world.tracker.delete_service(NamespacedName("default", "svc-2"))
    rejected_before = world.kernel.rejected
    ok, full, _ = await world.sync()
    assert ok and full and world.kernel.rejected == rejected_before
    assert world.kernel.save(V4, Table.NAT) == world.expected_nat(world.tracker.snapshot())


async def test_canary_gone_forces_full_resync() -> None:
    world = World()
    await world.sync()
    requested: list[int] = []
    proxier = world.new_proxier(request_sync=lambda: requested.append(1))
    world.proxier = proxier
    await world.sync()
    # Someone flushes kproxy's mangle canary (as `iptables -t mangle -F; -X` would).
    world.kernel.apply_restore(V4, f"*mangle\n:{CANARY} - [0:0]\n-X {CANARY}\nCOMMIT\n")
    monitor = asyncio.create_task(proxier.monitor_canary(5.0))
    await world.clock.advance(5.0)
    monitor.cancel()
    assert requested == [1]
    ok, full, _ = await world.sync()
    assert ok and full and world.kernel.chain_exists(V4, Table.MANGLE, CANARY)
