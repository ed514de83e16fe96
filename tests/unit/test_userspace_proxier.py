"""The userspace proxier against the validating in-memory kernel and recording listeners:
listeners follow service ports, rules point at them, stale listeners close only after the
rules stopped pointing at them, failures keep what works, close() drains then removes the
portals, and each mode's start removes only the other mode's rules. No root, no sockets."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from kproxy.clock import FakeClock
from kproxy.config import ProxyConfig
from kproxy.iptables.backend import RestoreError
from kproxy.iptables.cleanup import cleanup, iptables_mode_chain, userspace_mode_chain
from kproxy.iptables.fake import FakeBackend, FakeIptables
from kproxy.iptables.plan import IncrementalPlanner, plan_context
from kproxy.iptables.restore import join_payloads, render_full
from kproxy.iptables.ruleset import BuiltinJump, Table
from kproxy.iptables.serviceview import family_view
from kproxy.iptables.staticchains import SERVICES
from kproxy.model.types import (
    Endpoint,
    EndpointSliceInfo,
    EndpointSlicePort,
    IPFamily,
    NamespacedName,
    NodeInfo,
    Protocol,
    ServiceInfo,
    ServicePort,
    ServicePortName,
    ServiceType,
)
from kproxy.state import ResourceKind, StateTracker
from kproxy.userspace.chains import (
    PORTALS_CONTAINER,
    PORTALS_HOST,
    USERSPACE_CHAINS,
    USERSPACE_JUMPS,
)
from kproxy.userspace.limits import RelayLimits
from kproxy.userspace.portal import plan_portals
from kproxy.userspace.proxier import UserspaceProxier
from kproxy.userspace.selection import ListenerKey, Scope, select_port
from kproxy.userspace.targets import Target
from kproxy.userspace.udpflows import forget_commands

V4 = IPFamily.IPV4
CONFIG = ProxyConfig(hostname="node-1", sync_period=30.0)
LIMITS = RelayLimits(drain_grace=7.0)


class RecordingListener:
    def __init__(self, key: ListenerKey, port: int, world: World) -> None:
        self.key = key
        self.port = port
        self.world = world
        self.updates: list[tuple[tuple[Target, ...], float | None]] = []
        self.closed_with: float | None = None

    def update(self, targets: tuple[Target, ...], affinity_timeout: float | None) -> None:
        self.updates.append((targets, affinity_timeout))

    async def close(self, grace: float = 0.0) -> None:
        # What the kernel redirects at the moment the listener goes away.
        self.rules_at_close = self.world.nat_rules()
        self.closed_with = grace


class World:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.kernel = FakeIptables(families=(V4,))
        self.backend = FakeBackend(self.kernel)
        self.opened: list[RecordingListener] = []
        self.ports = itertools.count(41000)
        self.other_mode_removals = 0
        self.proxier = UserspaceProxier(CONFIG, self.backend, clock=self.clock, limits=LIMITS,
                                        families=(V4,), listener_factory=self.open,
                                        remove_other_mode=self.remove_other_mode)
        self.tracker = StateTracker()
        self.tracker.mark_listed(ResourceKind.SERVICES)
        self.tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)

    async def open(self, key: ListenerKey) -> RecordingListener:
        listener = RecordingListener(key, next(self.ports), self)
        self.opened.append(listener)
        return listener

    def remove_other_mode(self) -> object:
        self.other_mode_removals += 1
        return cleanup(self.backend, (V4,), iptables_mode_chain)

    def proxier_jumps(self) -> tuple[BuiltinJump, ...]:
        return USERSPACE_JUMPS

    def nat_rules(self) -> str:
        return self.kernel.save(V4, Table.NAT)

    async def sync(self) -> bool:
        snapshot = self.tracker.snapshot()
        result = await self.proxier.sync(snapshot)
        if result.ok:
            self.tracker.sync_succeeded(snapshot)
        return result.ok

    def listener(self, name: str, protocol: Protocol = Protocol.TCP) -> RecordingListener:
        found = [listener for listener in self.opened if listener.key.name.name == name
                 and listener.key.name.protocol is protocol and listener.closed_with is None]
        assert len(found) == 1, found
        return found[0]


def service(name: str, cluster_ip: str, *ports: tuple[str, int, Protocol]) -> ServiceInfo:
    return ServiceInfo("default", name, tuple(
        ServicePort(ServicePortName("default", name, port_name, protocol),
                    ServiceType.CLUSTER_IP, (cluster_ip,), number, protocol, 8080)
        for port_name, number, protocol in ports))


def endpoints(name: str, *ips: str, ports: tuple[tuple[str, Protocol], ...] = (
        ("http", Protocol.TCP),)) -> EndpointSliceInfo:
    return EndpointSliceInfo(
        "default", f"{name}-1", name, V4,
        tuple(EndpointSlicePort(port_name, 8080, protocol) for port_name, protocol in ports),
        tuple(Endpoint(ip, 0, node_name="node-1") for ip in ips))


HTTP = ("http", 80, Protocol.TCP)


async def test_a_listener_per_port_and_protocol_with_rules_to_it() -> None:
    world = World()
    world.tracker.upsert_service(service("web", "10.96.0.10", HTTP, ("dns", 80, Protocol.UDP)))
    world.tracker.upsert_endpoint_slice(endpoints(
        "web", "10.244.1.2", "10.244.2.2", ports=(("http", Protocol.TCP), ("dns", Protocol.UDP))))
    assert await world.sync()
    tcp, udp = world.listener("web"), world.listener("web", Protocol.UDP)
    assert tcp.key.scope is Scope.CLUSTER and tcp.port != udp.port
    targets = (Target("10.244.1.2", 8080), Target("10.244.2.2", 8080))
    assert tcp.updates == [(targets, None)] and udp.updates == [(targets, None)]
    for chain in (PORTALS_CONTAINER, PORTALS_HOST):
        chain_rules = world.kernel.rules(V4, Table.NAT, chain)
        assert any("-p tcp" in r and f"--to-ports {tcp.port}" in r for r in chain_rules)
        assert any("-p udp" in r and f"--to-ports {udp.port}" in r for r in chain_rules)
    assert set(world.proxier.listener_ports.values()) == {tcp.port, udp.port}


async def test_no_change_writes_nothing_and_endpoint_changes_update_the_listener() -> None:
    world = World()
    world.tracker.upsert_service(service("web", "10.96.0.10", HTTP))
    world.tracker.upsert_endpoint_slice(endpoints("web", "10.244.1.2"))
    assert await world.sync()
    written = len(world.kernel.history)
    world.clock._now += 1
    assert await world.sync()
    assert len(world.kernel.history) == written
    listener = world.listener("web")
    world.tracker.upsert_endpoint_slice(endpoints("web", "10.244.1.3"))
    assert await world.sync()
    assert listener.updates[-1] == ((Target("10.244.1.3", 8080),), None)
    assert world.listener("web") is listener  # the same listener, the same port
    assert len(world.kernel.history) == written  # the rules did not change


async def test_removed_service_closes_its_listener_after_its_rules_are_gone() -> None:
    world = World()
    world.tracker.upsert_service(service("web", "10.96.0.10", HTTP))
    world.tracker.upsert_endpoint_slice(endpoints("web", "10.244.1.2"))
    assert await world.sync()
    listener = world.listener("web")
    assert f"--to-ports {listener.port}" in world.nat_rules()
    world.tracker.delete_service(NamespacedName("default", "web"))
    assert await world.sync()
    assert listener.closed_with == 0.0
    assert f"--to-ports {listener.port}" not in listener.rules_at_close
    assert world.proxier.listener_ports == {}


async def test_no_endpoints_closes_the_listener_and_rejects() -> None:
    world = World()
    world.tracker.upsert_service(service("web", "10.96.0.10", HTTP))
    world.tracker.upsert_endpoint_slice(endpoints("web", "10.244.1.2"))
    assert await world.sync()
    listener = world.listener("web")
    world.tracker.upsert_endpoint_slice(endpoints("web"))
    assert await world.sync()
    assert listener.closed_with == 0.0
    assert any("REJECT" in rule for rule in world.kernel.rules(V4, Table.FILTER,
                                                               "KPROXY-PORTALS-FILTER"))


async def test_failed_restore_keeps_old_listeners_and_retries() -> None:
    world = World()
    world.tracker.upsert_service(service("web", "10.96.0.10", HTTP))
    world.tracker.upsert_endpoint_slice(endpoints("web", "10.244.1.2"))
    assert await world.sync()
    old = world.listener("web")
    world.tracker.delete_service(NamespacedName("default", "web"))
    world.tracker.upsert_service(service("api", "10.96.0.20", HTTP))
    world.tracker.upsert_endpoint_slice(endpoints("api", "10.244.1.9"))
    restore_all = world.backend.restore_all

    def failing(family: IPFamily, payloads: object) -> None:
        raise RestoreError("iptables-restore failed: simulated")

    world.backend.restore_all = failing  # type: ignore[method-assign]
    assert not await world.sync()
    # The kernel still redirects to the old listener, so it stays open.
    assert old.closed_with is None and f"--to-ports {old.port}" in world.nat_rules()
    world.backend.restore_all = restore_all  # type: ignore[method-assign]
    assert await world.sync()
    assert old.closed_with == 0.0
    assert f"--to-ports {world.listener('api').port}" in world.nat_rules()


async def test_sctp_is_skipped_and_the_rest_forwarded() -> None:
    world = World()
    world.tracker.upsert_service(service("mixed", "10.96.0.30", HTTP, ("s", 80, Protocol.SCTP)))
    world.tracker.upsert_endpoint_slice(endpoints(
        "mixed", "10.244.1.2", ports=(("http", Protocol.TCP), ("s", Protocol.SCTP))))
    assert await world.sync()
    assert [listener.key.name.protocol for listener in world.opened] == [Protocol.TCP]
    assert "sctp" not in world.nat_rules()
    assert [(str(name), str(reason)) for name, reason in world.proxier.skipped.current.items()
            ] == [("default/mixed:s/SCTP", "unsupported: SCTP is not supported in userspace mode")]


async def test_an_unrenderable_port_is_skipped_and_the_rest_forwarded() -> None:
    world = World()
    world.tracker.upsert_service(service("web", "10.96.0.10", HTTP))
    world.tracker.upsert_endpoint_slice(endpoints("web", "10.244.1.2"))
    assert await world.sync()
    rules = world.nat_rules()
    # Built directly: the model would reject the name, the renderer must not rely on it.
    bad = service("bad\x00", "10.96.0.11", HTTP)
    world.tracker.upsert_service(bad)
    assert await world.sync()
    assert world.nat_rules() == rules
    assert [str(reason) for reason in world.proxier.skipped.current.values()] == [
        "unrenderable: name contains control character '\\x00'"]


async def test_close_drains_then_removes_the_portals() -> None:
    world = World()
    world.tracker.upsert_service(service("web", "10.96.0.10", HTTP))
    world.tracker.upsert_endpoint_slice(endpoints("web", "10.244.1.2"))
    assert await world.sync()
    listener = world.listener("web")
    await world.proxier.close()
    assert listener.closed_with == LIMITS.drain_grace
    # The rules still pointed at it while it drained; afterwards nothing of ours is left.
    assert f"--to-ports {listener.port}" in listener.rules_at_close
    for table in (Table.NAT, Table.FILTER):
        assert not world.kernel.kproxy_chains(V4, table)
    assert "kproxy" not in world.kernel.save(V4)


async def test_first_sync_removes_iptables_mode_and_keeps_its_own() -> None:
    world = World()
    # iptables mode ran before: its chains and jumps are in the kernel.
    planner = IncrementalPlanner(plan_context(CONFIG, None, V4))
    ruleset = planner.full(StateTracker().snapshot())
    world.kernel.apply_restore(V4, join_payloads(render_full(ruleset)))
    world.backend.ensure_jumps(V4, planner.jumps)
    assert world.kernel.chain_exists(V4, Table.NAT, SERVICES)
    world.tracker.upsert_service(service("web", "10.96.0.10", HTTP))
    world.tracker.upsert_endpoint_slice(endpoints("web", "10.244.1.2"))
    assert await world.sync()
    assert world.other_mode_removals == 1
    assert set().union(*(world.kernel.kproxy_chains(V4, t) for t in Table)) == USERSPACE_CHAINS
    assert await world.sync()
    assert world.other_mode_removals == 1


async def test_removing_userspace_mode_leaves_iptables_mode() -> None:
    world = World()
    world.tracker.upsert_service(service("web", "10.96.0.10", HTTP))
    world.tracker.upsert_endpoint_slice(endpoints("web", "10.244.1.2"))
    assert await world.sync()
    planner = IncrementalPlanner(plan_context(CONFIG, None, V4))
    world.kernel.apply_restore(V4, join_payloads(render_full(planner.full(
        world.tracker.snapshot()))))
    world.backend.ensure_jumps(V4, planner.jumps)
    report = cleanup(world.backend, (V4,), userspace_mode_chain)
    assert report.ok and {name for _, _, name in report.deleted_chains} == USERSPACE_CHAINS
    left = set().union(*(world.kernel.kproxy_chains(V4, t) for t in Table))
    assert SERVICES in left and not left & USERSPACE_CHAINS
    assert "userspace" not in world.kernel.save(V4)


async def test_closed_udp_listeners_forget_their_conntrack_flows() -> None:
    world = World()
    forgotten: list[tuple[IPFamily, int, tuple[int, ...]]] = []

    async def forget(family: IPFamily, port: int, service_ports: Iterable[int]) -> None:
        forgotten.append((family, port, tuple(service_ports)))

    world.proxier._forget_udp_flows = forget
    world.tracker.upsert_service(service("dns", "10.96.0.53", ("dns", 53, Protocol.UDP), HTTP))
    world.tracker.upsert_endpoint_slice(endpoints(
        "dns", "10.244.1.2", ports=(("dns", Protocol.UDP), ("http", Protocol.TCP))))
    assert await world.sync()
    udp = world.listener("dns", Protocol.UDP)
    world.tracker.delete_service(NamespacedName("default", "dns"))
    assert await world.sync()
    assert forgotten == [(V4, udp.port, (53,))]  # the TCP listener has no flows to forget


def test_forget_commands_match_the_listener_and_service_ports() -> None:
    assert forget_commands(IPFamily.IPV6, 41000, (53, 30053, 53)) == [
        ["conntrack", "-D", "-f", "ipv6", "-p", "udp", "--orig-port-dst", "53",
         "--reply-port-src", "41000"],
        ["conntrack", "-D", "-f", "ipv6", "-p", "udp", "--orig-port-dst", "30053",
         "--reply-port-src", "41000"],
    ]


async def test_periodic_full_sync_repairs_flushed_portals_and_jumps() -> None:
    world = World()
    world.tracker.upsert_service(service("web", "10.96.0.10", HTTP))
    world.tracker.upsert_endpoint_slice(endpoints("web", "10.244.1.2"))
    assert await world.sync()
    written = world.kernel.rules(V4, Table.NAT, PORTALS_CONTAINER)
    # Someone flushes the chain and deletes the jump from PREROUTING.
    world.kernel.apply_restore(V4, f"*nat\n:{PORTALS_CONTAINER} - [0:0]\nCOMMIT\n")
    jumps = [jump for jump in world.proxier_jumps() if jump.chain == "PREROUTING"]
    world.backend.remove_jumps(V4, jumps)
    world.clock._now += 1
    assert await world.sync()  # a partial sync writes only what changed: nothing
    assert world.kernel.rules(V4, Table.NAT, PORTALS_CONTAINER) == ()
    world.clock._now += CONFIG.sync_period
    assert await world.sync()
    assert world.kernel.rules(V4, Table.NAT, PORTALS_CONTAINER) == written
    assert any(PORTALS_CONTAINER in rule for rule in
               world.kernel.rules(V4, Table.NAT, "PREROUTING"))


def fresh_plan(world: World) -> str:
    """The nat and filter rules a plan from scratch of the current snapshot gives, with the
    proxier's listener ports."""
    snapshot = world.tracker.snapshot()
    selections = []
    for name in sorted(snapshot.services):
        view = family_view(snapshot.services[name], V4)
        assert view is not None
        selections.append(select_port(view, snapshot.endpoints_of(name), node_name="node-1",
                                      zone=""))
    ruleset = plan_portals(selections, world.proxier.listener_ports,
                           plan_context(CONFIG, snapshot.node, V4))
    return join_payloads(render_full(ruleset))


