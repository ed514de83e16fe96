"""The iptables proxier against the validating in-memory kernel: full and partial syncs,
idempotence (a no-change sync writes nothing), fall-back to full after a failure, stale
chains removed, canary-triggered resync, restart adoption. No root, no kernel."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from kproxy.clock import FakeClock
from kproxy.config import ProxyConfig
from kproxy.iptables.chunks import ChunkPolicy
from kproxy.iptables.fake import FakeBackend, FakeIptables
from kproxy.iptables.plan import IncrementalPlanner, plan_context
from kproxy.iptables.proxier import IptablesProxier, Sysctls
from kproxy.iptables.restore import join_payloads, render_full
from kproxy.iptables.ruleset import BUILTIN_CHAINS, Table
from kproxy.iptables.staticchains import BUILTIN_JUMPS, CANARY
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

V4, V6 = IPFamily.IPV4, IPFamily.IPV6
CONFIG = ProxyConfig(hostname="node-1", cluster_cidrs=("10.244.0.0/16",), sync_period=30.0)


def web_service(name: str, cluster_ip: str) -> ServiceInfo:
    port_name = ServicePortName("default", name, "http", Protocol.TCP)
    return ServiceInfo("default", name, (ServicePort(
        port_name, ServiceType.CLUSTER_IP, (cluster_ip,), 80, Protocol.TCP, 8080),))


def web_slice(name: str, *ips: str, family: IPFamily = IPFamily.IPV4) -> EndpointSliceInfo:
    suffix = "1" if family is IPFamily.IPV4 else "6"
    return EndpointSliceInfo(
        "default", f"{name}-{suffix}", name, family,
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

    def __init__(self, services: int = 3, *, families: tuple[IPFamily, ...] = (V4,),
                 chunking: ChunkPolicy | None = None, complete_targets: bool = False) -> None:
        self.clock = FakeClock()
        self.families = families
        self.kernel = FakeIptables(families=families, complete_targets=complete_targets)
        self.backend = FakeBackend(self.kernel, chunking=chunking)
        self.sysctls = RecordedSysctls()
        self.proxier = self.new_proxier()
        self.tracker = StateTracker()
        for index in range(services):
            self.add_service(index)
        self.tracker.mark_listed(ResourceKind.SERVICES)
        self.tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)

    def add_service(self, index: int) -> None:
        name = f"svc-{index}"
        v4, v6 = f"10.96.{index // 250}.{index % 250 + 10}", f"fd00::{index + 10:x}"
        ips = tuple(ip for family, ip in ((V4, v4), (V6, v6)) if family in self.families)
        port_name = ServicePortName("default", name, "http", Protocol.TCP)
        self.tracker.upsert_service(ServiceInfo("default", name, (ServicePort(
            port_name, ServiceType.CLUSTER_IP, ips, 80, Protocol.TCP, 8080),)))
        endpoint = f"10.244.{index // 250 + 1}.{index % 250 + 2}"
        if V4 in self.families:
            self.tracker.upsert_endpoint_slice(web_slice(name, endpoint))
        if V6 in self.families:
            self.tracker.upsert_endpoint_slice(
                web_slice(name, f"fd00:244::{index + 2:x}", family=V6))

    def new_proxier(self, **options: Any) -> IptablesProxier:
        return IptablesProxier(CONFIG, self.backend, clock=self.clock, families=self.families,
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

    def expected_nat(self, snapshot: Snapshot, family: IPFamily = V4) -> str:
        """What a from-scratch full plan of the same snapshot would put in the nat table
        (the builtin-chain jumps added one by one, as kube-proxy's ``-C``/``-I`` do)."""
        return self.expected(snapshot, family, Table.NAT)

    def expected(self, snapshot: Snapshot, family: IPFamily, table: Table) -> str:
        fresh = FakeIptables(families=(family,))
        planner = IncrementalPlanner(plan_context(CONFIG, snapshot.node, family))
        fresh.apply_restore(family, join_payloads(render_full(planner.full(snapshot))))
        FakeBackend(fresh).ensure_jumps(family, planner.jumps)
        return fresh.save(family, table)


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
    # The check runs in a worker thread: wait for it (not for the fake clock).
    for _ in range(1000):
        if requested:
            break
        await asyncio.sleep(0.005)
    monitor.cancel()
    assert requested == [1]
    ok, full, _ = await world.sync()
    assert ok and full and world.kernel.chain_exists(V4, Table.MANGLE, CANARY)


# --- builtin-chain jumps in the full sync's own restore -------------------------------------


def builtin_rules(world: World, family: IPFamily = V4) -> dict[tuple[Table, str], tuple[str, ...]]:
    return {(table, chain): world.kernel.rules(family, table, chain)
            for table in Table for chain in BUILTIN_CHAINS[table]}


async def test_a_full_sync_is_one_restore_with_the_jumps_in_it() -> None:
    world = World()
    ok, full, _ = await world.sync()
    assert ok and full
    [(family, payloads)] = world.backend.payloads  # one restore, nothing else written
    assert family is V4
    inserted = [line for text in payloads.values() for line in text.splitlines()
                if line.startswith("-I ")]
    assert len(inserted) == len(BUILTIN_JUMPS) == world.proxier.record.last_jumps_added
    # The same rules, in the same order, as -C/-I one jump at a time would leave.
    snapshot = world.tracker.snapshot()
    assert world.kernel.save(V4, Table.FILTER) == world.expected(snapshot, V4, Table.FILTER)
    assert world.kernel.save(V4, Table.NAT) == world.expected_nat(snapshot)


async def test_full_syncs_never_duplicate_jumps_and_restore_a_deleted_one() -> None:
    world = World()
    await world.sync()
    before = builtin_rules(world)
    world.proxier.force_full_sync("test")
    ok, full, _ = await world.sync()
    assert ok and full and world.proxier.record.last_jumps_added == 0
    assert builtin_rules(world) == before
    # Someone deletes one jump (and puts a rule of their own on top of that chain).
    [jump] = [j for j in BUILTIN_JUMPS if j.table is Table.NAT and j.chain == "PREROUTING"]
    world.kernel.apply_restore(V4, f"*nat\n-D PREROUTING {jump.args}\n"
                                   "-I PREROUTING 1 -s 192.0.2.1/32 -j ACCEPT\nCOMMIT\n")
    world.proxier.force_full_sync("test")
    ok, full, _ = await world.sync()
    assert ok and full and world.proxier.record.last_jumps_added == 1
    assert world.kernel.rules(V4, Table.NAT, "PREROUTING") == (
        jump.args, "-s 192.0.2.1/32 -j ACCEPT")


async def test_partial_syncs_do_not_read_the_kernel() -> None:
    world = World()
    await world.sync()
    reads = world.backend.reads
    world.tracker.upsert_endpoint_slice(web_slice("svc-0", "10.244.1.99"))
    ok, full, written = await world.sync()
    assert ok and not full and written > 0 and world.backend.reads == reads


async def test_the_sync_log_line_counts_the_rules_written(
        caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    caplog.set_level(logging.DEBUG, logger="kproxy.iptables.proxier")
    await world.sync()
    [(_, payloads)] = world.backend.payloads
    lines = [line for text in payloads.values() for line in text.splitlines()
             if line.startswith(("-A ", "-I "))]
    assert world.proxier.record.last_rules_written == len(lines)
    [message] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sync (")]
    assert message.endswith(f", {len(lines)} rules written")
    world.tracker.upsert_endpoint_slice(web_slice("svc-1", "10.244.1.98", "10.244.1.97"))
    await world.sync()
    _, delta = world.backend.payloads[-1]
    written = sum(1 for text in delta.values() for line in text.splitlines()
                  if line.startswith("-A "))
    assert 0 < written == world.proxier.record.last_rules_written
    assert caplog.records[-1].getMessage().endswith(f", {written} rules written")


# --- chunked full syncs ---------------------------------------------------------------------

SMALL_CHUNKS = ChunkPolicy(threshold_chains=40, chunk_chains=25)


async def test_a_chunked_full_sync_leaves_what_one_transaction_leaves() -> None:
    world = World(services=60, chunking=SMALL_CHUNKS, complete_targets=True)
    ok, full, _ = await world.sync()
    assert ok and full
    nat_restores = [p for _, p in world.backend.payloads if Table.NAT in p]
    assert len(nat_restores) > 4  # declarations, then several groups of chains
    snapshot = world.tracker.snapshot()
    for table in (Table.NAT, Table.FILTER):
        assert world.kernel.save(V4, table) == world.expected(snapshot, V4, table)
    # The roots that make services reachable, and the jumps into them, come last.
    last = nat_restores[-1][Table.NAT]
    assert ":KPROXY-SERVICES - [0:0]" in last and "-I PREROUTING 1 " in last


async def test_a_chunked_resync_over_existing_rules_replaces_them_in_order() -> None:
    world = World(services=60, chunking=SMALL_CHUNKS, complete_targets=True)
    await world.sync()
    for index in range(10):  # ten services gone, five new, one changed
        world.tracker.delete_service(NamespacedName("default", f"svc-{index}"))
        world.tracker.delete_endpoint_slice("default", f"svc-{index}-1")
    for index in range(60, 65):
        world.add_service(index)
    world.tracker.upsert_endpoint_slice(web_slice("svc-30", "10.244.9.9"))
    world.proxier.force_full_sync("test")
    rejected = world.kernel.rejected
    ok, full, _ = await world.sync()
    assert ok and full and world.kernel.rejected == rejected
    snapshot = world.tracker.snapshot()
    for table in (Table.NAT, Table.FILTER):
        assert world.kernel.save(V4, table) == world.expected(snapshot, V4, table)


async def test_small_rulesets_stay_one_transaction_even_with_chunking() -> None:
    world = World(services=3, chunking=SMALL_CHUNKS, complete_targets=True)
    ok, full, _ = await world.sync()
    assert ok and full and len(world.backend.payloads) == 1


# --- families are independent ---------------------------------------------------------------


async def test_an_ipv6_failure_does_not_hold_back_ipv4() -> None:
    world = World(services=4, families=(V4, V6))
    world.backend.fail_families = {V6}
    ok, full, _ = await world.sync()
    result = await world.proxier.sync(world.tracker.snapshot())
    assert not ok and not result.ok
    assert result.error.startswith("IPv6: ") and "IPv4" not in result.error
    assert world.kernel.kproxy_chains(V4, Table.NAT) and not world.kernel.kproxy_chains(
        V6, Table.NAT)
    assert set(world.proxier.record.failing_families) == {V6}
    # IPv4 keeps syncing partially while IPv6 fails.
    world.tracker.upsert_endpoint_slice(web_slice("svc-2", "10.244.1.55"))
    restores = len(world.backend.payloads)
    ok, _, _ = await world.sync()
    assert not ok
    assert "10.244.1.55:8080" in world.kernel.save(V4, Table.NAT)
    v4_writes = [p for family, p in world.backend.payloads[restores:] if family is V4]
    assert len(v4_writes) == 1 and Table.MANGLE not in v4_writes[0]  # a delta, not full
    # IPv6 failed repeatedly: it waits for its own backoff instead of retrying every sync.
    tried = len([f for f, _ in world.backend.payloads if f is V6])
    await world.sync()
    assert len([f for f, _ in world.backend.payloads if f is V6]) == tried
    world.backend.fail_families = set()
    world.clock._now += 60
    ok, full, _ = await world.sync()
    assert ok and full and not world.proxier.record.failing_families
    snapshot = world.tracker.snapshot()
    assert world.kernel.save(V6, Table.NAT) == world.expected_nat(snapshot, V6)
    assert world.kernel.save(V4, Table.NAT) == world.expected_nat(snapshot, V4)


async def test_an_ipv4_failure_does_not_hold_back_ipv6() -> None:
    world = World(services=2, families=(V4, V6))
    await world.sync()
    world.backend.fail_families = {V4}
    world.tracker.upsert_endpoint_slice(web_slice("svc-1", "10.244.1.99"))
    world.tracker.upsert_endpoint_slice(web_slice("svc-1", "fd00:244::99", family=V6))
    result = await world.proxier.sync(world.tracker.snapshot())
    assert not result.ok and result.error.startswith("IPv4: ")
    assert "[fd00:244::99]:8080" in world.kernel.save(V6, Table.NAT)
    assert world.proxier.record.restore_failures_partial == 1


class BlockingConntrack:
    """A conntrack cleaner whose reconciles wait for the test, recording their snapshots."""

    def __init__(self) -> None:
        self.reconciled: list[int] = []
        self.release = asyncio.Event()

    async def reconcile(self, snapshot: Snapshot) -> None:
        await self.release.wait()
        self.reconciled.append(snapshot.generation)


async def test_a_sync_during_a_conntrack_reconcile_is_reconciled_after_it() -> None:
    world = World()
    conntrack = BlockingConntrack()
    world.proxier = world.new_proxier(conntrack=conntrack)
    await world.sync()
    await asyncio.sleep(0)  # the first reconcile starts and waits
    world.tracker.upsert_endpoint_slice(web_slice("svc-0", "10.244.1.50"))
    await world.sync()
    world.tracker.upsert_endpoint_slice(web_slice("svc-0", "10.244.1.51"))
    await world.sync()
    newest = world.tracker.snapshot().generation
    conntrack.release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    # The first snapshot, then only the newest of those that came while it ran.
    assert len(conntrack.reconciled) == 2
    assert conntrack.reconciled[1] == newest
    await world.proxier.close()