async def test_reused_plans_equal_a_plan_from_scratch_after_changes() -> None:
    world = World()
    for index in range(12):
        world.tracker.upsert_service(service(f"s{index}", f"10.96.0.{index + 10}", HTTP))
        world.tracker.upsert_endpoint_slice(endpoints(f"s{index}", f"10.244.1.{index + 2}"))
    assert await world.sync()
    assert world.proxier._written[V4] == fresh_plan(world)
    world.tracker.upsert_endpoint_slice(endpoints("s3", "10.244.2.3", "10.244.2.4"))
    world.tracker.upsert_service(service("s5", "10.96.0.15", ("http", 8080, Protocol.TCP)))
    world.tracker.delete_service(NamespacedName("default", "s7"))
    world.tracker.upsert_endpoint_slice(endpoints("s9"))
    world.tracker.upsert_service(service("new", "10.96.1.1", HTTP))
    world.tracker.upsert_endpoint_slice(endpoints("new", "10.244.3.3"))
    world.clock._now += 1
    assert await world.sync()
    assert world.proxier._written[V4] == fresh_plan(world)
    assert world.kernel.rules(V4, Table.NAT, PORTALS_CONTAINER) == tuple(
        line.removeprefix(f"-A {PORTALS_CONTAINER} ") for line in fresh_plan(world).splitlines()
        if line.startswith(f"-A {PORTALS_CONTAINER} "))


async def test_a_node_zone_change_reselects_by_topology_hints() -> None:
    world = World()
    world.tracker.upsert_service(service("web", "10.96.0.10", HTTP))
    world.tracker.upsert_endpoint_slice(EndpointSliceInfo(
        "default", "web-1", "web", V4, (EndpointSlicePort("http", 8080, Protocol.TCP),),
        (Endpoint("10.244.1.2", 0, node_name="node-1", zone_hints=frozenset({"zone-a"})),
         Endpoint("10.244.2.2", 0, node_name="node-2", zone_hints=frozenset({"zone-b"})))))

    def in_zone(zone: str) -> NodeInfo:
        return NodeInfo("node-1", labels=(("topology.kubernetes.io/zone", zone),))

    world.tracker.set_node(in_zone("zone-a"))
    assert await world.sync()
    listener = world.listener("web")
    assert listener.updates[-1][0] == (Target("10.244.1.2", 8080),)
    world.tracker.set_node(in_zone("zone-b"))
    world.clock._now += 1
    assert await world.sync()
    assert listener.updates[-1][0] == (Target("10.244.2.2", 8080),)
